"""Store figures: group-committed ``Store.write`` beside raw aiosqlite, in the same run.

Ceilings (measured now, same table shape, same PRAGMAs: WAL + ``synchronous=NORMAL``):

- raw aiosqlite ``executemany`` of 100 rows + commit: the best a Python SQLite writer does;
- raw aiosqlite one row per transaction: what awaiting one commit per message costs.

Our figures: one-row units from :data:`PRODUCERS` concurrent producers (each awaits its write
before the next, like a node persisting messages), the same from one producer (latency bound:
one commit per await, compared with raw one-row transactions), and ``write_many`` of 100-row
units. Targets: many producers reach :data:`UNIT_TARGET` rows/s (durable sending at 10k+
msg/s); one producer and bulk units keep :data:`BULK_BUDGET` of their raw ceilings (one-row
transactions, ``executemany``). bench/ may import aiosqlite directly:
it measures the library.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite

from bench.table import Row
from node.store import Store

PRODUCERS = 64
UNIT_TARGET = 10_000.0
BULK_BUDGET = 0.8
"""Share of the raw aiosqlite ceiling our single-producer and bulk paths must keep."""
_BULK = 100
_PAYLOAD = bytes(100)
_CREATE = "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)"
_INSERT = "INSERT INTO t (k, v) VALUES (?, ?)"


async def _timed(make: Callable[[Path], Awaitable[None]], rows: int) -> float:
    """Rows per second of ``make`` on a fresh database file."""
    with tempfile.TemporaryDirectory(prefix="peerline-bench-") as tmp:
        start = time.perf_counter()
        await make(Path(tmp) / "b.db")
        return rows / (time.perf_counter() - start)


async def _raw(path: Path, rows: int, per_tx: int) -> None:
    async with aiosqlite.connect(path) as db:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute(_CREATE)
        await db.commit()
        for first in range(0, rows, per_tx):
            batch = [(k, _PAYLOAD) for k in range(first, min(first + per_tx, rows))]
            if per_tx == 1:
                await db.execute(_INSERT, batch[0])
            else:
                await db.executemany(_INSERT, batch)
            await db.commit()


async def _units(path: Path, rows: int, producers: int) -> None:
    async with Store.open(path) as store:
        await store.write([(_CREATE, ())])

        async def producer(offset: int) -> None:
            for k in range(offset, rows, producers):
                await store.write([(_INSERT, (k, _PAYLOAD))])

        await asyncio.gather(*(producer(i) for i in range(producers)))


async def _bulk(path: Path, rows: int) -> None:
    async with Store.open(path) as store:
        await store.write([(_CREATE, ())])
        for first in range(0, rows, _BULK):
            await store.write_many(_INSERT, ((k, _PAYLOAD) for k in range(first, first + _BULK)))


async def _measure(quick: bool) -> list[Row]:
    rows = 5_000 if quick else 50_000
    single_rows = 1_000 if quick else 5_000
    executemany = await _timed(lambda p: _raw(p, rows, _BULK), rows)
    one_per_tx = await _timed(lambda p: _raw(p, single_rows, 1), single_rows)
    units = await _timed(lambda p: _units(p, rows, PRODUCERS), rows)
    sequential = await _timed(lambda p: _units(p, single_rows, 1), single_rows)
    bulk = await _timed(lambda p: _bulk(p, rows), rows)
    ceiling_name = f"aiosqlite executemany {_BULK} rows + commit"
    return [
        {
            "name": f"store.write_1row_units_{PRODUCERS}_producers",
            "value": units,
            "unit": "rows/s",
            "ceiling": executemany,
            "ceiling_name": ceiling_name,
            "target": UNIT_TARGET,
        },
        {
            "name": "store.raw_aiosqlite_1row_per_tx",
            "value": one_per_tx,
            "unit": "rows/s",
            "ceiling": executemany,
            "ceiling_name": ceiling_name,
            "target": None,
        },
        {
            "name": "store.write_1row_units_1_producer",
            "value": sequential,
            "unit": "rows/s",
            "ceiling": one_per_tx,
            "ceiling_name": "aiosqlite 1 row per transaction",
            "target": one_per_tx * BULK_BUDGET,
        },
        {
            "name": f"store.write_many_{_BULK}rows",
            "value": bulk,
            "unit": "rows/s",
            "ceiling": executemany,
            "ceiling_name": ceiling_name,
            "target": executemany * BULK_BUDGET,
        },
    ]


def run(quick: bool = False) -> list[Row]:
    """The store rows (see the module doc); ``quick`` uses 10x fewer rows."""
    return asyncio.run(_measure(quick))
