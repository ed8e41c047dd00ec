"""1:1 messaging with real node processes driven through the CLI (loopback only).

mDNS runs on 127.0.0.1 only. Bulk sends go through the control socket (the very API the CLI
uses) because starting a Python process per message would dominate the run time.
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

import pytest

from node import control

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PEERLINE_ARGON2": "fast"}
DEADLINE = 60.0


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
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    async def start(self) -> str:
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
                "127.0.0.1:0",
            ],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        self.address = json.loads(line)["address"]
        return self.address


@contextlib.asynccontextmanager
async def rendezvous(tmp_path: Path) -> AsyncIterator[RendezvousProcess]:
    server = RendezvousProcess(tmp_path / "rv")
    try:
        await server.start()
        yield server
    finally:
        if server.proc is not None:
            server.proc.kill()
            server.proc.wait(timeout=30)
            if server.proc.stdout is not None:
                server.proc.stdout.close()


# --------------------------------------------------------------------------- tests


async def test_two_nodes_find_each_other_by_mdns_and_chat_both_ways(tmp_path: Path) -> None:
    alice_home, bob_home = make_home(tmp_path, "alice"), make_home(tmp_path, "bob")
    lan = ("--listen", "127.0.0.1:0", "--mdns-interface", "127.0.0.1")
    with processes() as started:
        alice, bob = NodeProcess(alice_home, *lan), NodeProcess(bob_home, *lan)
        started += [alice, bob]
        await alice.start()
        await bob.start()
        cli(alice_home, "contacts", "add", bob.peer_id, "--name", "bob")
        cli(bob_home, "contacts", "add", alice.peer_id, "--name", "alice")
        sent = cli_json(alice_home, "send", "bob", "hello bob 👋")
        assert sent["state"] == "queued" and len(sent["id"]) == 32
        reply = cli_json(bob_home, "send", "alice", "hi alice")

        def delivered(home: Path, peer: str, message_id: str) -> bool:
            return any(
                m["id"] == message_id and m["state"] in ("delivered", "read")
                for m in history(home, peer)
            )

        await wait_for(lambda: delivered(alice_home, "bob", sent["id"]), "alice -> bob")
        await wait_for(lambda: delivered(bob_home, "alice", reply["id"]), "bob -> alice")
        texts = [m["text"] for m in history(bob_home, "alice")]
        assert texts == ["hello bob 👋", "hi alice"]
        status = cli_json(alice_home, "status")
        assert bob.peer_id in status["connected"]
        assert any(e["event"] == "discovered" for e in alice.events())
        assert alice.stop() == 0 and bob.stop() == 0


async def test_mailbox_delivers_100_messages_exactly_once_in_order(tmp_path: Path) -> None:
    alice_home, bob_home = make_home(tmp_path, "alice"), make_home(tmp_path, "bob")
    async with rendezvous(tmp_path) as server:
        flags = ("--listen", "127.0.0.1:0", "--no-mdns", "--rendezvous", server.address)
        with processes() as started:
            bob = NodeProcess(bob_home, *flags)
            alice = NodeProcess(alice_home, *flags)
            started += [alice, bob]
            await bob.start()
            invite = cli_json(bob_home, "invite")["invite"]
            assert bob.stop() == 0
            cli(bob_home, "policy", "allow")  # offline: straight to the store
            await alice.start()
            cli(alice_home, "contacts", "add", invite, "--name", "bob")
            ids = [(await alice.call("send", to="bob", text=f"m{i:03d}"))["id"] for i in range(100)]

            async def all_stored() -> bool:
                page = await alice.call("history", peer="bob", limit=100)
                return all(m["state"] == "stored" for m in page["messages"])

            await wait_for(all_stored, "100 messages in the mailbox")
            await bob.start()

            async def all_delivered() -> bool:
                page = await alice.call("history", peer="bob", limit=100)
                return all(m["state"] == "delivered" for m in page["messages"])

            await wait_for(all_delivered, "100 receipts")
            received = history(bob_home, alice.peer_id)
            assert [m["id"] for m in received] == ids
            assert [m["text"] for m in received] == [f"m{i:03d}" for i in range(100)]
            assert alice.stop() == 0 and bob.stop() == 0


async def test_policies_and_block_from_both_sides(tmp_path: Path) -> None:
    homes = {name: make_home(tmp_path, name) for name in ("bob", "carol", "dave", "erin", "frank")}
    flags = ("--listen", "127.0.0.1:0", "--no-mdns")
    with processes() as started:
        nodes = {name: NodeProcess(home, *flags) for name, home in homes.items()}
        started.extend(nodes.values())
        for node in nodes.values():
            await node.start()
        bob = nodes["bob"]
        invite = cli_json(homes["bob"], "invite")["invite"]
        cli(homes["bob"], "contacts", "block", nodes["frank"].peer_id)

        async def state_of(name: str, message_id: str) -> str:
            page = await nodes[name].call("history", peer=bob.peer_id, limit=10)
            return str(next(m["state"] for m in page["messages"] if m["id"] == message_id))

        async def send(name: str, text: str) -> str:
            return str((await nodes[name].call("send", to=invite, text=text))["id"])

        # deny: the stranger is told; nothing is stored at bob.
        cli(homes["bob"], "policy", "deny")
        refused = await send("carol", "let me in")
        await wait_for(lambda: _is(state_of("carol", refused), "failed"), "refusal")
        page = await nodes["carol"].call("history", peer=bob.peer_id)
        assert page["messages"][0].get("reason") == "refused"
        assert cli_json(homes["bob"], "history", nodes["carol"].peer_id)["messages"] == []

        # confirm: a request, nothing shown until accepted.
        cli(homes["bob"], "policy", "confirm")
        first = await send("dave", "hi, it's dave")
        second = await send("dave", "are you there?")
        await wait_for(lambda: _is(state_of("dave", second), "delivered"), "request stored")
        assert await state_of("dave", first) == "delivered"
        requests = cli_json(homes["bob"], "requests", "list")["requests"]
        assert [(r["peer"], r["count"]) for r in requests] == [(nodes["dave"].peer_id, 2)]
        shown = [e for e in bob.events() if e.get("peer") == nodes["dave"].peer_id]
        assert [e["event"] for e in shown if e["event"] in ("request", "message")] == ["request"]
        cli(homes["bob"], "requests", "accept", nodes["dave"].peer_id)
        await send("dave", "thanks")
        await wait_for(
            lambda: any(
                e.get("text") == "thanks" and e["event"] == "message" for e in bob.events()
            ),
            "accepted chat",
        )

        # allow: straight into a chat.
        cli(homes["bob"], "policy", "allow")
        await send("erin", "hello from erin")
        await wait_for(
            lambda: any(e.get("text") == "hello from erin" for e in bob.events()), "allowed chat"
        )

        # block: dropped silently; frank's message never gets a receipt or a refusal.
        blocked = await send("frank", "psst")
        await asyncio.sleep(3.0)
        assert await state_of("frank", blocked) in ("queued", "sent")  # retried, never answered
        assert not [e for e in bob.events() if e.get("peer") == nodes["frank"].peer_id]
        assert cli_json(homes["bob"], "history", nodes["frank"].peer_id)["messages"] == []
        for node in nodes.values():
            assert node.stop() == 0


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


def test_bad_input_is_one_line_nonzero_and_queues_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path, "alice")
    peer = cli_json(make_home(tmp_path, "bob"), "id")["peer_id"]
    cli(home, "contacts", "add", peer, "--name", "bob")
    cli(home, "contacts", "block", "bob")
    for args in [
        ("send", "nobody", "hi"),
        ("send", "bob", "hi"),  # blocked
        ("send", peer, ""),
        ("send", peer, "x" * 9000),
        ("send", "peerline://invite/notaninvite", "hi"),
        ("send", peer[:-1] + ("a" if peer[-1] != "a" else "b"), "hi"),
        ("history", "bob", "--limit", "0"),
    ]:
        done = cli(home, *args, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert cli(home, "status", check=False).returncode == 3
    cli(home, "contacts", "unblock", "bob")
    assert cli_json(home, "history", "bob")["messages"] == []
    queued = cli_json(home, "send", "bob", "queued while offline")
    assert queued["state"] == "queued"
    assert [m["state"] for m in cli_json(home, "history", "bob")["messages"]] == ["queued"]


async def test_dht_discovery_and_prekeys_over_the_connection(tmp_path: Path) -> None:
    """No mDNS, no rendezvous, no invite: the PeerId alone, found through the DHT."""
    alice_home, bob_home = make_home(tmp_path, "alice"), make_home(tmp_path, "bob")
    with processes() as started:
        bob = NodeProcess(bob_home, "--no-mdns", "--dht", "--dht-listen", "127.0.0.1:0")
        started.append(bob)
        await bob.start()
        bob_dht = cli_json(bob_home, "status")["dht"]["listen"]
        alice = NodeProcess(alice_home, "--no-mdns", "--dht", "--bootstrap", bob_dht)
        started.append(alice)
        await alice.start()
        cli(alice_home, "contacts", "add", bob.peer_id, "--name", "bob")
        cli(bob_home, "contacts", "add", alice.peer_id, "--name", "alice")
        sent = cli_json(alice_home, "send", "bob", "found you in the DHT")

        async def delivered() -> bool:
            page = await alice.call("history", peer="bob")
            return bool(page["messages"][0]["state"] == "delivered")

        await wait_for(delivered, "delivery via a DHT-found address")
        assert history(bob_home, "alice")[0]["id"] == sent["id"]
        assert alice.stop() == 0 and bob.stop() == 0
