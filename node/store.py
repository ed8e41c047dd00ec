"""The node's SQLite store: one writer task with group commit, one read-only reader.

This is the only module that imports ``sqlite3``. Contracts:

- Open with ``async with Store.open(path) as store:``. The store is closed on every path:
  pending writes are drained, the writer stops, both connections close and their threads end.
- PRAGMAs: ``journal_mode=WAL``, ``synchronous=NORMAL``, ``secure_delete=ON``,
  ``foreign_keys=ON``, ``busy_timeout``. Schema migrations come from :data:`node.schema.MIGRATIONS`
  by ``PRAGMA user_version``, each in its own transaction; a newer database is refused.
- ``await store.write(ops)`` runs a *unit* (a list of ``(sql, params)``) atomically. When it
  returns, the unit is committed (durable as WAL + ``synchronous=NORMAL`` allows: survives a
  process crash, may lose the last commits on power loss). A unit that fails raises and
  changes nothing; it never fails the other units committed in the same transaction.
- Group commit: units wait in a queue bounded to :data:`QUEUE_BOUND` units; when it is full,
  ``write`` awaits space (backpressure, nothing is dropped). The writer task takes up to
  :data:`BATCH_UNITS` units, runs them in one transaction (each inside its own ``SAVEPOINT``)
  for at most :data:`BATCH_SECONDS`, commits once, then resolves the units' futures. Units not
  reached in the time budget go first into the next transaction.
- Reads (``fetch_all``/``fetch_one``) run on a separate read-only connection; WAL lets them run
  beside the writer and they see every write whose ``await`` has returned.
- Errors: every ``sqlite3`` exception becomes :class:`StorageFullError` (``storage.full``, disk
  or ``max_page_count`` full), :class:`StorageConstraintError` (``storage.constraint``),
  :class:`LocalProtocolError` (``storage.bad_query``: wrong SQL or parameters) or
  :class:`StorageError`. After a failure (including disk full) the transaction is rolled back
  and the writer keeps serving: writes succeed again once space is freed.

Why a batch per thread hop: aiosqlite's public API costs one hop to its worker thread (~110 us)
per statement, so a unit with its SAVEPOINT/RELEASE would cost three hops and cap group commit
near 3k units/s. Each connection is an ``aiosqlite.Connection`` (one worker thread per
connection), and :class:`_Worker` runs a whole batch of statements in that thread in ONE hop
through aiosqlite's ``_execute`` (private but unchanged since 0.17; pinned <0.23 and covered by
tests/integration/test_store.py). aiosqlite 0.22's threads are not daemons: ``close()`` runs on
every path (``Store.open`` is a context manager), so the process never hangs at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import aiosqlite

from node.errors import (
    LocalProtocolError,
    PeerlineError,
    StorageConstraintError,
    StorageError,
    StorageFullError,
)
from node.schema import MIGRATIONS

__all__ = [
    "BATCH_SECONDS",
    "BATCH_UNITS",
    "QUEUE_BOUND",
    "Params",
    "Row",
    "Store",
    "WriteOp",
]

Params: TypeAlias = Sequence[Any] | Mapping[str, Any]
WriteOp: TypeAlias = tuple[str, Params]
Row: TypeAlias = tuple[Any, ...]

QUEUE_BOUND = 4096
"""Units waiting for the writer; ``write`` awaits space beyond this (backpressure)."""
BATCH_UNITS = 256
"""At most this many units per transaction."""
BATCH_SECONDS = 0.010
"""A transaction stops taking new units after this long and commits."""
BUSY_TIMEOUT_MS = 5000

_STOP = None
_T = TypeVar("_T")


@dataclass(slots=True)
class _Unit:
    """One atomic write: statements run in order; ``many`` statements use ``executemany``."""

    steps: list[tuple[str, Any, bool]]
    future: asyncio.Future[None] = field(repr=False)


_DISK_FULL = frozenset({"SQLITE_FULL", "SQLITE_IOERR_SHMSIZE"})
"""SQLite names of a full disk: the WAL index (``-shm``) cannot grow on a full filesystem."""


def _is_enospc(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def map_error(exc: BaseException) -> PeerlineError:
    """Translate a ``sqlite3`` (or parameter) exception into our hierarchy."""
    if isinstance(exc, PeerlineError):
        return exc
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    text = f"{name}: {exc}"
    if name in _DISK_FULL or "database or disk is full" in str(exc) or _is_enospc(exc):
        return StorageFullError(f"storage full ({text})")
    if isinstance(exc, sqlite3.IntegrityError):
        return StorageConstraintError(f"constraint violated ({text})")
    bad_call = sqlite3.ProgrammingError | sqlite3.InterfaceError | TypeError | ValueError
    if name == "SQLITE_ERROR" or isinstance(exc, bad_call):  # SQLITE_ERROR: bad SQL, no table
        return LocalProtocolError(f"bad query ({text})", code="storage.bad_query")
    return StorageError(f"database error ({text})")


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    """Open a connection in autocommit mode (we issue BEGIN/COMMIT ourselves)."""
    if read_only:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
    else:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _open_writer(path: Path) -> sqlite3.Connection:
    """Create the file private (0600; SQLite gives its WAL files the same mode) and connect."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    return _connect(path, read_only=False)


