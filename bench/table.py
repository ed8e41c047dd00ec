"""Rows, timing, the printed table and the JSON file shared by every benchmark module.

A benchmark module ``bench/<topic>.py`` exposes ``run(quick: bool) -> list[Row]``. Each row is
one figure beside its *ceiling*: the same operation done by the raw library (or the raw
machine) measured in the same run, so the table shows what our layers cost, not how fast
this particular machine is. ``target`` is the figure we promise (same unit as ``value``);
``higher_is_better`` (default True) says which side of it is a pass.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

__all__ = [
    "Row",
    "format_number",
    "format_table",
    "machine_info",
    "ops_per_second",
    "paired_rates",
    "ratio",
    "verdict",
    "write_results",
]

_MIN_BATCH_SECONDS = 0.005
_COLUMNS = ("name", "value", "unit", "ceiling", "ceiling name", "ratio", "target", "ok?")
_NUMERIC = {"value", "ceiling", "ratio", "target"}


class Row(TypedDict):
    """One measured figure. ``ceiling``/``ceiling_name``/``target`` may be None (no such)."""

    name: str
    value: float
    unit: str
    ceiling: float | None
    ceiling_name: str | None
    target: float | None
    higher_is_better: NotRequired[bool]


def ops_per_second(operation: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``operation``, timed for about ``seconds`` of wall time.

    Calls run in batches (doubling until a batch lasts 5 ms) so the loop overhead stays
    small next to fast operations, and slow ones are still timed at least once.
    """
    batch, calls, elapsed = 1, 0, 0.0
    while elapsed < seconds:
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        spent = time.perf_counter() - start
        calls += batch
        elapsed += spent
        if spent < _MIN_BATCH_SECONDS:
            batch *= 2
    return calls / elapsed


def paired_rates(
    ours: Callable[[], object], raw: Callable[[], object], seconds: float, rounds: int = 5
) -> tuple[float, float]:
    """Best-of-``rounds`` rates of ``ours`` and ``raw``, measured alternately.

    Alternating rounds and keeping each side's best make the ratio robust against other
    processes stealing the CPU for part of the run (the machine is shared during CI).
    """
    best_ours = best_raw = 0.0
    for _ in range(rounds):
        best_ours = max(best_ours, ops_per_second(ours, seconds / rounds))
        best_raw = max(best_raw, ops_per_second(raw, seconds / rounds))
    return best_ours, best_raw


def ratio(row: Row) -> float | None:
    """``value / ceiling``: 1.0 means our layer costs nothing over the raw ceiling."""
    ceiling = row.get("ceiling")
    return row["value"] / ceiling if ceiling else None


def verdict(row: Row) -> str:
    """``"ok"`` when the value meets its target, ``"MISS"`` when not, ``"-"`` without target."""
    target = row.get("target")
    if target is None:
        return "-"
    higher = row.get("higher_is_better", True)
    met = row["value"] >= target if higher else row["value"] <= target
    return "ok" if met else "MISS"


def format_number(value: float | None) -> str:
    """Compact, readable figures: ``48,213``, ``812.4``, ``0.42``, ``-`` for None."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _cells(row: Row) -> dict[str, str]:
    return {
        "name": row["name"],
        "value": format_number(row["value"]),
        "unit": row["unit"],
        "ceiling": format_number(row.get("ceiling")),
        "ceiling name": row.get("ceiling_name") or "-",
        "ratio": format_number(ratio(row)),
        "target": format_number(row.get("target")),
        "ok?": verdict(row),
    }


def format_table(rows: Sequence[Row]) -> str:
    """One aligned text table (numbers right-aligned), header and rule included."""
    lines = [dict(zip(_COLUMNS, _COLUMNS, strict=True)), *(_cells(row) for row in rows)]
    widths = {col: max(len(line[col]) for line in lines) for col in _COLUMNS}

    def render(line: dict[str, str]) -> str:
        parts = (
            line[col].rjust(widths[col]) if col in _NUMERIC else line[col].ljust(widths[col])
            for col in _COLUMNS
        )
        return " | ".join(parts).rstrip()

    rule = "-+-".join("-" * widths[col] for col in _COLUMNS)
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPU, core count, Python, OS, and when they were taken."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_results(path: Path, rows: Sequence[Row], machine: dict[str, Any]) -> None:
    """Write ``{"machine": ..., "rows": [...]}`` with each row's ratio and verdict added."""
    enriched = [{**row, "ratio": ratio(row), "ok": verdict(row)} for row in rows]
    path.write_text(json.dumps({"machine": machine, "rows": enriched}, indent=2) + "\n")
