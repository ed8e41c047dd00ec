"""Node commands: ``run``, ``status``, ``events``, contacts, policy, messages, history.

Every command except ``run`` is one operation of :mod:`node.control`: it goes to the running
node over the control socket, or, when no node runs, straight to the store for operations
that only read or queue (a message sent then waits in the outbox). Operations that need the
network (``status``, ``invite``, ``directory``, ``events``, ``chat``) say "node not running"
and exit 3. ``--json`` prints the operation's JSON object.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import qrcode

from cli.chat import chat_command
from cli.identity_cmds import read_passphrase_file
from cli.output import app, emit, run
from node import control
from node.daemon import load_config, run_daemon
from node.errors import NodeNotRunningError
from node.home import DB_FILE, read_public_identity
from node.store import Store
from node.transport import Transport
from rendezvous.client import RendezvousClient
from rendezvous.protocol import RendezvousAddress

__all__ = ["NODE_COMMANDS", "invoke"]

_NETWORK_OPS = {"status", "invite", "typing", "directory.search"}


async def invoke(home: Path, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``op`` on the running node, else offline on the store (see the module doc)."""
    try:
        return await control.call(home, op, args)
    except NodeNotRunningError:
        if op in _NETWORK_OPS:
            raise
    public = await read_public_identity(home)
    async with Store.open(home / DB_FILE) as store:
        return await control.run_offline(store, public.peer_id, op, args)


def _do(ctx: click.Context, op: str, args: dict[str, Any]) -> dict[str, Any]:
    return run(invoke(app(ctx).home, op, args))


def _show(ctx: click.Context, result: dict[str, Any], text: str) -> None:
    emit(ctx, text, result)


# --------------------------------------------------------------------------- run, status, events


@click.command("run")
@click.option("--listen", metavar="HOST:PORT", help="QUIC address (default 127.0.0.1:0).")
@click.option("--mdns/--no-mdns", default=None, help="LAN discovery (default on).")
@click.option("--mdns-interface", "mdns_interfaces", multiple=True, metavar="IP")
@click.option("--dht/--no-dht", default=None, help="Kademlia DHT (default off).")
@click.option("--dht-listen", metavar="HOST:PORT")
@click.option("--bootstrap", multiple=True, metavar="HOST:PORT")
@click.option("--rendezvous", multiple=True, metavar="ADDRESS", help="PEERID@HOST:PORT")
@click.option("--passphrase-file", metavar="FILE", help="Passphrase of a sealed key file.")
@click.pass_context
def run_command(
    ctx: click.Context,
    *,
    listen: str | None,
    mdns: bool | None,
    mdns_interfaces: tuple[str, ...],
    dht: bool | None,
    dht_listen: str | None,
    bootstrap: tuple[str, ...],
    rendezvous: tuple[str, ...],
    passphrase_file: str | None,
) -> None:
    """Run the node in the foreground until Ctrl-C / SIGTERM."""
    home = app(ctx).home
    overrides = {
        "listen": listen,
        "mdns": mdns,
        "mdns_interfaces": list(mdns_interfaces) or None,
        "dht": dht,
        "dht_listen": dht_listen,
        "bootstrap": list(bootstrap) or None,
        "rendezvous": list(rendezvous) or None,
    }
    config = load_config(home, overrides)
    passphrase = read_passphrase_file(passphrase_file) if passphrase_file else None
    json_mode = app(ctx).json

    def on_event(event: dict[str, Any]) -> None:
        if json_mode:
            click.echo(json.dumps(event, ensure_ascii=False, sort_keys=True))
        else:
            click.echo(_event_text(event))
        sys.stdout.flush()

    for server in config.rendezvous:
        RendezvousAddress.parse(server)  # a bad address is bad input, before anything starts
    factory = _rendezvous_client
    run(run_daemon(home, config, passphrase=passphrase, on_event=on_event, mailboxes=factory))


def _rendezvous_client(transport: Transport, address: str) -> RendezvousClient:
    return RendezvousClient(transport, RendezvousAddress.parse(address), timeout=10.0)


def _event_text(event: dict[str, Any]) -> str:
    kind = event.get("event")
    if kind == "ready":
        return f"node {event['peer_id']} listening on {event['listen']} (Ctrl-C stops)"
    if kind == "message":
        return f"<{event['from'][:12]}> {event['text']}"
    if kind == "request":
        return f"chat request from {event['peer']}: {event['text']}"
    if kind == "state":
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return f"message {event['id']} {event['state']}{reason}"
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "at"))
    return f"{kind} {fields}"


