"""``python -m bench [--only NAME] [--quick]``: run the benchmarks, print one table, write JSON.

Benchmark modules are listed explicitly in :data:`MODULES` (add yours there); a listed module
that does not exist yet is left out silently, so the list can run ahead of the code. Each
module exposes ``run(quick: bool) -> list[Row]`` (see :mod:`bench.table`). A module that
crashes is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench.table import Row, format_table, machine_info, write_results

MODULES = (
    "bench.crypto",
    "bench.wire",
    "bench.store",
    "bench.transport",
    "bench.session",
    "bench.feeds",
    "bench.discovery",
    "bench.rendezvous",
    "bench.messaging",
)
RESULTS = Path(__file__).resolve().parent / "results.json"


def _short(module: str) -> str:
    return module.removeprefix("bench.")


def available_modules() -> list[str]:
    """The listed modules that exist in this checkout."""
    return [name for name in MODULES if importlib.util.find_spec(name) is not None]


def _run_module(name: str, quick: bool) -> list[Row]:
    run = importlib.import_module(name).run
    rows: list[Row] = run(quick) if "quick" in inspect.signature(run).parameters else run()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", metavar="NAME", help="run one module, e.g. crypto")
    parser.add_argument("--quick", action="store_true", help="shorter timings (noisier)")
    args = parser.parse_args(argv)
    selected = available_modules()
    if args.only is not None:
        selected = [name for name in selected if args.only in {name, _short(name)}]
        if not selected:
            known = ", ".join(_short(name) for name in available_modules())
            parser.error(f"no benchmark module {args.only!r} (available: {known})")
    rows: list[Row] = []
    failed = False
    for name in selected:
        print(f"running {_short(name)} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(_run_module(name, args.quick))
        except Exception:  # a broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed = True
    print(format_table(rows))
    write_results(RESULTS, rows, machine_info())
    print(f"\nwrote {RESULTS}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
