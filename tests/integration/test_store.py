"""The SQLite store against real SQLite files in tmp_path."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import node.store
from node.errors import (
    LocalProtocolError,
    StorageConstraintError,
    StorageError,
    StorageFullError,
)
from node.schema import MIGRATIONS
from node.store import Store

pytestmark = pytest.mark.integration

_T = "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"
_INSERT = "INSERT INTO t (k, v) VALUES (?, ?)"


async def _with_table(store: Store) -> None:
    await store.write([(_T, ())])


async def _count(store: Store, table: str = "t") -> int:
    row = await store.fetch_one(f"SELECT count(*) FROM {table}")
    assert row is not None
    return int(row[0])


async def test_fresh_database_is_migrated_private_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with Store.open(path) as store:
        assert await store.schema_version() == len(MIGRATIONS)
        assert await store.fetch_one("PRAGMA journal_mode") == ("wal",)
        names = {r[0] for r in await store.fetch_all("SELECT name FROM sqlite_master")}
        assert {"identity", "contacts", "conversations", "messages", "outbox"} <= names
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.db"]  # WAL files removed on close


async def test_appended_migration_runs_once_and_newer_db_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    async with Store.open(path):
        pass
    monkeypatch.setattr(node.store, "MIGRATIONS", (*MIGRATIONS, "CREATE TABLE extra (x);"))
    for _ in range(2):  # the second open must not re-run (the table would already exist)
        async with Store.open(path) as store:
            assert await store.schema_version() == len(MIGRATIONS) + 1
            assert await store.fetch_all("SELECT x FROM extra") == []
    monkeypatch.setattr(node.store, "MIGRATIONS", MIGRATIONS)
    with pytest.raises(StorageError) as info:
        async with Store.open(path):
            pass
    assert info.value.code == "storage.schema_too_new"


async def test_failing_migration_is_rolled_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    broken = "CREATE TABLE half (x); CREATE TABLE oops (;"
    monkeypatch.setattr(node.store, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StorageError):
        async with Store.open(path):
            pass
    monkeypatch.setattr(node.store, "MIGRATIONS", MIGRATIONS)
    async with Store.open(path) as store:
        assert await store.schema_version() == len(MIGRATIONS)
        assert await store.fetch_one("SELECT name FROM sqlite_master WHERE name = 'half'") is None


async def test_concurrent_writes_are_group_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    real = node.store._run_batch

    def counting(conn: Any, units: Any, budget: float) -> Any:
        batches.append(len(units))
        return real(conn, units, budget)

    monkeypatch.setattr(node.store, "_run_batch", counting)
    async with Store.open(tmp_path / "p.db") as store:
        await _with_table(store)
        await asyncio.gather(*(store.write([(_INSERT, (i, f"v{i}"))]) for i in range(1000)))
        assert await _count(store) == 1000
    assert sum(batches) >= 1001
    assert len(batches) < 200  # many units per transaction, not one commit each
    assert max(batches) <= node.store.BATCH_UNITS


async def test_a_failing_unit_fails_alone_and_atomically(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "p.db") as store:
        await _with_table(store)
        await store.write([(_INSERT, (1, "one"))])
        results = await asyncio.gather(
            store.write([(_INSERT, (2, "two"))]),
            store.write([(_INSERT, (3, "three")), (_INSERT, (1, "dup"))]),
            store.write([(_INSERT, (4, "four"))]),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], StorageConstraintError)
        assert results[1].code == "storage.constraint"
        assert await store.fetch_all("SELECT k, v FROM t ORDER BY k") == [
            (1, "one"),
            (2, "two"),
            (4, "four"),
        ]


async def test_reads_see_each_committed_write(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "p.db") as store:
        await _with_table(store)
        for i in range(20):
            await store.write([(_INSERT, (i, str(i)))])
            assert await store.fetch_one("SELECT v FROM t WHERE k = ?", (i,)) == (str(i),)
        assert await store.fetch_one("SELECT v FROM t WHERE k = ?", (99,)) is None


async def test_write_many_is_one_atomic_unit(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "p.db") as store:
        await _with_table(store)
        await store.write_many(_INSERT, ((i, "x") for i in range(500)))
        with pytest.raises(StorageConstraintError):
            await store.write_many(_INSERT, [(1000, "new"), (0, "dup")])
        assert await _count(store) == 500


async def test_close_drains_pending_writes(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with Store.open(path) as store:
        await _with_table(store)
        tasks = [asyncio.create_task(store.write([(_INSERT, (i, "v"))])) for i in range(300)]
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    with pytest.raises(StorageError) as info:
        await store.write([(_INSERT, (1000, "late"))])
    assert info.value.code == "storage.closed"
    with pytest.raises(StorageError):
        await store.fetch_all("SELECT 1")
    async with Store.open(path) as store:
        assert await _count(store) == 300


async def test_small_queue_gives_backpressure_not_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node.store, "QUEUE_BOUND", 2)
    async with Store.open(tmp_path / "p.db") as store:
        await _with_table(store)
        await asyncio.gather(*(store.write([(_INSERT, (i, "v"))]) for i in range(200)))
        assert await _count(store) == 200


async def test_errors_are_mapped(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "p.db") as store:
        await _with_table(store)
        with pytest.raises(LocalProtocolError) as bad_sql:
            await store.write([("INSERT INTO nowhere VALUES (1)", ())])
        assert bad_sql.value.code == "storage.bad_query"
        with pytest.raises(LocalProtocolError):
            await store.write([(_INSERT, (1,))])  # wrong parameter count
        with pytest.raises(LocalProtocolError):
            await store.fetch_all("SELEC 1")
        with pytest.raises(StorageError) as read_only:
            await store.fetch_all("DELETE FROM t")
        assert read_only.value.fault == "environment"
        with pytest.raises(StorageConstraintError):  # foreign keys are on
            await store.write(
                [
                    (
                        "INSERT INTO messages (id, conversation_id, sender, direction, body,"
                        " sent_at, state) VALUES (x'01', 42, x'02', 'in', 'hi', 0, 'new')",
                        (),
                    )
                ]
            )
        await store.write([(_INSERT, (1, "still works"))])


async def test_disk_full_then_space_freed(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "p.db") as store:
        await _with_table(store)
        await store.write([(_INSERT, (0, "before"))])
        row = await store.fetch_one("PRAGMA page_count")
        assert row is not None
        await store.write([(f"PRAGMA max_page_count = {row[0] + 2}", ())])
        big = "x" * 3000
        results = await asyncio.gather(
            *(store.write([(_INSERT, (i, big))]) for i in range(1, 30)), return_exceptions=True
        )
        full = [r for r in results if isinstance(r, BaseException)]
        assert full and all(isinstance(r, StorageFullError) for r in full)
        assert all(r.code == "storage.full" for r in full if isinstance(r, StorageFullError))
        committed = len(results) - len(full)
        assert await _count(store) == 1 + committed
        await store.write([("PRAGMA max_page_count = 1000000", ())])
        await asyncio.gather(*(store.write([(_INSERT, (100 + i, big))]) for i in range(30)))
        assert await _count(store) == 31 + committed


async def test_full_text_search_follows_inserts_and_deletes(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "p.db") as store:
        await store.write(
            [
                ("INSERT INTO conversations (id, kind, created_at) VALUES (1, 'note', 0)", ()),
                *[
                    (
                        "INSERT INTO messages (id, conversation_id, sender, direction, body,"
                        " sent_at, state) VALUES (?, 1, ?, 'out', ?, ?, 'sent')",
                        (bytes([i]) * 16, b"\0" * 32, body, float(i)),
                    )
                    for i, body in enumerate(["hello brave world", "goodbye world", "tea?"])
                ],
            ]
        )
        query = (
            "SELECT m.body FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid"
            " WHERE messages_fts MATCH ? ORDER BY m.seq"
        )
        assert await store.fetch_all(query, ("world",)) == [
            ("hello brave world",),
            ("goodbye world",),
        ]
        await store.write([("DELETE FROM messages WHERE body = ?", ("goodbye world",))])
        assert await store.fetch_all(query, ("world",)) == [("hello brave world",)]
        assert await store.checkpoint() is True


async def test_close_on_error_path_and_process_exits(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio
        from node.store import Store

        async def main():
            try:
                async with Store.open({str(tmp_path / "p.db")!r}) as store:
                    await store.write([("CREATE TABLE t (x)", ())])
                    raise RuntimeError("boom")
            except RuntimeError:
                print("closed")

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "closed"


def test_full_disk_errors_map_to_storage_full() -> None:
    shm = sqlite3.OperationalError("disk I/O error")
    shm.sqlite_errorname = "SQLITE_IOERR_SHMSIZE"
    enospc = OSError(errno.ENOSPC, "No space left on device")
    for exc in (shm, enospc):
        assert isinstance(node.store.map_error(exc), StorageFullError)
