"""``peerline rendezvous ...``: run and administer a community rendezvous server.

``serve`` prints one line when ready (``--json``: ``{"event": "ready", "address": ...}``) and
runs until SIGTERM or SIGINT, then closes connections and the database cleanly. Its logs are
JSON lines on stderr, without PeerIds or IP addresses unless ``--log-level debug``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from cli.output import emit, run
from node.errors import UsageError
from node.identity import PeerId
from node.registry import AccessMode
from rendezvous import admin
from rendezvous.metrics import JsonLogFormatter
from rendezvous.process import ServeOptions, planned_address, read_address, serve
from rendezvous.server import ServiceConfig

__all__ = ["parse_duration", "parse_hostport", "rendezvous"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_DATA = click.option(
    "--data",
    "data",
    metavar="DIR",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The server's state directory (identity, database).",
)


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[V6]:PORT`` (an IP literal: no DNS); raises :class:`UsageError`."""
    host, colon, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        valid = bool(colon) and port.isdigit() and int(port) <= 65535
    except ValueError:
        valid = False
    if not valid:
        raise UsageError(f"{what} must be IP:PORT, got {text!r}", code="usage.invalid")
    return host, int(port)


def parse_duration(text: str) -> float:
    """``90``, ``30m``, ``12h``, ``7d``, ``2w`` -> seconds."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise UsageError(f"not a duration (e.g. 12h, 7d): {text!r}", code="usage.invalid")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _peer(text: str) -> PeerId:
    return PeerId.parse(text)


@click.group()
def rendezvous() -> None:
    """Run a community rendezvous server (presence, mailbox, directory)."""


@rendezvous.command("serve")
@_DATA
@click.option("--listen", required=True, metavar="HOST:PORT", help="UDP address for QUIC.")
@click.option(
    "--mode",
    type=click.Choice([m.value for m in AccessMode]),
    default=AccessMode.OPEN.value,
    show_default=True,
    help="Who may use the server.",
)
@click.option("--dht-listen", metavar="HOST:PORT", help="Also run a public DHT node here.")
@click.option("--metrics", "metrics", metavar="HOST:PORT", help="Prometheus endpoint.")
@click.option("--advertise", metavar="HOST", help="Host put in the ADDRESS (default: listen).")
@click.option(
    "--log-level",
    type=click.Choice(["warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.pass_context
def serve_command(
    ctx: click.Context,
    *,
    data: Path,
    listen: str,
    mode: str,
    dht_listen: str | None,
    metrics: str | None,
    advertise: str | None,
    log_level: str,
) -> None:
    """Run the server until SIGTERM."""
    debug = log_level == "debug"
    options = ServeOptions(
        data,
        parse_hostport(listen, "--listen"),
        service=ServiceConfig(mode=AccessMode(mode), debug_log=debug),
        advertise=advertise,
        dht_listen=parse_hostport(dht_listen, "--dht-listen") if dht_listen else None,
        metrics_listen=parse_hostport(metrics, "--metrics") if metrics else None,
    )
    _configure_logging(log_level)

    def ready(info: dict[str, object]) -> None:
        emit(ctx, f"ready {info['address']}", info)
        sys.stdout.flush()

    run(_serve_until_signal(options, ready))


async def _serve_until_signal(
    options: ServeOptions, ready: Callable[[dict[str, object]], None]
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await serve(options, ready, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("peerline.rendezvous")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


@rendezvous.command("address")
@_DATA
@click.option(
    "--listen",
    metavar="IP:PORT",
    help="Before the first start: the address serve will be reachable at (creates the identity).",
)
@click.pass_context
def address_command(ctx: click.Context, data: Path, listen: str | None) -> None:
    """Print the ADDRESS nodes use to reach and pin the server (PEERID@HOST:PORT).

    Without --listen: the address of the last start. With it: the address for that endpoint,
    so an operator can hand the ADDRESS out before the first start.
    """
    if listen is None:
        address = run(read_address(data))
    else:
        host, port = parse_hostport(listen, "--listen")
        address = run(planned_address(data, host, port))
    emit(ctx, address.text(), {"address": address.text(), "peer_id": address.peer_id.text()})


@rendezvous.command("backup")
@_DATA
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def backup_command(ctx: click.Context, data: Path, file: Path) -> None:
    """Copy the server database to FILE (online: the server may keep running)."""
    run(admin.backup(data, file))
    emit(ctx, f"backed up to {file}", {"backup": str(file)})


@rendezvous.command("restore")
@_DATA
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_context
def restore_command(ctx: click.Context, data: Path, file: Path) -> None:
    """Replace the server database with FILE (stop the server first)."""
    run(admin.restore(data, file))
    emit(ctx, f"restored from {file}", {"restored": str(file)})


@rendezvous.group("admin")
@_DATA
def admin_group(data: Path) -> None:
    """Change access rules (works while the server runs; bans apply at once)."""


def _data(ctx: click.Context) -> Path:
    """The ``--data`` given to ``admin`` (the nearest enclosing command that has it)."""
    current: click.Context | None = ctx
    while current is not None and "data" not in current.params:
        current = current.parent
    if current is None:
        raise UsageError("--data is required", code="usage.invalid")
    data = current.params["data"]
    assert isinstance(data, Path)
    return data


@admin_group.group("invite")
def invite_group() -> None:
    """Invite tokens (for --mode invite)."""


@invite_group.command("create")
@click.option("--uses", type=click.IntRange(1, admin.MAX_USES), default=1, show_default=True)
@click.option("--expires", metavar="DURATION", default="7d", show_default=True)
@click.pass_context
def invite_create(ctx: click.Context, uses: int, expires: str) -> None:
    """Create a token; give it to a new user once (it is not stored in clear)."""
    data = _data(ctx)
    seconds = parse_duration(expires)
    token = run(admin.create_invite(data, uses=uses, expires_in=seconds, now=time.time()))
    emit(ctx, token, {"invite": token, "uses": uses, "expires_in": seconds})


def _access_command(name: str, action: str, helptext: str) -> click.Command:
    @click.command(name, help=helptext)
    @click.argument("peer")
    @click.pass_context
    def command(ctx: click.Context, peer: str) -> None:
        peer_id = _peer(peer)
        run(getattr(admin, action)(_data(ctx), peer_id))
        emit(ctx, f"{name}: {peer_id.text()}", {"action": name, "peer_id": peer_id.text()})

    return command


for _name, _help in (
    ("allow", "Admit PEER in every mode."),
    ("deny", "Take PEER off the allowlist and forget its invite."),
    ("ban", "Refuse PEER in every mode; live connections close at once."),
    ("unban", "Lift a ban."),
):
    admin_group.add_command(_access_command(_name, _name, _help))


@admin_group.command("list")
@click.pass_context
def list_command(ctx: click.Context) -> None:
    """Show the mode, allowlist, bans, invited peers and invites."""
    listing = run(admin.listing(_data(ctx)))
    lines = [f"mode: {listing.mode or '(never served)'}"]
    for title, peers in (
        ("allowed", listing.allowed),
        ("banned", listing.banned),
        ("known", listing.known),
    ):
        lines.append(f"{title}: {len(peers)}")
        lines.extend(f"  {peer}" for peer in peers)
    lines.append(f"invites: {len(listing.invites)}")
    lines.extend(
        f"  {i['id']} uses_left={i['uses_left']} expires_at={i['expires_at']}"
        for i in listing.invites
    )
    emit(ctx, "\n".join(lines), listing.to_dict())
