"""A full disk under a running node's home: ``send`` fails with one ``storage.full`` line, the
database stays sound, and sending works again once space is freed.

The home lives on a small tmpfs mounted inside the test's tmp dir (needs root); a filler file
takes every free byte. The node runs (so its WAL and shared-memory files exist, as in real
use) and the CLI's ``send`` goes through it; the daemon's own log files point outside the
tmpfs. The node is stopped and the mount removed in teardown, even after a failure.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.procs import NodeProcess, cli, cli_json, make_home, processes

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

SIZE = "16m"


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    directory.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True
    )
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True, timeout=30)


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem refuses even one more byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
        with pytest.raises(OSError) as refused:
            os.write(fd, b"\0")
        assert refused.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def integrity(home: Path) -> str:
    (database,) = [p for p in home.rglob("*.db") if p.is_file()]
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def test_send_on_a_full_disk_fails_with_storage_full_and_recovers(tmp_path: Path) -> None:
    bob = cli_json(make_home(tmp_path, "bob"), "id")["peer_id"]
    with tmpfs(tmp_path / "small", SIZE) as mount, processes() as started:
        home = make_home(mount, "alice")
        for log in ("run.log", "run.err"):  # the daemon's own output must not hit the full disk
            (home / log).symlink_to(tmp_path / f"alice.{log}")
        alice = NodeProcess(home, "--listen", "127.0.0.1:0", "--no-mdns")
        started.append(alice)
        await alice.start()
        cli(home, "contacts", "add", bob, "--name", "bob")
        assert cli_json(home, "send", "bob", "before")["state"] == "queued"
        filler = mount / "filler"
        fill(filler)

        refused = cli(home, "--json", "send", "bob", "while full", check=False)
        assert refused.returncode != 0 and refused.stdout == ""
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert json.loads(refused.stderr)["error"] == "storage.full", refused.stderr
        plain = cli(home, "send", "bob", "while full", check=False)
        assert plain.stderr.startswith("error: ") and "storage full" in plain.stderr
        assert plain.stderr.count("\n") == 1
        assert integrity(home) == "ok"  # read while full, next to the running node

        filler.unlink()
        assert cli_json(home, "send", "bob", "after")["state"] == "queued"
        texts = [m["text"] for m in cli_json(home, "history", "bob")["messages"]]
        assert sorted(texts) == ["after", "before"]
        assert alice.stop() == 0
        assert integrity(home) == "ok"