def _migrate(conn: sqlite3.Connection, migrations: Sequence[str] | None = None) -> None:
    """Bring ``user_version`` up to ``len(migrations)`` (default: the node schema, looked up at
    call time), one transaction per migration."""
    migrations = MIGRATIONS if migrations is None else migrations
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(migrations):
        raise StorageError(
            f"database schema v{version} is newer than this peerline (v{len(migrations)}): "
            "upgrade peerline",
            code="storage.schema_too_new",
        )
    for index in range(version, len(migrations)):
        bump = f"PRAGMA user_version = {index + 1};"
        script = f"BEGIN IMMEDIATE;\n{migrations[index]}\n{bump}\nCOMMIT;"
        try:
            conn.executescript(script)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StorageError(
                f"schema migration to v{index + 1} failed: {map_error(exc).message}",
                code="storage.migration_failed",
            ) from None


def _run_unit(conn: sqlite3.Connection, unit: _Unit) -> None:
    for sql, params, many in unit.steps:
        if many:
            conn.executemany(sql, params)
        else:
            conn.execute(sql, params)


def _run_batch(
    conn: sqlite3.Connection, units: Sequence[_Unit], budget: float
) -> dict[int, BaseException | None]:
    """Run units in one transaction; return the outcome of each unit that is settled.

    ``None`` = committed, an exception = failed. Units absent from the result were not
    settled (time budget, or SQLite aborted the whole transaction): the caller retries them.
    If this raises, no transaction is left open (the writer can go on).
    """
    try:
        return _run_batch_unguarded(conn, units, budget)
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _run_batch_unguarded(
    conn: sqlite3.Connection, units: Sequence[_Unit], budget: float
) -> dict[int, BaseException | None]:
    outcomes: dict[int, BaseException | None] = {}
    conn.execute("BEGIN IMMEDIATE")
    start = time.monotonic()
    for index, unit in enumerate(units):
        if index and time.monotonic() - start > budget:
            break
        conn.execute("SAVEPOINT unit")
        try:
            _run_unit(conn, unit)
        except (sqlite3.Error, TypeError, ValueError) as exc:
            outcomes[index] = exc
            if not conn.in_transaction:
                # SQLite rolled back the whole transaction (e.g. SQLITE_FULL): earlier units of
                # this batch are lost, so they are not settled and will be retried.
                return {index: exc}
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
        else:
            conn.execute("RELEASE unit")
            outcomes[index] = None
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return {index: exc for index in outcomes}
    return outcomes


class _Worker:
    """One aiosqlite connection thread; ``call`` runs a function in it, one hop per call.

    The ``sqlite3`` connection is made in the thread by ``connector`` (so it is created, used
    and closed there only). This class is the only user of aiosqlite's private ``_execute``.
    """

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        self._proxy = aiosqlite.Connection(connector, iter_chunk_size=64)

    async def start(self) -> sqlite3.Connection:
        await self._proxy
        return self._proxy._conn

    async def call(self, function: Callable[[], _T]) -> _T:
        result: _T = await self._proxy._execute(function)  # type: ignore[no-untyped-call]
        return result

    async def close(self) -> None:
        """Close the connection and end the thread (also after a failed ``start``)."""
        await self._proxy.close()


