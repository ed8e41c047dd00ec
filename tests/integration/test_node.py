"""Two in-process nodes over real QUIC and SQLite; the control socket of a running node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from node import control
from node.control import ControlServer
from node.errors import NodeNotRunningError
from node.home import create_identity, load_identity
from node.node import Node, NodeConfig

CONFIG = NodeConfig(mdns=False)


@contextlib.asynccontextmanager
async def running(home: Path, name: str) -> AsyncIterator[Node]:
    await create_identity(home, name, None)
    identity = await load_identity(home, None)
    async with Node.open(home, identity, CONFIG, name) as node:
        yield node


async def next_event(queue: asyncio.Queue[dict[str, Any] | None], **match: Any) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            event = await queue.get()
            assert event is not None
            if all(event.get(k) == v for k, v in match.items()):
                return event


async def test_message_with_receipts_both_ways(tmp_path: Path) -> None:
    async with running(tmp_path / "a", "alice") as alice, running(tmp_path / "b", "bob") as bob:
        await bob.contacts.set_policy("allow")
        target = await alice.contacts.resolve(bob.invite())
        await alice.contacts.add(target, alias="bob", name=None, now=alice.clock())
        alice_events, bob_events = alice.subscribe(), bob.subscribe()
        message_id = await alice.send(bob.peer_id, "hello 👋")
        incoming = await next_event(bob_events, event="message")
        assert incoming["text"] == "hello 👋" and incoming["id"] == message_id.hex()
        await next_event(alice_events, event="state", id=message_id.hex(), state="delivered")
        assert await bob.mark_read(alice.peer_id) == 1
        await next_event(alice_events, event="state", id=message_id.hex(), state="read")
        reply = await bob.send(alice.peer_id, "hi!")
        await next_event(bob_events, event="state", id=reply.hex(), state="delivered")
        page, _ = await alice.history.page(bob.peer_id)
        assert [(m.text, m.state) for m in page] == [("hi!", "received"), ("hello 👋", "read")]
        assert (await alice.status())["queued"] == 0


async def raw_exchange(path: Path, payload: bytes) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        lines = []
        async with asyncio.timeout(10):
            while line := await reader.readline():
                lines.append(json.loads(line))
        return lines
    finally:
        writer.close()


async def test_control_socket_is_private_validated_and_bounded(tmp_path: Path) -> None:
    home = tmp_path / "a"
    async with running(home, "alice") as alice:
        server = ControlServer(alice, home)
        await server.start()
        try:
            mode = stat.S_IMODE((home / control.SOCKET_FILE).stat().st_mode)
            assert mode == 0o600
            sent = await control.call(home, "send", {"to": "me", "text": "note"})
            assert sent["state"] == "delivered"
            replies = await raw_exchange(
                server.path,
                b"not json\n"
                b'{"op": "nope"}\n'
                b'{"op": "send", "args": {"to": "me", "text": 5}}\n'
                b'{"op": "history", "args": {"peer": "me", "limit": 100000}}\n'
                b'{"op": "history", "args": {"peer": "me"}}\n',
            )
            assert [r.get("error") for r in replies] == [
                "control.bad_json",
                "control.bad_request",
                "control.bad_args",
                "usage.bad_limit",
                None,
            ]
            assert replies[-1]["result"]["messages"][0]["text"] == "note"
            # An over-long line closes that connection; the server keeps serving.
            assert await raw_exchange(server.path, b"x" * (control.MAX_LINE + 10) + b"\n") == []
            assert (await control.call(home, "status", {}))["peer_id"] == alice.peer_id.text()
        finally:
            await server.aclose()
        with pytest.raises(NodeNotRunningError):
            await control.call(home, "status", {})


async def test_ttl_erases_on_both_sides_and_keep_no_history(tmp_path: Path) -> None:
    async with running(tmp_path / "a", "alice") as alice, running(tmp_path / "b", "bob") as bob:
        await bob.contacts.set_policy("allow")
        target = await alice.contacts.resolve(bob.invite())
        await alice.contacts.add(target, alias="bob", name=None, now=alice.clock())
        bob_events = bob.subscribe()
        await alice.send(bob.peer_id, "self-destructs", ttl=1.0)
        await next_event(bob_events, event="message", text="self-destructs")
        await bob.history.set_keep_history(alice.peer_id, False, bob.clock())
        await alice.send(bob.peer_id, "read once")
        await next_event(bob_events, event="message", text="read once")
        async with asyncio.timeout(10):
            while (await alice.history.page(bob.peer_id))[0][-1].text == "self-destructs":
                await asyncio.sleep(0.2)
            while len((await bob.history.page(alice.peer_id))[0]) != 1:
                await asyncio.sleep(0.2)
        assert await bob.mark_read(alice.peer_id) == 1
        assert (await bob.history.page(alice.peer_id))[0] == []
        assert [m.text for m in (await alice.history.page(bob.peer_id))[0]] == ["read once"]
