"""``peerline demo``: a live tour with real processes on loopback, then everything stops.

Starts a rendezvous server and three nodes (alice, bob, carol) as separate processes, each
with its own home in a temporary directory, mDNS on 127.0.0.1 only. The transcript shows:
discovery; a 1:1 chat with delivery and read receipts; carol's first message to bob waiting as
a chat request until bob accepts; bob going offline while alice writes, and receiving it all
from his mailbox when he returns. Exit 0 when the tour completed; every process is stopped
on every path. With ``--json`` one object: ``peers`` (alice and bob), ``stranger`` (carol),
alice and bob's ``safety_number`` and the ``transcript`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from cli.output import app, emit, run
from node import control
from node.errors import OperationTimeoutError
from node.home import create_identity
from node.identity import PeerId, fingerprint, safety_number

__all__ = ["demo"]

_NAMES = ("alice", "bob", "carol")
_STEP_TIMEOUT = 45.0


class _Tour:
    """The processes of the demo and its transcript."""

    def __init__(self, root: Path, echo: bool) -> None:
        self.root = root
        self.echo = echo
        self.lines: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ids: dict[str, str] = {}
        self.rendezvous = ""

    def say(self, text: str) -> None:
        self.lines.append(text)
        if self.echo:
            click.echo(text)

    def _spawn(self, key: str, args: list[str], log: Path) -> None:
        with open(log, "ab") as out:
            self.procs[key] = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
                [sys.executable, "-m", "cli", "--json", *args],
                stdout=out,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )

    async def _ready_line(self, log: Path, offset: int, key: str) -> dict[str, Any]:
        async def ready() -> dict[str, Any] | None:
            if self.procs[key].poll() is not None:
                raise click.ClickException(f"{key} exited during start-up")
            with open(log, "rb") as f:
                f.seek(offset)
                for line in f:
                    event: dict[str, Any] = json.loads(line)
                    if event.get("event") == "ready":
                        return event
            return None

        event: dict[str, Any] = await _until(ready, f"{key} to start")
        return event

    async def start_server(self) -> None:
        log = self.root / "rendezvous.log"
        data = self.root / "rendezvous"
        self._spawn("server", ["rendezvous", "serve", "--data", str(data), "--listen",
                               "127.0.0.1:0"], log)  # fmt: skip
        self.rendezvous = (await self._ready_line(log, 0, "server"))["address"]

    async def start_node(self, name: str) -> None:
        log = self.root / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        args = ["--home", str(self.root / name), "run", "--listen", "127.0.0.1:0"]
        args += ["--mdns-interface", "127.0.0.1", "--rendezvous", self.rendezvous]
        self._spawn(name, args, log)
        ready = await self._ready_line(log, offset, name)
        self.ids[name] = ready["peer_id"]

    def stop(self, key: str) -> None:
        proc = self.procs.pop(key, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for key in list(self.procs):
            self.stop(key)

    def events(self, name: str) -> list[dict[str, Any]]:
        with open(self.root / f"{name}.log", "rb") as f:
            return [json.loads(line) for line in f]

    async def call(self, name: str, op: str, **args: Any) -> dict[str, Any]:
        return await control.call(self.root / name, op, args)

    async def state(self, name: str, peer: str, message_id: str) -> str:
        page = await self.call(name, "history", peer=peer, limit=50)
        return str(next(m["state"] for m in page["messages"] if m["id"] == message_id))

    async def follow(self, name: str, peer: str, message_id: str, until: str) -> None:
        """Print the states a message goes through until it reaches ``until``."""
        seen = ""

        async def reached() -> bool:
            nonlocal seen
            state = await self.state(name, peer, message_id)
            if state != seen:
                self.say(f"        {name}'s message is now {state}")
                seen = state
            return state == until

        await _until(reached, f"state {until}")


async def _until(probe: Callable[[], Awaitable[Any]], what: str) -> Any:
    deadline = time.monotonic() + _STEP_TIMEOUT
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise OperationTimeoutError(f"demo: timed out waiting for {what}")


async def _tour(tour: _Tour) -> None:
    await tour.start_server()
    tour.say(f"rendezvous server up at {tour.rendezvous[:16]}...@{tour.rendezvous.split('@')[1]}")
    for name in _NAMES:
        await tour.start_node(name)
        tour.say(f"{name:<5} node running, peer id {tour.ids[name]}")
    alice, bob, carol = (tour.ids[n] for n in _NAMES)

    def saw(name: str, peer: str) -> bool:
        return any(e.get("event") == "discovered" and e.get("peer") == peer
                   for e in tour.events(name))  # fmt: skip

    await _until(lambda: _now(saw("alice", bob) and saw("bob", alice)), "mDNS discovery")
    tour.say("discovery: alice and bob found each other on the LAN (mDNS)")

    tour.say("\n-- 1:1 chat with receipts")
    await tour.call("alice", "contacts.add", peer=bob, alias="bob")
    await tour.call("bob", "contacts.add", peer=alice, alias="alice")
    sent = await tour.call("alice", "send", to="bob", text="Hi Bob! 👋 lunch at noon?")
    tour.say("alice -> bob: Hi Bob! 👋 lunch at noon?")
    await tour.follow("alice", "bob", sent["id"], "delivered")
    await tour.call("bob", "read", peer="alice")
    tour.say("bob reads the conversation")
    await tour.follow("alice", "bob", sent["id"], "read")
    reply = await tour.call("bob", "send", to="alice", text="Sure, see you there.")
    tour.say("bob -> alice: Sure, see you there.")
    await tour.follow("bob", "alice", reply["id"], "delivered")

    tour.say("\n-- a stranger writes (bob's policy: confirm)")
    first = await tour.call("carol", "send", to=bob, text="Hello Bob, it's Carol from the camp.")
    tour.say("carol -> bob: Hello Bob, it's Carol from the camp.")
    await tour.follow("carol", bob, first["id"], "delivered")
    requests = (await tour.call("bob", "requests.list"))["requests"]
    for request in requests:
        tour.say(f"bob's requests: {request['peer'][:12]} ({request['count']}): "
                 f"{request['first_text']}")  # fmt: skip
    await tour.call("bob", "requests.answer", peer=carol, accept=True)
    tour.say("bob accepts carol's request: it is now a chat")

    tour.say("\n-- bob goes offline; alice keeps writing")
    tour.stop("bob")
    tour.say("bob's node stopped")
    texts = ["Are you still coming?", "I saved you a seat.", "Call me when you're back."]
    ids = [(await tour.call("alice", "send", to="bob", text=t))["id"] for t in texts]
    for text in texts:
        tour.say(f"alice -> bob: {text}")
    await tour.follow("alice", "bob", ids[-1], "stored")
    tour.say("the rendezvous server holds them, sealed, in bob's mailbox")
    await tour.start_node("bob")
    tour.say("bob's node is back")
    for message_id in ids:
        await tour.follow("alice", "bob", message_id, "delivered")
    page = await tour.call("bob", "history", peer="alice", limit=len(texts))
    for message in reversed(page["messages"]):
        tour.say(f"bob's history: <alice> {message['text']}")


async def _now(value: bool) -> bool:
    return value


async def _identities(root: Path) -> list[dict[str, str]]:
    rows = []
    for name in _NAMES:
        public = await create_identity(root / name, name, None)
        peer = public.peer_id
        rows.append({"name": name, "peer_id": peer.text(), "fingerprint": fingerprint(peer)})
    return rows


@click.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Live tour: a rendezvous server and three nodes chatting on loopback."""
    echo = not app(ctx).json
    with tempfile.TemporaryDirectory(prefix="peerline-demo-") as tmp:
        tour = _Tour(Path(tmp), echo)
        rows = run(_identities(tour.root))
        number = safety_number(PeerId.parse(rows[0]["peer_id"]), PeerId.parse(rows[1]["peer_id"]))
        tour.say(f"alice and bob's safety number: {number}")
        try:
            run(_tour(tour))
        finally:
            with contextlib.suppress(Exception):
                tour.stop_all()
        tour.say("\nall processes stopped; demo complete")
    if not echo:
        result = {"peers": rows[:2], "stranger": rows[2], "safety_number": number}
        emit(ctx, "", {**result, "transcript": tour.lines})
