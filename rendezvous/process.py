"""The rendezvous server process: identity and ADDRESS files, the QUIC listener, the optional
DHT and metrics endpoints around one :class:`~rendezvous.server.RendezvousService`.

:func:`serve` owns everything it opens (lock, database, transport, DHT, metrics) in one exit
stack, so a failed start or a ``stop`` leaves no socket, task or lock behind. The request
handling itself lives in :mod:`rendezvous.server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.config import TransportConfig
from node.connection import Connection
from node.errors import ConfigError, StorageError, UsageError
from node.home import KEY_FILE, create_identity, load_identity, read_public_identity
from node.identity import Identity
from node.transport import Transport
from rendezvous import db
from rendezvous import protocol as p
from rendezvous.metrics import Metrics
from rendezvous.server import RendezvousService, ServiceConfig

__all__ = [
    "SERVER_TRANSPORT",
    "ServeOptions",
    "ensure_identity",
    "planned_address",
    "read_address",
    "serve",
]

SERVER_TRANSPORT = TransportConfig(
    max_connections=20_000,
    max_connections_per_ip=256,
    idle_timeout=60.0,
)
"""A server holds many more connections than a node; many users may share one NAT address."""


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """``peerline rendezvous serve``: where the state lives and what to listen on.

    ``advertise`` is the host put into the ADDRESS (default: the listen host, which must then
    be a concrete IP rather than ``0.0.0.0``/``::``).
    """

    directory: Path
    listen: tuple[str, int]
    service: ServiceConfig = field(default_factory=ServiceConfig)
    transport: TransportConfig = SERVER_TRANSPORT
    advertise: str | None = None
    dht_listen: tuple[str, int] | None = None
    metrics_listen: tuple[str, int] | None = None


async def ensure_identity(directory: Path) -> Identity:
    """The server's identity in ``directory``, created (unencrypted: it runs unattended) once."""
    if not (directory / KEY_FILE).exists():
        await create_identity(directory, "rendezvous", None)
    return await load_identity(directory, None)


async def planned_address(directory: Path, host: str, port: int) -> p.RendezvousAddress:
    """The ADDRESS a server in ``directory`` will have at ``host:port`` (identity created now)."""
    if port == 0 or ipaddress.ip_address(host).is_unspecified:
        raise UsageError("give the concrete IP and port nodes will dial", code="usage.invalid")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    identity = await ensure_identity(directory)
    return p.RendezvousAddress(identity.peer_id, host, port)


async def read_address(directory: Path) -> p.RendezvousAddress:
    """The ADDRESS the server in ``directory`` announced when it last started."""
    public = await read_public_identity(directory)
    if not (directory / db.DB_FILE).exists():
        raise UsageError(
            f"the server in {directory} has never been started", code="rendezvous.never_served"
        )
    async with db.open_db(directory) as store:
        text = await db.read_setting(store, "address")
    if text is None:
        raise UsageError(
            f"the server in {directory} has never been started", code="rendezvous.never_served"
        )
    address = p.RendezvousAddress.parse(text)
    if address.peer_id != public.peer_id:
        raise StorageError("the stored address names another identity", code="rendezvous.corrupt")
    return address


async def _start_dht(
    stack: contextlib.AsyncExitStack, identity: Identity, listen: tuple[str, int]
) -> str:
    """A full (serving) DHT node others bootstrap from; returns its ``host:port``.

    Imported here so a server without ``--dht-listen`` never loads the DHT stack.
    """
    from dht.node import DhtConfig, DhtNode, node_id_for  # noqa: PLC0415
    from dht.values import PeerRecordValidator  # noqa: PLC0415

    dht = DhtNode(
        DhtConfig(host=listen[0], port=listen[1]),
        PeerRecordValidator(),
        node_id=node_id_for(identity.peer_id),
    )
    await stack.enter_async_context(dht)
    host, port = dht.address
    return f"{host}:{port}"


def _attach(service: RendezvousService, conn: Connection) -> None:
    service.attach(conn)
    conn.closed.add_done_callback(lambda _: service.detach(conn))


async def serve(
    options: ServeOptions, on_ready: Callable[[dict[str, object]], None], stop: asyncio.Event
) -> None:
    """Run a server until ``stop`` is set, then close connections and the database cleanly."""
    if options.advertise is None and ipaddress.ip_address(options.listen[0]).is_unspecified:
        raise UsageError(
            "listening on all interfaces: give --advertise HOST (the address nodes dial)",
            code="usage.invalid",
        )
    options.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    identity = await ensure_identity(options.directory)
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(db.serve_lock(options.directory))
        store = await stack.enter_async_context(db.open_db(options.directory))
        service = RendezvousService(identity, store, options.service, metrics=metrics)
        await stack.enter_async_context(service.run())
        transport = Transport(identity, options.transport)
        transport.set_handler(service.handle)
        transport.on_connection(lambda conn: _attach(service, conn))
        try:
            await transport.start(*options.listen)
        except OSError as exc:
            host, port = options.listen
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                code="rendezvous.listen",
            ) from None
        stack.push_async_callback(transport.aclose)
        host, port = transport.address
        address = p.RendezvousAddress(identity.peer_id, options.advertise or host, port)
        await store.write([db.set_setting("address", address.text())])
        info: dict[str, object] = {
            "event": "ready",
            "address": address.text(),
            "peer_id": identity.peer_id.text(),
            "mode": options.service.mode.value,
        }
        if options.dht_listen is not None:
            info["dht"] = await _start_dht(stack, identity, options.dht_listen)
        if options.metrics_listen is not None:
            metrics_port = metrics.serve(*options.metrics_listen)
            stack.callback(metrics.close)
            info["metrics"] = f"{options.metrics_listen[0]}:{metrics_port}"
        service.event("ready", mode=options.service.mode.value)
        on_ready(info)
        await stop.wait()
        service.event("stopping", connections=service.connected)