class Store:
    """An open node database. Create with :meth:`open`; all methods are coroutine-safe."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        write_worker: _Worker,
        read_worker: _Worker,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._wworker = write_worker
        self._rworker = read_worker
        self._queue: asyncio.Queue[_Unit | None] = asyncio.Queue(QUEUE_BOUND)
        self._closing = False
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._write_loop(), name="store-writer")

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, path: str | Path, *, migrations: Sequence[str] | None = None
    ) -> AsyncIterator[Store]:
        """Open (creating and migrating if needed) the database at ``path`` (a file path).

        ``migrations`` defaults to the node schema; another database (the rendezvous server's)
        passes its own ordered scripts.
        """
        store = await cls._open(Path(path), migrations)
        try:
            yield store
        finally:
            await store.close()

    @classmethod
    async def _open(cls, path: Path, migrations: Sequence[str] | None) -> Store:
        wworker = _Worker(lambda: _open_writer(path))
        rworker = _Worker(lambda: _connect(path, read_only=True))
        try:
            writer = await wworker.start()
            # Migrate after connecting, not inside the connector: a failing aiosqlite connector
            # leaves a stop job behind that can outlive the event loop.
            await wworker.call(lambda: _migrate(writer, migrations))
            reader = await rworker.start()
        except BaseException as exc:
            await rworker.close()
            await wworker.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise map_error(exc) from None
            raise
        return cls(path, writer, reader, wworker, rworker)

    # -- writes -------------------------------------------------------------------------------

    async def write(self, ops: Iterable[WriteOp]) -> None:
        """Run ``ops`` atomically in the next group commit; return once committed.

        Raises a mapped error (see module doc) if the unit failed; then none of it was applied.
        Cancelling the caller before the writer takes the unit withdraws it.
        """
        await self._submit([(sql, params, False) for sql, params in ops])

    async def write_many(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement for every row (``executemany``) as one atomic unit."""
        await self._submit([(sql, list(rows), True)])

    async def _submit(self, steps: list[tuple[str, Any, bool]]) -> None:
        if self._closing:
            raise StorageError("the store is closed", code="storage.closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Unit(steps, future))
        await future

    async def _write_loop(self) -> None:
        """The single writer: drain the queue in batches until the stop marker."""
        carried: deque[_Unit] = deque()
        stopping = False
        while carried or not stopping:
            if not carried:
                item = await self._queue.get()
                if item is _STOP:
                    stopping = True
                    continue
                carried.append(item)
            while len(carried) < BATCH_UNITS and not stopping and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stopping = True
                else:
                    carried.append(item)
            live = [unit for unit in carried if not unit.future.done()]
            batch, carried = live[:BATCH_UNITS], deque(live[BATCH_UNITS:])
            if batch:
                settled = await self._commit(batch)
                carried.extendleft(reversed([u for i, u in enumerate(batch) if i not in settled]))

    async def _commit(self, batch: list[_Unit]) -> dict[int, BaseException | None]:
        """Run one batch on the writer thread and resolve the futures of settled units."""
        try:
            outcomes = await self._wworker.call(
                lambda: _run_batch(self._writer, batch, BATCH_SECONDS)
            )
        except Exception as exc:  # BEGIN or ROLLBACK itself failed: fail the whole batch.
            outcomes = dict.fromkeys(range(len(batch)), exc)
        for index, outcome in outcomes.items():
            future = batch[index].future
            if future.done():
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(map_error(outcome))
        return outcomes

    # -- reads and maintenance ----------------------------------------------------------------

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        """Rows of a query on the read-only connection."""
        rows: list[Row] = await self._read(lambda: self._reader.execute(sql, params).fetchall())
        return rows

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        """The first row of a query, or ``None``."""
        row: Row | None = await self._read(lambda: self._reader.execute(sql, params).fetchone())
        return row

    async def _read(self, query: Callable[[], _T]) -> _T:
        if self._closed:
            raise StorageError("the store is closed", code="storage.closed")
        try:
            return await self._rworker.call(query)
        except (sqlite3.Error, TypeError, ValueError) as exc:
            raise map_error(exc) from None

    async def checkpoint(self) -> bool:
        """``wal_checkpoint(TRUNCATE)``: push erased rows out of the WAL file too.

        Returns whether the checkpoint completed (``False`` if a reader kept it from finishing).
        Runs on the writer thread between two transactions.
        """

        def run() -> bool:
            busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return bool(busy == 0)

        try:
            return await self._wworker.call(run)
        except sqlite3.Error as exc:
            raise map_error(exc) from None

    async def backup(self, destination: str | Path) -> None:
        """Online backup (SQLite backup API) of the whole database into a new file.

        Runs on the writer thread between two transactions, so the copy is consistent and
        contains every write whose ``await`` has returned. ``destination`` must not exist.
        """
        target = Path(destination)

        def run() -> None:
            with contextlib.closing(
                sqlite3.connect(f"{target.as_uri()}?mode=rwc", uri=True)
            ) as out:
                self._writer.backup(out)

        if target.exists():
            raise LocalProtocolError(f"{target} already exists", code="storage.exists")
        try:
            await self._wworker.call(run)
        except sqlite3.Error as exc:
            raise map_error(exc) from None

    async def schema_version(self) -> int:
        """The database's ``user_version`` (equals ``len(MIGRATIONS)`` once open)."""
        row = await self.fetch_one("PRAGMA user_version")
        assert row is not None
        return int(row[0])

    async def close(self) -> None:
        """Drain queued writes, stop the writer, close both connections. Idempotent."""
        if self._closing:
            await asyncio.shield(self._task)
            return
        self._closing = True
        try:
            await self._queue.put(_STOP)
            await self._task
        finally:
            if not self._task.done():
                self._task.cancel()
            self._closed = True
            # Reader first: the writer, closing last, checkpoints and removes the WAL files.
            await self._rworker.close()
            await self._wworker.close()