@click.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Connected peers, rendezvous registrations, mDNS/DHT state, queued messages."""
    result = _do(ctx, "status", {})
    lines = [
        f"peer id     {result['peer_id']}",
        f"listening   {result['listen']}",
        f"connected   {', '.join(p[:12] for p in result['connected']) or '-'}",
        f"rendezvous  {', '.join(r['server'] for r in result['rendezvous']) or '-'}",
        f"mdns        {'on' if result['mdns']['on'] else 'off'}"
        f" ({len(result['mdns']['peers'])} peers seen)",
        f"dht         {_dht_text(result['dht'])}",
        f"queued      {result['queued']}",
    ]
    _show(ctx, result, "\n".join(lines))


def _dht_text(dht: dict[str, Any]) -> str:
    if not dht["on"]:
        return "off"
    return f"on at {dht['listen']} ({dht['routing_table']} nodes known)"


@click.command()
@click.pass_context
def events(ctx: click.Context) -> None:
    """Stream everything that happens, one JSON object per line (until the node stops)."""

    async def stream() -> None:
        reader, writer = await control.events(app(ctx).home)
        try:
            while line := await reader.readline():
                sys.stdout.write(line.decode())
                sys.stdout.flush()
        finally:
            writer.close()

    run(stream())


# --------------------------------------------------------------------------- contacts


@click.group()
def contacts() -> None:
    """Manage contacts (a peer is a PeerId, an alias, an invite link or `me`)."""


def _contact_line(c: dict[str, Any]) -> str:
    flags = " [blocked]" if c["blocked"] else ""
    label = c["alias"] or c["name"] or "-"
    return f"{label:<20} {c['peer_id']}{flags}"


@contacts.command("add")
@click.argument("peer")
@click.option("--name", "alias", metavar="ALIAS", help="Local alias for this contact.")
@click.pass_context
def contacts_add(ctx: click.Context, peer: str, alias: str | None) -> None:
    """Add a contact by PeerId or invite link."""
    result = _do(ctx, "contacts.add", {"peer": peer, "alias": alias})
    _show(ctx, result, f"added {_contact_line(result)}")


@contacts.command("list")
@click.pass_context
def contacts_list(ctx: click.Context) -> None:
    result = _do(ctx, "contacts.list", {})
    text = "\n".join(_contact_line(c) for c in result["contacts"]) or "no contacts"
    _show(ctx, result, text)


@contacts.command("remove")
@click.argument("peer")
@click.pass_context
def contacts_remove(ctx: click.Context, peer: str) -> None:
    result = _do(ctx, "contacts.remove", {"peer": peer})
    _show(ctx, result, f"removed {result['removed']}")


def _blocker(blocked: bool) -> click.Command:
    @click.argument("peer")
    @click.pass_context
    def command(ctx: click.Context, peer: str) -> None:
        result = _do(ctx, "contacts.block", {"peer": peer, "blocked": blocked})
        _show(ctx, result, f"{'blocked' if blocked else 'unblocked'} {result['peer']}")

    name = "block" if blocked else "unblock"
    command.__doc__ = "Drop everything from this peer, silently." if blocked else "Undo block."
    return click.command(name)(command)


contacts.add_command(_blocker(True))
contacts.add_command(_blocker(False))


@click.command()
@click.pass_context
def invite(ctx: click.Context) -> None:
    """Print an invite link (PeerId, addresses, name, prekeys) and its QR code."""
    result = _do(ctx, "invite", {})
    link = result["invite"]
    qr = qrcode.QRCode(border=1)
    qr.add_data(link.upper())  # upper case fits the QR alphanumeric mode
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    _show(ctx, result, f"{link}\n\n{out.getvalue()}")


def _setting(name: str, op: str, choices: tuple[str, ...], help_text: str) -> click.Command:
    @click.argument("value", required=False, type=click.Choice(choices))
    @click.pass_context
    def command(ctx: click.Context, value: str | None) -> None:
        result = _do(ctx, op, {"value": value})
        _show(ctx, result, f"{name}: {result[name]}")

    command.__doc__ = help_text
    return click.command(name)(command)


policy = _setting(
    "policy",
    "policy",
    ("deny", "confirm", "allow"),
    "Show or set who may start a chat with you (default confirm).",
)
visibility = _setting(
    "visibility",
    "visibility",
    ("open", "closed"),
    "Show or set whether you are listed in rendezvous directories (default closed).",
)


@click.group()
def requests() -> None:
    """Chat requests from strangers (policy confirm)."""


@requests.command("list")
@click.pass_context
def requests_list(ctx: click.Context) -> None:
    result = _do(ctx, "requests.list", {})
    lines = [f"{r['peer']} ({r['count']}): {r['first_text']}" for r in result["requests"]]
    _show(ctx, result, "\n".join(lines) or "no requests")


def _answer(accept: bool) -> click.Command:
    @click.argument("peer")
    @click.pass_context
    def command(ctx: click.Context, peer: str) -> None:
        result = _do(ctx, "requests.answer", {"peer": peer, "accept": accept})
        _show(ctx, result, f"{result['status']} {result['peer']}")

    command.__doc__ = "Accept the chat request." if accept else "Decline the chat request."
    return click.command("accept" if accept else "decline")(command)


requests.add_command(_answer(True))
requests.add_command(_answer(False))


@click.group()
def directory() -> None:
    """The directory of open accounts and public groups on your rendezvous servers."""


@directory.command("search")
@click.argument("text")
@click.option("--limit", type=int, default=20)
@click.pass_context
def directory_search(ctx: click.Context, text: str, limit: int) -> None:
    result = _do(ctx, "directory.search", {"text": text, "limit": limit})
    lines = [f"{r['kind']:<8} {r['name']:<24} {r['id']}" for r in result["results"]]
    _show(ctx, result, "\n".join(lines) or "nothing found")


# --------------------------------------------------------------------------- messages


@click.command()
@click.argument("to")
@click.argument("text")
@click.option("--ttl", type=float, metavar="SECONDS", help="Disappear after SECONDS.")
@click.pass_context
def send(ctx: click.Context, to: str, text: str, ttl: float | None) -> None:
    """Send TEXT to a contact, PeerId, invite or `me`."""
    result = _do(ctx, "send", {"to": to, "text": text, "ttl": ttl})
    _show(ctx, result, f"{result['id']} {result['state']}")


def message_line(m: dict[str, Any], own: str | None = None) -> str:
    who = "me" if m["from"] == own else m["from"][:12]
    return f"[{m['state']:<9}] <{who}> {m['text']}"


@click.command()
@click.argument("peer")
@click.option("--limit", type=int, default=50)
@click.option("--before", metavar="CURSOR")
@click.pass_context
def history(ctx: click.Context, peer: str, limit: int, before: str | None) -> None:
    """A page of the conversation, newest first (`next` is the cursor of the next page)."""
    result = _do(ctx, "history", {"peer": peer, "limit": limit, "before": before})
    lines = [message_line(m) for m in reversed(result["messages"])]
    if result["next"]:
        lines.append(f"(more: --before {result['next']})")
    _show(ctx, result, "\n".join(lines) or "no messages")


def _simple(name: str, op: str, doc: str, text: Callable[[dict[str, Any]], str]) -> click.Command:
    @click.argument("peer")
    @click.pass_context
    def command(ctx: click.Context, peer: str) -> None:
        result = _do(ctx, op, {"peer": peer})
        _show(ctx, result, text(result))

    command.__doc__ = doc
    return click.command(name)(command)


read = _simple("read", "read", "Mark a conversation read.", lambda r: f"{r['read']} read")
delete = _simple(
    "delete", "delete", "Erase a conversation.", lambda r: f"{r['deleted']} messages deleted"
)


@click.command("export")
@click.argument("peer")
@click.pass_context
def export(ctx: click.Context, peer: str) -> None:
    """Print the whole conversation as JSON (always JSON)."""
    result = _do(ctx, "export", {"peer": peer})
    click.echo(json.dumps(result, ensure_ascii=False, sort_keys=True))


@click.command()
@click.argument("text")
@click.option("--limit", type=int, default=50)
@click.pass_context
def search(ctx: click.Context, text: str, limit: int) -> None:
    """Full-text search over local history."""
    result = _do(ctx, "search", {"text": text, "limit": limit})
    _show(ctx, result, "\n".join(message_line(m) for m in result["messages"]) or "no matches")


def _switch(name: str, op: str, key: str, doc: str) -> click.Command:
    @click.argument("peer")
    @click.argument("value", type=click.Choice(["on", "off"]))
    @click.pass_context
    def command(ctx: click.Context, peer: str, value: str) -> None:
        result = _do(ctx, op, {"peer": peer, key: value == "on"})
        _show(ctx, result, f"{name} {value} for {result['peer']}")

    command.__doc__ = doc
    return click.command(name)(command)


keep_history = _switch(
    "keep-history", "keep_history", "keep", "Keep history (on) or erase messages once read."
)
read_receipts = _switch(
    "read-receipts", "read_receipts", "enabled", "Send read receipts to this contact or not."
)

NODE_COMMANDS: tuple[click.Command, ...] = (
    run_command,
    status,
    events,
    contacts,
    invite,
    policy,
    visibility,
    requests,
    directory,
    send,
    history,
    read,
    search,
    export,
    delete,
    keep_history,
    read_receipts,
    chat_command,
)
