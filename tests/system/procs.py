"""Child processes for the system tests: the ``peerline`` CLI, ``peerline run`` daemons and
the rendezvous server, all started from the repository root with fast Argon2 parameters.

Every helper bounds its waits in time and leaves no process behind when used through
``processes()`` or ``rendezvous()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from node import control

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PEERLINE_ARGON2": "fast"}
DEADLINE = 120.0


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one CLI command; returns the completed process (``check``: exit 0 required)."""
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--home", str(home), *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{args} -> {done.returncode}: {done.stderr}")
    return done


def cli_json(home: Path, *args: str) -> dict[str, Any]:
    out = json.loads(cli(home, "--json", *args).stdout)
    assert isinstance(out, dict)
    return out


class NodeProcess:
    """``peerline run`` as a child process; its JSON event lines go to ``HOME/run.log``."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def log(self) -> Path:
        return self.home / "run.log"

    async def start(self) -> dict[str, Any]:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out, open(self.home / "run.err", "ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "--home",
                    str(self.home),
                    "--json",
                    "run",
                    *self.args,
                ],
                cwd=REPO,
                env=ENV,
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                f.seek(offset)
                for line in f:
                    event: dict[str, Any] = json.loads(line)
                    if event.get("event") == "ready":
                        self.info = event
                        return event
            assert self.proc.poll() is None, (self.home / "run.err").read_text()
            await asyncio.sleep(0.05)
        raise AssertionError("node did not become ready")

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def events(self) -> list[dict[str, Any]]:
        with open(self.log, "rb") as f:
            return [json.loads(line) for line in f]

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        return await control.call(self.home, op, args)


def make_home(tmp_path: Path, name: str) -> Path:
    home = tmp_path / name
    cli(home, "init", "--name", name)
    return home


@contextlib.contextmanager
def processes() -> Iterator[list[Any]]:
    """Collects node/server processes and kills whatever is still running at the end."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for process in started:
            if process.proc is not None and process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait(timeout=30)


async def wait_for(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def history(home: Path, peer: str, limit: int = 500) -> list[dict[str, Any]]:
    """Whole (up to ``limit``) conversation, oldest first, read offline or via the node."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        args = ["history", peer, "--limit", str(min(limit, 500))]
        page = cli_json(home, *args, *(["--before", cursor] if cursor else []))
        out += page["messages"]
        cursor = page["next"]
        if cursor is None:
            return list(reversed(out))


class RendezvousProcess:
    """``peerline rendezvous serve`` as a child process, ready once it printed its ``ready`` line.

    ``listen`` is the QUIC address (port 0 picks a free one; the chosen one is in ``address``);
    ``extra`` goes after it on the command line. Stdout carries the ready line; stderr (the
    server's JSON logs) goes to ``log``, beside the data directory and truncated on each start,
    so a chatty server can never block on a full pipe, and ``stderr()`` reads it back whole.
    """

    def __init__(self, directory: Path, *extra: str, listen: str = "127.0.0.1:0") -> None:
        self.directory = directory
        self.listen = listen
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, str] = {}

    @property
    def address(self) -> str:
        return self.info["address"]

    @property
    def log(self) -> Path:
        return self.directory.with_name(self.directory.name + ".err")

    async def start(self) -> dict[str, str]:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "--json",
                    "rendezvous",
                    "serve",
                    "--data",
                    str(self.directory),
                    "--listen",
                    self.listen,
                    *self.extra,
                ],
                cwd=REPO,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        assert line, f"rendezvous server exited early: {self.stderr()}"
        self.info = json.loads(line)
        assert self.info["event"] == "ready"
        return self.info

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def stderr(self) -> str:
        """Everything the server wrote to stderr since it started."""
        return self.log.read_text()

    def close(self) -> None:
        """Kill the server if it still runs and release its stdout pipe."""
        if self.proc is not None:
            self.stop(signal.SIGKILL)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@contextlib.asynccontextmanager
async def rendezvous(
    directory: Path, *extra: str, listen: str = "127.0.0.1:0"
) -> AsyncIterator[RendezvousProcess]:
    """A started rendezvous server on ``directory``, killed (if still running) on exit."""
    server = RendezvousProcess(directory, *extra, listen=listen)
    try:
        await server.start()
        yield server
    finally:
        server.close()
