"""``python -m tests.fuzz``: a long mutation-fuzzing campaign over every target.

For each target: start from its seeds plus the stored corpus, then feed ``--count`` inputs made
by random mutation (bit flips, byte overwrites, inserts, deletes, truncation, splices, fresh
random bytes). A crash (an exception that is not a remote-fault ``PeerlineError``) is saved
under ``tests/fuzz/crashers/<target>/`` and replayed by ``tests/unit/test_fuzz_regressions.py``.
Prints one line per target: inputs, accepted, refused, crashes, inputs/s, peak RSS growth.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import sys
import time
from pathlib import Path

from node.errors import PeerlineError
from tests.fuzz.targets import TARGETS, Target

ROOT = Path(__file__).parent
MAX_INPUT = 4096


def corpus_dir(kind: str, target: str) -> Path:
    return ROOT / kind / target


def load_inputs(kind: str, target: str) -> list[bytes]:
    folder = corpus_dir(kind, target)
    return [p.read_bytes() for p in sorted(folder.glob("*.bin"))] if folder.is_dir() else []


def mutate(rng: random.Random, pool: list[bytes]) -> bytes:
    data = bytearray(rng.choice(pool)) if pool and rng.random() < 0.9 else bytearray()
    for _ in range(rng.randint(1, 6)):
        choice = rng.randrange(6)
        if choice == 0 or not data:
            data += rng.randbytes(rng.randint(1, 16))
        elif choice == 1:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif choice == 2:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 3:
            del data[rng.randrange(len(data)) :]
        elif choice == 4:
            position = rng.randrange(len(data) + 1)
            data[position:position] = rng.choice(pool or [b"\x00"])[: rng.randint(1, 32)]
        else:
            data[rng.randrange(len(data))] = rng.choice((0x00, 0x7F, 0x80, 0xC0, 0xDC, 0xFF))
    return bytes(data[:MAX_INPUT])


def is_expected(exc: BaseException, faults: frozenset[str] = frozenset({"remote"})) -> bool:
    return isinstance(exc, PeerlineError) and exc.fault in faults


def save_crasher(target: str, data: bytes) -> Path:
    folder = corpus_dir("crashers", target)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def campaign(target: Target, count: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    pool = target.seeds() + load_inputs("corpus", target.name)
    accepted = refused = crashes = 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for _ in range(count):
        data = mutate(rng, pool)
        try:
            target.run(data)
            accepted += 1
            if len(pool) < 256 and rng.random() < 0.01:
                pool.append(data)
        except Exception as exc:
            if is_expected(exc, target.faults):
                refused += 1
            else:
                crashes += 1
                path = save_crasher(target.name, data)
                print(f"  crash in {target.name}: {type(exc).__name__}: {exc} -> {path}")
    elapsed = time.perf_counter() - started
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    return {
        "inputs": count,
        "accepted": accepted,
        "refused": refused,
        "crashes": crashes,
        "per_second": count / elapsed if elapsed else 0.0,
        "rss_growth_kib": rss_growth,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--target", action="append", choices=sorted(TARGETS))
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    failed = False
    for name in args.target or sorted(TARGETS):
        result = campaign(TARGETS[name], args.count, args.seed)
        failed = failed or result["crashes"] > 0
        print(
            f"{name:24} inputs={result['inputs']:>9,} accepted={result['accepted']:>9,} "
            f"refused={result['refused']:>9,} crashes={result['crashes']} "
            f"rate={result['per_second']:>9,.0f}/s rss_growth={result['rss_growth_kib']} KiB",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
