"""The Node facade: one identity, one store, one transport, discovery, mailboxes, delivery.

``async with Node.open(home, identity, config) as node:`` starts everything inside one
:class:`asyncio.TaskGroup` and stops it all on exit. The node owns the lifecycle, discovery,
records, invites, events and the user actions; how messages go out and come in (outbox,
sessions, receive order, receipts) is :mod:`node.delivery`, and how a peer is reached
(connection, dial, mailbox) is :mod:`node.reach`.

Events (for ``peerline events`` and ``--json run``) go to bounded subscriber queues: a
subscriber more than :data:`EVENT_QUEUE` events behind is dropped (its queue gets ``None``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dht.node import DhtConfig, DhtNode
from dht.values import PeerRecordValidator
from node import prekeys, records, wire
from node.channel import CloseCode
from node.config import TransportConfig
from node.connection import Connection
from node.contacts import Contacts
from node.crypto import Rng, random_bytes
from node.delivery import Delivery
from node.errors import LocalProtocolError, PeerlineError
from node.history import History
from node.home import DB_FILE
from node.identity import Identity, PeerId
from node.invite import format_invite, make_invite
from node.lookup import AddressLookup, DhtLookup
from node.mdns import MdnsDiscovery
from node.messaging import DEFAULT_LIFETIME, Presence, ReceiptKind, RetryPolicy, Typing
from node.reach import NETWORK_TIMEOUT, Mailboxes, Reach
from node.records import PeerRecord
from node.session_store import SessionStore
from node.store import Store
from node.transport import Transport

__all__ = ["EVENT_QUEUE", "MailboxClient", "MailboxFactory", "Node", "NodeConfig"]

log = logging.getLogger(__name__)

EVENT_QUEUE = 1000
_RECORD_TTL = 3600


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """What ``peerline run`` configures (flags over ``config.toml``)."""

    listen: tuple[str, int] = ("127.0.0.1", 0)
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    dht: bool = False
    dht_listen: tuple[str, int] | None = None
    bootstrap: tuple[tuple[str, int], ...] = ()
    rendezvous: tuple[str, ...] = ()
    message_lifetime: float = DEFAULT_LIFETIME
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    gap_timeout: float = 60.0


class _Server(Protocol):
    def text(self) -> str: ...


class MailboxClient(Mailboxes, Protocol):
    """What the node needs from a rendezvous client (``rendezvous.client.RendezvousClient``
    fits). The node package may not import ``rendezvous`` (DESIGN section 2), so the caller
    passes a :data:`MailboxFactory` in. Deposits and address lookups are
    :class:`~node.reach.Mailboxes`."""

    @property
    def server(self) -> _Server: ...

    @property
    def mailbox(self) -> bytes: ...

    async def run(
        self,
        record: Callable[[], PeerRecord],
        store: Callable[[bytes, bytes], Awaitable[None]],
    ) -> None: ...

    async def publish(
        self, kind: str, entry_id: bytes, name: str, description: str = "", *, listed: bool
    ) -> float | None: ...

    async def search(self, query: str, limit: int = 20) -> Sequence[_DirectoryItem]: ...


class _DirectoryItem(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def entry_id(self) -> bytes: ...

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...


MailboxFactory = Callable[[Transport, str], MailboxClient]
"""``factory(transport, address_text)``: a client for one rendezvous server."""


class Node:
    """A running node. Create with :meth:`open`; see the module doc."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        config: NodeConfig,
        name: str,
        *,
        mailboxes: MailboxFactory | None = None,
        clock: Callable[[], float] = time.time,
        rng: Rng = random_bytes,
    ) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        self.name = name
        self.store = store
        self.config = config
        self.clock = clock
        self.rng = rng
        self.contacts = Contacts(store, self.peer_id)
        self.history = History(store, self.peer_id)
        self.sessions = SessionStore(store)
        self.transport = Transport(identity, TransportConfig(dial_attempts=1), rng=rng)
        if config.rendezvous and mailboxes is None:
            raise LocalProtocolError("rendezvous servers need a mailbox factory")
        self.clients = [mailboxes(self.transport, text) for text in config.rendezvous if mailboxes]
        self.mdns: MdnsDiscovery | None = None
        self.dht: DhtNode | None = None
        self.reach = Reach(
            self.peer_id,
            self.transport,
            self.clients,
            self.contacts,
            lookups=self._lookups,
            retry_after=config.retry.ack_timeout,
            lifetime=config.message_lifetime,
            clock=clock,
            rng=rng,
        )
        self.delivery = Delivery(
            identity,
            store,
            self.transport,
            self.reach,
            contacts=self.contacts,
            history=self.history,
            sessions=self.sessions,
            retry=config.retry,
            lifetime=config.message_lifetime,
            gap_timeout=config.gap_timeout,
            emit=self.emit,
            clock=clock,
            rng=rng,
        )
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._group: asyncio.TaskGroup | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        home: Path,
        identity: Identity,
        config: NodeConfig,
        name: str,
        mailboxes: MailboxFactory | None = None,
    ) -> AsyncIterator[Node]:
        async with Store.open(home / DB_FILE) as store, asyncio.TaskGroup() as group:
            node = cls(identity, store, config, name, mailboxes=mailboxes)
            node._group = group
            try:
                await node._start()
                yield node
            finally:
                await node._stop()

    async def _start(self) -> None:
        await self.delivery.load()
        await self.refresh_blocked()
        self.transport.set_handler(self.delivery.on_frame)
        self.transport.on_connection(self._on_connection)
        await self.transport.start(*self.config.listen)
        if self.config.mdns:
            interfaces = list(self.config.mdns_interfaces) or None
            self.mdns = MdnsDiscovery(interfaces=interfaces, on_record=self._on_record)
            await self.mdns.start()
            self._spawn(self.mdns.advertise(self.record(), self.transport.address[1]))
        if self.config.dht:
            await self._start_dht()
        for client in self.clients:
            self._spawn(client.run(self.record, self.delivery.on_envelope))
        self._spawn(self.delivery.outbox_loop())
        self._spawn(self.delivery.receipt_loop())
        self._spawn(self.delivery.housekeeping_loop())

    async def _start_dht(self) -> None:
        host, port = self.config.dht_listen or (self.config.listen[0], 0)
        config = DhtConfig(host=host, port=port, bootstrap=self.config.bootstrap)
        self.dht = DhtNode(config, PeerRecordValidator())
        await self.dht.start()
        self._spawn(self._dht_publish_loop(DhtLookup(self.dht)))

    async def _dht_publish_loop(self, lookup: DhtLookup) -> None:
        """Keep our record in the DHT: now, then at half its lifetime (and retry on failure)."""
        while True:
            try:
                stored = await lookup.publish(self.record())
            except PeerlineError as exc:
                log.info("DHT publish failed: %s", exc.code)
                stored = 0
            await asyncio.sleep(_RECORD_TTL / 2 if stored > 1 else 5.0)

    def _spawn(self, coro: Any) -> None:
        assert self._group is not None
        self._tasks.append(self._group.create_task(self._guard(coro)))

    async def _guard(self, coro: Any) -> None:
        """Background work never takes the node down: failures are logged, not raised."""
        try:
            await coro
        except PeerlineError as exc:
            log.warning("background task ended: %s", exc.code)
        except OSError as exc:
            log.warning("background task ended: %s", exc)

    async def _stop(self) -> None:
        await self.delivery.flush()
        senders = self.delivery.cancel_senders()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *senders, return_exceptions=True)
        if self.mdns is not None:
            await self.mdns.aclose()
        if self.dht is not None:
            await self.dht.aclose()
        await self.transport.aclose()
        for queue in self._subscribers:
            _offer(queue, None)

    # ------------------------------------------------------------------ events

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(EVENT_QUEUE + 1)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)

    def emit(self, event: str, **fields: Any) -> None:
        item = {"event": event, "at": self.clock(), **fields}
        for queue in list(self._subscribers):
            if queue.qsize() >= EVENT_QUEUE:
                self._subscribers.discard(queue)
                _offer(queue, None)
            else:
                queue.put_nowait(item)

    # ------------------------------------------------------------------ identity & records

    def record(self) -> PeerRecord:
        """Our signed record: address, mailbox servers and the hash of our prekey bundle."""
        now = self.clock()
        bundle = wire.decode_message(
            prekeys.PrekeyBundle, self.delivery.prekey_bundle(max_one_time=0)
        )
        return records.sign_record(
            self.identity,
            seq=int(now * 1000),
            expires=int(now) + _RECORD_TTL,
            addresses=self.advertised(),
            mailboxes=[c.server.text() for c in self.clients],
            prekeys_hash=bundle.digest(),
        )

    def advertised(self) -> list[tuple[str, int]]:
        """Where peers can reach us: the bound address, or when bound to a wildcard, the
        ``--mdns-interface`` addresses, else this host's addresses (loopback last)."""
        host, port = self.transport.address
        if not ipaddress.ip_address(host).is_unspecified:
            return [(host, port)]
        hosts = list(self.config.mdns_interfaces)
        if not hosts:
            with contextlib.suppress(OSError):
                hosts = socket.gethostbyname_ex(socket.gethostname())[2]
        hosts = [h for h in hosts if not ipaddress.ip_address(h).is_loopback] + ["127.0.0.1"]
        return [(h, port) for h in dict.fromkeys(hosts)][: records.MAX_ADDRESSES]

    def invite(self) -> str:
        return format_invite(
            make_invite(
                self.identity,
                self.name,
                [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.advertised()],
                [c.server.text() for c in self.clients],
                self.delivery.prekey_bundle(max_one_time=0),
            )
        )

    def _on_record(self, record: PeerRecord) -> None:
        if record.peer_id != self.peer_id:
            self.emit("discovered", peer=record.peer_id.text(), via="mdns")
            self.delivery.peer_reachable(record.peer_id)

    async def refresh_blocked(self) -> None:
        """Reload the blocked set (checked synchronously before any work for a peer)."""
        self.delivery.blocked = {c.peer_id for c in await self.contacts.list() if c.blocked}
        for peer in self.delivery.blocked:
            conn = self.transport.connection(peer)
            if conn is not None:
                conn.abort(CloseCode.NORMAL, "closed")

    def _on_connection(self, conn: Connection) -> None:
        peer = conn.peer_id
        assert peer is not None
        if peer in self.delivery.blocked:
            conn.abort(CloseCode.NORMAL, "closed")
            return
        self.emit("connected", peer=peer.text())
        self._spawn(conn.send(Presence("online"), timeout=NETWORK_TIMEOUT))
        self.delivery.peer_reachable(peer)

    def _lookups(self) -> list[AddressLookup]:
        """The discovery sources running now (mDNS and the DHT start after construction)."""
        sources: list[AddressLookup] = [] if self.mdns is None else [self.mdns]
        if self.dht is not None:
            sources.append(DhtLookup(self.dht))
        return sources

    # ------------------------------------------------------------------ user actions

    async def send(self, peer: PeerId, text: str, *, ttl: float | None = None) -> bytes:
        """Queue a message (committed before this returns); returns its id."""
        return await self.delivery.send(peer, text, ttl=ttl)

    def invalidate(self) -> None:
        """Forget cached acceptance decisions and counters (the control API changed data)."""
        self.delivery.invalidate()

    async def mark_read(self, peer: PeerId) -> int:
        """Mark the conversation read; read receipts go out unless turned off for ``peer``."""
        info = await self.history.conversation(peer)
        ids = [] if info is None else await self.history.unread(peer)
        if info is not None and ids:
            await self.store.write(self.history.read_ops(ids, info))
            contact = await self.contacts.get(peer)
            if peer != self.peer_id and (contact is None or contact.read_receipts):
                for message_id in ids:
                    self.delivery.queue_receipt(peer, ReceiptKind.READ, message_id)
        return len(ids)

    async def typing(self, peer: PeerId, active: bool) -> bool:
        """Tell ``peer`` we are typing (live connections only); returns whether it went out."""
        conn = self.transport.connection(peer)
        if conn is None:
            return False
        await conn.send(Typing(active), timeout=NETWORK_TIMEOUT)
        return True

    async def publish_visibility(self) -> int:
        """List (open) or unlist (closed) us in the directory of our rendezvous servers."""
        listed = await self.contacts.visibility() == "open"
        done = 0
        for client in self.clients:
            with contextlib.suppress(PeerlineError, OSError, TimeoutError):
                async with asyncio.timeout(NETWORK_TIMEOUT):
                    await client.publish("account", self.peer_id.key, self.name, listed=listed)
                done += 1
        return done

    async def directory_search(self, text: str, limit: int) -> list[dict[str, str]]:
        found: dict[tuple[str, bytes], dict[str, str]] = {}
        for client in self.clients:
            async with asyncio.timeout(NETWORK_TIMEOUT):
                items = await client.search(text, limit)
            for item in items:
                entry_id = PeerId(item.entry_id).text() if item.kind == "account" else ""
                found[(item.kind, item.entry_id)] = {
                    "kind": item.kind,
                    "id": entry_id or item.entry_id.hex(),
                    "name": item.name,
                    "description": item.description,
                    "server": client.server.text(),
                }
        return list(found.values())[:limit]

    async def status(self) -> dict[str, Any]:
        host, port = self.transport.address
        return {
            "peer_id": self.peer_id.text(),
            "listen": f"{host}:{port}",
            "connected": [c.peer_id.text() for c in self.transport.connections if c.peer_id],
            "rendezvous": [
                {"server": c.server.text(), "mailbox": c.mailbox.hex()} for c in self.clients
            ],
            "mdns": {"on": self.mdns is not None, "peers": self._mdns_peers()},
            "dht": self._dht_status(),
            "queued": len(self.delivery),
        }

    def _dht_status(self) -> dict[str, Any]:
        if self.dht is None:
            return {"on": False}
        host, port = self.dht.address
        table = sum(len(bucket) for bucket in self.dht.protocol.router.buckets)
        return {"on": True, "listen": f"{host}:{port}", "routing_table": table}

    def _mdns_peers(self) -> list[str]:
        if self.mdns is None:
            return []
        return [r.peer_id.text() for r in self.mdns.peers() if r.peer_id != self.peer_id]


def _offer(queue: asyncio.Queue[dict[str, Any] | None], item: dict[str, Any] | None) -> None:
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(item)
