"""``peerline chat PEER``: an interactive terminal chat with the running node.

Shows the last messages, then live: incoming messages of this conversation, the states of
what we send (``sent`` -> ``stored`` -> ``delivered`` -> ``read``) and typing notices. Each
line typed is sent; ``/quit`` (or end of input) leaves. Incoming messages are marked read
while the chat is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.output import app, run
from node import control
from node.errors import NodeNotRunningError

__all__ = ["chat_command"]

_BACKLOG = 20


def _line(message: dict[str, Any], own: str) -> str:
    who = "me" if message["from"] == own else message["from"][:12]
    return f"[{message['state']:<9}] <{who}> {message['text']}"


async def _incoming(home: Path, peer: str, own: str, mine: set[str]) -> None:
    reader, writer = await control.events(home)
    try:
        while line := await reader.readline():
            event = json.loads(line)
            kind = event.get("event")
            if kind == "message" and event.get("from") == peer:
                click.echo(_line(event, own))
                await control.call(home, "read", {"peer": peer})
            elif kind == "state" and event.get("id") in mine:
                click.echo(f"  ({event['id'][:8]} {event['state']})")
            elif kind == "typing" and event.get("peer") == peer and event.get("active"):
                click.echo("  (typing...)")
    finally:
        writer.close()


async def _outgoing(home: Path, peer: str, mine: set[str]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        text = await loop.run_in_executor(None, sys.stdin.readline)
        if not text or text.strip() == "/quit":
            return
        if not text.strip():
            continue
        result = await control.call(home, "send", {"to": peer, "text": text.rstrip("\n")})
        mine.add(result["id"])


async def _chat(home: Path, who: str) -> None:
    target = await control.call(home, "resolve", {"peer": who})
    status = await control.call(home, "status", {})
    peer, own = target["peer_id"], status["peer_id"]
    page = await control.call(home, "history", {"peer": peer, "limit": _BACKLOG})
    click.echo(f"chat with {target['label']} ({peer[:12]}), /quit to leave")
    for message in reversed(page["messages"]):
        click.echo(_line(message, own))
    with contextlib.suppress(NodeNotRunningError):
        await control.call(home, "read", {"peer": peer})
    mine: set[str] = set()
    incoming = asyncio.create_task(_incoming(home, peer, own, mine))
    try:
        await _outgoing(home, peer, mine)
    finally:
        incoming.cancel()
        await asyncio.gather(incoming, return_exceptions=True)


@click.command("chat")
@click.argument("peer")
@click.pass_context
def chat_command(ctx: click.Context, peer: str) -> None:
    """Interactive chat: history, live messages, delivery states, typing."""
    run(_chat(app(ctx).home, peer))
