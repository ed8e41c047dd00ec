"""The Node facade: one identity, one store, one transport, discovery, mailboxes, delivery.

``async with Node.open(home, identity, config) as node:`` starts everything inside one
:class:`asyncio.TaskGroup` and stops it all on exit. The pure rules come from
:mod:`node.messaging` (outbox schedule, receive order, receipts, policy); this module only
moves bytes between them and the network and the store.

Delivery path of an outgoing message (DESIGN section 8): ``send`` commits the message and its
outbox row in one unit; the outbox machine asks for attempts; an attempt encrypts (the new
ratchet state and the ciphertext are committed in one unit *before* anything leaves), then
sends :class:`~node.messaging.Deliver` on a live connection (``sent``) or seals it into the
recipient's mailbox on a rendezvous server (``stored``). Signed receipts move it to
``delivered``/``read``.

Incoming: blocked peers are dropped before anything is decrypted; the policy decides
(refuse / request / accept); the id is de-duplicated; the ratchet decrypts; the receive order
holds out-of-order messages; one unit commits session, prekeys and rows; only then the
receipt goes out. Receipts are batched per peer (one signature for up to 256 ids).

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
from node import envelope, prekeys, records, session, wire
from node.channel import CloseCode
from node.config import TransportConfig
from node.connection import Connection
from node.contacts import Contacts
from node.crypto import Rng, random_bytes
from node.errors import LocalProtocolError, PeerlineError, UsageError
from node.history import History, Status
from node.home import DB_FILE
from node.identity import Identity, PeerId
from node.invite import format_invite, make_invite
from node.lookup import AddressLookup, DhtLookup
from node.mdns import MdnsDiscovery
from node.messaging import (
    DEFAULT_LIFETIME,
    Attempt,
    ChatText,
    Deliver,
    GetPrekeys,
    Outbox,
    OutboxEntry,
    Outcome,
    Prekeys,
    Presence,
    Receipt,
    ReceiptKind,
    ReceiveOrder,
    Refused,
    RetryPolicy,
    StateChanged,
    Typing,
    Verdict,
    check_text,
    check_ttl,
    decide,
    make_receipt,
    new_message_id,
    parse_hostport,
    verify_receipt,
)
from node.records import PeerRecord
from node.session_store import SessionStore, prekeys_op, session_op
from node.store import Store, WriteOp
from node.transport import Transport

__all__ = ["EVENT_QUEUE", "MailboxClient", "MailboxFactory", "Node", "NodeConfig"]

log = logging.getLogger(__name__)

EVENT_QUEUE = 1000
_DIAL_TIMEOUT = 3.0
_NETWORK_TIMEOUT = 5.0
_RECORD_TTL = 3600
_RECEIPT_BATCH = 256
_MAX_INFLIGHT = 1024
"""Received messages decrypted but not yet committed (then the connection waits)."""


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


@dataclass(frozen=True, slots=True)
class _Unsaved:
    """A received message decrypted and ordered, waiting for its commit."""

    ops: list[WriteOp]
    message_id: bytes
    shown: list[ChatText]
    first: bool
    verdict: Verdict


class _Server(Protocol):
    def text(self) -> str: ...


class MailboxClient(Protocol):
    """What the node needs from a rendezvous client (``rendezvous.client.RendezvousClient``
    fits). The node package may not import ``rendezvous`` (DESIGN section 2), so the caller
    passes a :data:`MailboxFactory` in."""

    @property
    def server(self) -> _Server: ...

    @property
    def mailbox(self) -> bytes: ...

    async def run(
        self,
        record: Callable[[], PeerRecord],
        store: Callable[[bytes, bytes], Awaitable[None]],
    ) -> None: ...

    async def deposit(self, envelope: bytes) -> object: ...

    async def addresses(self, peer: PeerId) -> list[tuple[str, int]]: ...

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
        self._own_text = self.peer_id.text()
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
        self._outbox = Outbox(rng, config.retry)
        self._wake = asyncio.Event()
        self._sessions: dict[PeerId, session.Session] = {}
        self._session_locks: dict[PeerId, asyncio.Lock] = {}
        self._orders: dict[PeerId, ReceiveOrder[ChatText]] = {}
        self._prekeys: prekeys.PrekeyState | None = None
        self._senders: dict[PeerId, asyncio.Task[None]] = {}
        self._attempts: dict[PeerId, list[Attempt]] = {}
        self._receipts: dict[tuple[PeerId, ReceiptKind], list[bytes]] = {}
        self._receipt_wake = asyncio.Event()
        self._dial_failed: dict[PeerId, float] = {}
        self._blocked: set[PeerId] = set()
        self._verdicts: dict[PeerId, tuple[Verdict, str]] = {}
        self._send_seq: dict[PeerId, int] = {}
        self._fresh: dict[bytes, ChatText] = {}
        self._inflight = asyncio.Semaphore(_MAX_INFLIGHT)
        self._unsaved: dict[PeerId, list[_Unsaved]] = {}
        self._committers: dict[PeerId, asyncio.Task[None]] = {}
        self._prekeys_dirty = False
        self._sent_on: dict[bytes, tuple[Connection, float]] = {}
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
        now = self.clock()
        state = await self.sessions.load_prekeys()
        if state is None:
            state = prekeys.generate(self.identity, now=now, rng=self.rng)
        state = prekeys.maintain(state, self.identity, now=now, rng=self.rng)
        await self.store.write([prekeys_op(state, now)])
        self._prekeys = state
        for entry in await self.history.outbox_entries():
            self._outbox.add(entry)
        await self.refresh_blocked()
        self.transport.set_handler(self._on_frame)
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
            self._spawn(client.run(self.record, self._store_envelope))
        self._spawn(self._outbox_loop())
        self._spawn(self._receipt_loop())
        self._spawn(self._housekeeping_loop())

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
        await asyncio.gather(*self._committers.values(), return_exceptions=True)
        for task in [*self._tasks, *self._senders.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._senders.values(), return_exceptions=True)
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

    def prekey_bundle(self, *, max_one_time: int = prekeys.ONE_TIME_POOL) -> bytes:
        assert self._prekeys is not None
        bundle = prekeys.make_bundle(
            self._prekeys, self.identity, now=self.clock(), max_one_time=max_one_time
        )
        return bundle.to_bytes()

    def record(self) -> PeerRecord:
        """Our signed record: address, mailbox servers and the hash of our prekey bundle."""
        now = self.clock()
        bundle = wire.decode_message(prekeys.PrekeyBundle, self.prekey_bundle(max_one_time=0))
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
                self.prekey_bundle(max_one_time=0),
            )
        )

    def _on_record(self, record: PeerRecord) -> None:
        if record.peer_id != self.peer_id:
            self._dial_failed.pop(record.peer_id, None)
            self.emit("discovered", peer=record.peer_id.text(), via="mdns")
            self._outbox.peer_reachable(record.peer_id.key, self.clock())
            self._wake.set()

    async def refresh_blocked(self) -> None:
        """Reload the blocked set (checked synchronously before any work for a peer)."""
        self._blocked = {c.peer_id for c in await self.contacts.list() if c.blocked}
        for peer in self._blocked:
            conn = self.transport.connection(peer)
            if conn is not None:
                conn.abort(CloseCode.NORMAL, "closed")

    def _on_connection(self, conn: Connection) -> None:
        peer = conn.peer_id
        assert peer is not None
        if peer in self._blocked:
            conn.abort(CloseCode.NORMAL, "closed")
            return
        self._dial_failed.pop(peer, None)
        self.emit("connected", peer=peer.text())
        self._spawn(conn.send(Presence("online"), timeout=_NETWORK_TIMEOUT))
        self._outbox.peer_reachable(peer.key, self.clock())
        self._wake.set()

    # ------------------------------------------------------------------ sending

    async def send(self, peer: PeerId, text: str, *, ttl: float | None = None) -> bytes:
        """Queue a message (committed before this returns); returns its id."""
        check_text(text)
        check_ttl(ttl)
        if peer in self._blocked:
            raise UsageError("recipient is blocked (unblock first)", code="contact.blocked")
        message_id = new_message_id(self.rng)
        now = self.clock()
        seq = await self._next_seq(peer)
        lifetime = self.config.message_lifetime
        ops = self.history.queue_ops(
            peer, message_id, text, now=now, ttl=ttl, lifetime=lifetime, seq=seq
        )
        try:
            await self.store.write(ops)
        except PeerlineError:
            self._send_seq.pop(peer, None)  # reload the counter from the store next time
            raise
        self._verdicts.pop(peer, None)  # writing to a peer accepts its chat
        if peer != self.peer_id:
            self._fresh[message_id] = ChatText(message_id, seq, now, text, ttl)
            self._outbox.add(OutboxEntry(message_id, peer.key, now + lifetime, now))
            self._wake.set()
        return message_id

    async def _next_seq(self, peer: PeerId) -> int:
        """The next sender sequence number of the conversation (the node is the only writer
        while it runs, so the counter lives in memory once loaded)."""
        if peer not in self._send_seq:
            info = await self.history.conversation(peer)
            self._send_seq.setdefault(peer, 0 if info is None else info.send_seq)
        self._send_seq[peer] += 1
        return self._send_seq[peer]

    def invalidate(self) -> None:
        """Forget cached acceptance decisions and counters (the control API changed data)."""
        self._verdicts.clear()
        self._send_seq.clear()

    async def _outbox_loop(self) -> None:
        while True:
            self._wake.clear()  # before the work: a wake-up during it is not lost
            self._outbox.handle_timer(self.clock())
            await self._outbox_events()
            timer = self._outbox.get_timer()
            delay = 1.0 if timer is None else min(1.0, max(0.0, timer - self.clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _outbox_events(self) -> None:
        ops: list[WriteOp] = []
        changes: list[StateChanged] = []
        while (event := self._outbox.next_event()) is not None:
            if isinstance(event, Attempt):
                self._attempts.setdefault(PeerId(event.recipient), []).append(event)
            elif isinstance(event, StateChanged):
                if event.state in ("delivered", "read", "failed"):
                    self._sent_on.pop(event.message_id, None)
                    self._fresh.pop(event.message_id, None)
                ops += self.history.state_ops(event.message_id, event.state, event.reason)
                changes.append(event)
        if ops:
            await self.store.write(ops)
        for change in changes:
            extra = {} if change.reason is None else {"reason": change.reason}
            self.emit("state", id=change.message_id.hex(), state=change.state, **extra)
        for peer in list(self._attempts):
            if peer not in self._senders:
                task = asyncio.get_running_loop().create_task(self._deliver(peer))
                self._senders[peer] = task
                task.add_done_callback(self._sender_done)

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        for peer, sender in list(self._senders.items()):
            if sender is task:
                del self._senders[peer]
        if self._attempts:
            self._wake.set()

    async def _deliver(self, peer: PeerId) -> None:
        """Work through the attempts queued for ``peer`` (one task per peer at a time)."""
        while attempts := self._attempts.pop(peer, []):
            ids = [a.message_id for a in attempts]
            try:
                await self._deliver_batch(peer, ids)
            except (PeerlineError, OSError) as exc:
                log.info("delivery to %s failed: %s", peer.short(), exc)
                for message_id in ids:
                    if (entry := self._outbox.entry(message_id)) and entry.state == "queued":
                        self._outbox.report(message_id, "unreachable", self.clock())
            self._wake.set()

    async def _deliver_batch(self, peer: PeerId, ids: list[bytes]) -> None:
        self._drop_silent_connection(peer, ids)
        conn = await self._connect(peer)
        ciphertexts = await self._ciphertexts(peer, ids, conn)
        now = self.clock()
        if conn is not None:
            for message_id, data in ciphertexts.items():
                await conn.send(Deliver(message_id, data), timeout=_NETWORK_TIMEOUT)
                self._sent_on[message_id] = (conn, now)
                self._outbox.report(message_id, "sent", now)
            return
        for message_id, data in ciphertexts.items():
            entry = self._outbox.entry(message_id)
            if entry is None:
                continue
            frame = wire.encode_frame(Deliver(message_id, data))
            sealed = envelope.seal(
                peer, self.peer_id, frame, expires=int(entry.expires_at), rng=self.rng
            )
            stored = await self._deposit(sealed)
            self._outbox.report(message_id, "stored" if stored else "unreachable", now)

    def _drop_silent_connection(self, peer: PeerId, ids: list[bytes]) -> None:
        """A message already ``sent`` on the live connection got no receipt within the ack
        timeout: the peer is most likely gone (a crash sends no close). Drop the connection
        now rather than waiting for the QUIC idle timeout, so this attempt dials afresh."""
        conn = self.transport.connection(peer)
        if conn is None:
            return
        limit = self.clock() - self.config.retry.ack_timeout
        for message_id in ids:
            sent = self._sent_on.pop(message_id, None)
            if sent is not None and sent[0] is conn and sent[1] <= limit:
                conn.abort(CloseCode.TIMEOUT, "timeout: no receipts from the peer")
                return

    async def _deposit(self, sealed: bytes) -> bool:
        for client in self.clients:
            try:
                async with asyncio.timeout(_NETWORK_TIMEOUT):
                    await client.deposit(sealed)
                return True
            except (PeerlineError, OSError, TimeoutError) as exc:
                log.info("deposit failed: %s", exc)
        return False

    async def _connect(self, peer: PeerId) -> Connection | None:
        """The live connection to ``peer``, dialing its known addresses; ``None`` if offline."""
        conn = self.transport.connection(peer)
        if conn is not None:
            return conn
        failed = self._dial_failed.get(peer)
        if failed is not None and self.clock() - failed < self.config.retry.ack_timeout:
            return None
        addresses = await self._addresses(peer)
        try:
            async with asyncio.timeout(_DIAL_TIMEOUT):
                return await self.transport.dial(peer, addresses)
        except (PeerlineError, OSError, TimeoutError):
            self._dial_failed[peer] = self.clock()
            return None

    async def _addresses(self, peer: PeerId) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        contact = await self.contacts.get(peer)
        if contact is not None:
            found += [parse_hostport(text) for text in contact.addresses]
        sources: list[AddressLookup] = [] if self.mdns is None else [self.mdns]
        if self.dht is not None:
            sources.append(DhtLookup(self.dht))
        for source in sources:
            with contextlib.suppress(PeerlineError, OSError, TimeoutError):
                async with asyncio.timeout(_NETWORK_TIMEOUT):
                    for record in await source.lookup(peer):
                        found += record.addresses
        for client in self.clients:
            with contextlib.suppress(PeerlineError, OSError, TimeoutError):
                async with asyncio.timeout(_NETWORK_TIMEOUT):
                    found += await client.addresses(peer)
        return list(dict.fromkeys(found))

    async def _session(self, peer: PeerId) -> session.Session | None:
        cached = self._sessions.get(peer)
        if cached is not None:
            return cached
        lock = self._session_locks.setdefault(peer, asyncio.Lock())
        async with lock:
            if peer not in self._sessions:
                loaded = await self.sessions.load_session(peer)
                if loaded is not None:
                    self._sessions[peer] = loaded
        return self._sessions.get(peer)

    async def _start_session(self, peer: PeerId, conn: Connection | None) -> session.Session:
        """A new session from the peer's bundle (live connection first, else the invite's)."""
        data: bytes | None = None
        if conn is not None:
            reply = await conn.request(GetPrekeys(), timeout=_NETWORK_TIMEOUT)
            data = reply.bundle if isinstance(reply, Prekeys) else None
        if data is None:
            data = await self.contacts.invite_prekeys(peer)
        if data is None:
            raise UsageError(f"no prekeys for {peer.short()} yet", code="session.no_prekeys")
        bundle = prekeys.verify_bundle(data, now=self.clock(), expected=peer)
        one_time = bundle.one_time[0].id if bundle.one_time else None
        return session.start(self.identity, bundle, rng=self.rng, one_time_id=one_time)

    async def _ciphertexts(
        self, peer: PeerId, ids: list[bytes], conn: Connection | None
    ) -> dict[bytes, bytes]:
        """Ciphertext per id: stored ones reused, the rest encrypted and committed first."""
        fresh = {i: chat for i in ids if (chat := self._fresh.pop(i, None)) is not None}
        older = [i for i in ids if i not in fresh]
        stored = await self.history.ciphertexts(older) if older else {}
        missing = [i for i in ids if i not in stored]
        if not missing:
            return stored
        texts = fresh
        if len(texts) < len(missing):
            texts.update(await self.history.chat_texts([i for i in missing if i not in fresh]))
        current = await self._session(peer)
        if current is None:
            current = await self._start_session(peer, conn)
        ops: list[WriteOp] = []
        for message_id in missing:
            chat = texts.get(message_id)
            if chat is None:
                continue
            current, data = session.encrypt(current, wire.encode_frame(chat))
            stored[message_id] = data
            ops.append(self.history.ciphertext_op(message_id, data))
        self._sessions[peer] = current
        ops.append(session_op(current, self.clock()))
        await self.store.write(ops)
        return stored

    # ------------------------------------------------------------------ user actions

    async def mark_read(self, peer: PeerId) -> int:
        """Mark the conversation read; read receipts go out unless turned off for ``peer``."""
        info = await self.history.conversation(peer)
        ids = [] if info is None else await self.history.unread(peer)
        if info is not None and ids:
            await self.store.write(self.history.read_ops(ids, info))
            contact = await self.contacts.get(peer)
            if peer != self.peer_id and (contact is None or contact.read_receipts):
                for message_id in ids:
                    self._queue_receipt(peer, ReceiptKind.READ, message_id)
        return len(ids)

    async def typing(self, peer: PeerId, active: bool) -> bool:
        """Tell ``peer`` we are typing (live connections only); returns whether it went out."""
        conn = self.transport.connection(peer)
        if conn is None:
            return False
        await conn.send(Typing(active), timeout=_NETWORK_TIMEOUT)
        return True

    async def publish_visibility(self) -> int:
        """List (open) or unlist (closed) us in the directory of our rendezvous servers."""
        listed = await self.contacts.visibility() == "open"
        done = 0
        for client in self.clients:
            with contextlib.suppress(PeerlineError, OSError, TimeoutError):
                async with asyncio.timeout(_NETWORK_TIMEOUT):
                    await client.publish("account", self.peer_id.key, self.name, listed=listed)
                done += 1
        return done

    async def directory_search(self, text: str, limit: int) -> list[dict[str, str]]:
        found: dict[tuple[str, bytes], dict[str, str]] = {}
        for client in self.clients:
            async with asyncio.timeout(_NETWORK_TIMEOUT):
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
            "queued": len(self._outbox),
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

    # ------------------------------------------------------------------ receiving

    async def _on_frame(self, conn: Connection, message: wire.Message) -> wire.Message | None:
        peer = conn.peer_id
        assert peer is not None
        if peer in self._blocked:
            return None
        if isinstance(message, Deliver):
            await self._receive(peer, message)
        elif isinstance(message, Receipt):
            await self._on_receipt(peer, message)
        elif isinstance(message, Refused):
            self._on_refused(peer, message)
        elif isinstance(message, GetPrekeys):
            return Prekeys(self.prekey_bundle())
        elif isinstance(message, Typing):
            self.emit("typing", peer=peer.text(), active=message.active)
        elif isinstance(message, Presence):
            self.emit("presence", peer=peer.text(), status=message.status)
        return None

    async def _store_envelope(self, envelope_id: bytes, data: bytes) -> None:
        """A mailbox envelope: open it and handle the frame inside like a live one."""
        try:
            opened = envelope.open_envelope(self.identity, data)
            frame = wire.decode_frame(opened.payload[wire.LENGTH_PREFIX.size :])
        except PeerlineError as exc:
            log.info("dropped an envelope: %s", exc.code)
            return
        if isinstance(frame, Deliver):
            await self._receive(opened.sender, frame)
        elif isinstance(frame, Receipt):
            await self._on_receipt(opened.sender, frame)
        elif isinstance(frame, Refused):
            self._on_refused(opened.sender, frame)

    async def _verdict(self, peer: PeerId) -> tuple[Verdict, str]:
        """The acceptance decision and conversation status, cached until the data changes."""
        cached = self._verdicts.get(peer)
        if cached is not None:
            return cached
        contact = await self.contacts.get(peer)
        if contact is not None and contact.blocked:
            return Verdict.DROP, "none"
        info = await self.history.conversation(peer)
        status = "none" if info is None else info.status
        policy = await self.contacts.policy()
        verdict = decide(policy, blocked=False, is_contact=contact is not None, status=status)
        self._verdicts[peer] = (verdict, status)
        return verdict, status

    async def _receive(self, peer: PeerId, deliver: Deliver) -> None:
        """Decide, decrypt and order at once; the commit runs behind (bounded), in order.

        A duplicate needs no store read on this path: its ratchet refuses it as a replay,
        and only then is the id looked up, to acknowledge it again.
        """
        verdict, status = await self._verdict(peer)
        if verdict is Verdict.DROP:
            return
        if verdict is Verdict.REFUSE:
            await self._send_frame(peer, Refused([deliver.message_id], "policy.refused"))
            return
        chat = await self._decrypt(peer, deliver)
        if chat is None:
            if await self.history.known_ids([deliver.message_id]):
                self._queue_receipt(peer, ReceiptKind.DELIVERED, deliver.message_id)
            return
        order = await self._order(peer)
        now = self.clock()
        _, released = order.receive(chat.seq, chat, now)
        conv_status: Status = "request" if verdict is Verdict.REQUEST else "accepted"
        self._verdicts[peer] = (verdict, conv_status)
        ops = [self.history.ensure_conversation_op(peer, conv_status, now)]
        if all(c.message_id != chat.message_id for _, c in released):
            ops.append(self.history.hold_op(peer, chat, now))
        for _, item in released:
            ops += self.history.release_ops(peer, item, now)
        await self._inflight.acquire()
        shown = [c for _, c in released]
        batch = self._unsaved.setdefault(peer, [])
        batch.append(_Unsaved(ops, chat.message_id, shown, status == "none", verdict))
        if peer not in self._committers:
            task = asyncio.get_running_loop().create_task(self._commit(peer))
            self._committers[peer] = task
            task.add_done_callback(lambda _: self._committers.pop(peer, None))

    async def _commit(self, peer: PeerId) -> None:
        """Commit what was received from ``peer`` in batches: one unit carries the rows of
        every message so far and the latest ratchet state (serialized once per batch, not
        per message); receipts go out and events are shown only once it is durable."""
        while batch := self._unsaved.pop(peer, []):
            now = self.clock()
            ops = [op for item in batch for op in item.ops]
            ops.append(session_op(self._sessions[peer], now))
            if self._prekeys_dirty:
                assert self._prekeys is not None
                self._prekeys_dirty = False
                ops.append(prekeys_op(self._prekeys, now))
            try:
                await self.store.write(ops)
            except PeerlineError as exc:
                log.warning("could not store messages: %s", exc.code)
                self._sessions.pop(peer, None)  # reload what the store really holds
                self._orders.pop(peer, None)
                continue
            finally:
                for _ in batch:
                    self._inflight.release()
            for item in batch:
                self._queue_receipt(peer, ReceiptKind.DELIVERED, item.message_id)
                self._announce(peer, item.shown, item.first, item.verdict)

    async def _decrypt(self, peer: PeerId, deliver: Deliver) -> ChatText | None:
        assert self._prekeys is not None
        current = await self._session(peer)
        try:
            received = session.receive(
                self.identity,
                self._prekeys,
                current,
                deliver.ciphertext,
                sender=peer,
                now=self.clock(),
                rng=self.rng,
            )
            chat = wire.decode_frame(received.plaintext[wire.LENGTH_PREFIX.size :])
        except PeerlineError as exc:
            log.info("dropped a message from %s: %s", peer.short(), exc.code)
            return None
        if not isinstance(chat, ChatText) or chat.message_id != deliver.message_id:
            return None
        self._sessions[peer] = received.session
        if received.prekeys is not self._prekeys:
            self._prekeys = received.prekeys
            self._prekeys_dirty = True
        return chat

    async def _order(self, peer: PeerId) -> ReceiveOrder[ChatText]:
        order = self._orders.get(peer)
        if order is None:
            info = await self.history.conversation(peer)
            start = info.recv_seq + 1 if info is not None and info.recv_seq > 0 else None
            order = ReceiveOrder(start, self.config.gap_timeout)
            for chat in await self.history.held(peer):
                order.held[chat.seq] = (self.clock(), chat)
            self._orders.setdefault(peer, order)
        return self._orders[peer]

    def _announce(
        self, peer: PeerId, released: list[ChatText], first: bool, verdict: Verdict
    ) -> None:
        sender = peer.text()
        if verdict is Verdict.REQUEST:
            if first and released:
                chat = released[0]
                self.emit("request", peer=sender, id=chat.message_id.hex(), text=chat.text)
            return
        for chat in released:
            self.emit(
                "message",
                id=chat.message_id.hex(),
                peer=sender,
                **{"from": sender, "to": self._own_text},
                text=chat.text,
                sent_at=chat.sent_at,
                state="received",
            )

    async def _on_receipt(self, peer: PeerId, receipt: Receipt) -> None:
        """Signed receipts move messages on; a read receipt for a message that already left
        the outbox (delivered) updates its row directly."""
        try:
            kind = verify_receipt(receipt, signer=peer, sender=self.peer_id)
        except PeerlineError as exc:
            log.info("dropped a receipt from %s: %s", peer.short(), exc.code)
            return
        outcome: Outcome = "delivered" if kind is ReceiptKind.DELIVERED else "read"
        now = self.clock()
        late: list[bytes] = []
        for message_id in receipt.body.message_ids:
            self._sent_on.pop(message_id, None)
            if self._outbox.entry(message_id) is not None:
                self._outbox.report(message_id, outcome, now)
            elif outcome == "read":
                late.append(message_id)
        self._wake.set()
        if late:
            await self.store.write([op for i in late for op in self.history.state_ops(i, "read")])
            for message_id in late:
                self.emit("state", id=message_id.hex(), state="read")

    def _on_refused(self, peer: PeerId, refused: Refused) -> None:
        for message_id in refused.message_ids:
            entry = self._outbox.entry(message_id)
            if entry is not None and entry.recipient == peer.key:
                self._outbox.report(message_id, "refused", self.clock())
        self._wake.set()

    # ------------------------------------------------------------------ receipts & frames

    def _queue_receipt(self, peer: PeerId, kind: ReceiptKind, message_id: bytes) -> None:
        self._receipts.setdefault((peer, kind), []).append(message_id)
        self._receipt_wake.set()

    async def _receipt_loop(self) -> None:
        while True:
            await self._receipt_wake.wait()
            self._receipt_wake.clear()
            pending, self._receipts = self._receipts, {}
            for (peer, kind), ids in pending.items():
                for start in range(0, len(ids), _RECEIPT_BATCH):
                    batch = ids[start : start + _RECEIPT_BATCH]
                    receipt = make_receipt(self.identity, kind, peer, batch, self.clock())
                    await self._send_frame(peer, receipt)

    async def _send_frame(self, peer: PeerId, frame: wire.Message) -> None:
        """Best effort: the live (or a fresh) connection, else the peer's mailbox."""
        conn = await self._connect(peer)
        if conn is not None:
            with contextlib.suppress(PeerlineError, OSError):
                await conn.send(frame, timeout=_NETWORK_TIMEOUT)
                return
        expires = int(self.clock() + self.config.message_lifetime)
        sealed = envelope.seal(
            peer, self.peer_id, wire.encode_frame(frame), expires=expires, rng=self.rng
        )
        await self._deposit(sealed)

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            ops: list[WriteOp] = []
            for peer, order in self._orders.items():
                for _, chat in order.handle_timer(now):
                    ops += self.history.release_ops(peer, chat, now)
            ops += self.history.expire_ops(now)
            await self.store.write(ops)


def _offer(queue: asyncio.Queue[dict[str, Any] | None], item: dict[str, Any] | None) -> None:
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(item)
