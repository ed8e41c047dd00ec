"""The rendezvous server: presence, mailbox, directory and access control over authenticated links.

:class:`RendezvousService` is the request handler, independent of QUIC: the transport gives it
authenticated connections (:meth:`attach`) and it answers each request (:meth:`handle`). The
rules are the pure machines of :mod:`node.mailbox` and :mod:`node.registry`; this module adds
the database, the clock, wake-ups, access reloads and metrics; :mod:`rendezvous.process` runs
it as a server process. Contracts:

- The requester is always the connection's authenticated PeerId; mailbox requests naming
  another mailbox are refused (``mailbox.not_owner``), so only the owner lists, fetches or acks.
- A deposit is answered with a signed :class:`~rendezvous.protocol.Receipt` (one per
  request, listing every stored envelope) only after the rows are committed; a duplicate
  waits for the first write's outcome, then is listed too.
- Envelopes are deleted only when their owner acks them (or at expiry).
- Access rules are reloaded when an admin command bumps ``access_version`` (polled every
  ``access_poll`` seconds); connections of peers the new rules refuse are closed at once.
- Every refusal is a :class:`~rendezvous.protocol.Refusal` with a stable code and a counter in
  the metrics; logs carry no PeerIds or addresses unless ``debug_log`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from node import envelope, records, wire
from node.errors import PeerlineError, StorageError
from node.identity import Identity, PeerId
from node.mailbox import Accepted, MailboxBook, MailboxLimits, Refused, StoredEnvelope
from node.registry import (
    AccessMode,
    AccessRules,
    Admitted,
    Directory,
    DirectoryEntry,
    DirectoryLimits,
    EntryKind,
    Presence,
    PresenceLimits,
)
from node.store import Store
from rendezvous import db
from rendezvous import protocol as p
from rendezvous.metrics import Metrics

__all__ = ["Peer", "RendezvousService", "ServiceConfig"]

log = logging.getLogger("peerline.rendezvous")
_NOT_OWNER = "mailbox.not_owner"
_CLOSE_POLICY = 0x10  # application close code for "refused by the server's policy"


class Peer(Protocol):
    """What the service needs of a connection (``node.connection.Connection`` fits)."""

    peer_id: PeerId | None
    remote_address: tuple[str, int]

    async def send(self, message: wire.Message, *, timeout: float | None = None) -> None: ...

    def abort(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    mode: AccessMode = AccessMode.OPEN
    mailbox: MailboxLimits = field(default_factory=MailboxLimits)
    presence: PresenceLimits = field(default_factory=PresenceLimits)
    directory: DirectoryLimits = field(default_factory=DirectoryLimits)
    access_poll: float = 0.25
    sweep_interval: float = 1.0
    debug_log: bool = False


@dataclass(slots=True, eq=False)
class _Session:
    conn: Peer
    peer: PeerId
    mailbox: bytes
    admitted: bool = False
    waking: bool = False


class RendezvousService:
    """Request handling of one server (see module doc). Run with ``async with service.run():``."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        config: ServiceConfig | None = None,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.store = store
        self.config = config or ServiceConfig()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.book = MailboxBook(self.config.mailbox)
        self.presence = Presence(self.config.presence)
        self.directory = Directory(self.config.directory)
        self.rules = AccessRules(self.config.mode)
        self._access_version = -1
        self._sessions: dict[Peer, _Session] = {}
        self._by_mailbox: dict[bytes, set[_Session]] = {}
        self._pending: dict[bytes, asyncio.Future[bool]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[type[wire.Message], Callable[[_Session, Any], Awaitable[wire.Message]]]
        self._handlers = {
            p.Hello: self._hello,
            p.Register: self._register,
            p.Lookup: self._lookup,
            p.Deposit: self._deposit,
            p.ListMailbox: self._list,
            p.Fetch: self._fetch,
            p.Ack: self._ack,
            p.Publish: self._publish,
            p.Search: self._search,
        }

    # ------------------------------------------------------------------ lifecycle

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[RendezvousService]:
        """Load state from the database, run the sweep and access-poll loops, stop them on exit."""
        self.book.load(await db.load_envelopes(self.store))
        await self.store.write([db.set_setting("mode", self.config.mode.value)])
        await self._reload_access()
        await self._sweep()
        for loop in (self._sweep_loop, self._access_loop):
            task = asyncio.get_running_loop().create_task(loop())
            self._tasks.add(task)
        self._update_gauges()
        try:
            yield self
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self._sweep()
            except StorageError as exc:
                self.event("sweep_failed", logging.WARNING, error=exc.code)

    async def _sweep(self) -> None:
        """Delete expired envelopes; drop expired registrations and directory entries."""
        now = self.clock()
        expired = self.book.handle_timer(now)
        if expired:
            await self.store.write(db.delete_envelopes([e.envelope_id for e in expired]))
            self.metrics.expired.inc(len(expired))
            self.event("expired", envelopes=len(expired))
        self.presence.handle_timer(now)
        self.directory.handle_timer(now)
        self._update_gauges()

    async def _access_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.access_poll)
            try:
                if await db.read_version(self.store) != self._access_version:
                    await self._reload_access()
            except StorageError as exc:
                self.event("access_reload_failed", logging.WARNING, error=exc.code)

    async def _reload_access(self) -> None:
        """Re-read the access tables; close live connections the new rules refuse.

        Only connections that were admitted (or are now banned) are closed: a peer that is
        still about to present its invite keeps its connection.
        """
        self._access_version = await db.read_version(self.store)
        self.rules = await db.load_access(self.store, self.config.mode)
        live = [s for s in self._sessions.values() if s.admitted or s.peer.key in self.rules.banned]
        revoked = set(self.rules.revoked(s.peer.key for s in live))
        expelled = [s for s in live if s.peer.key in revoked]
        for session in expelled:
            self._expel(session)
        if expelled:
            self.event("access_revoked", connections=len(expelled))

    def _expel(self, session: _Session) -> None:
        banned = session.peer.key in self.rules.banned
        self.presence.unregister(session.peer.key)
        if banned:
            self.directory.remove_owner(session.peer.key)
        self.detach(session.conn)
        code = "access.banned" if banned else "access.revoked"
        session.conn.abort(_CLOSE_POLICY, f"{code}: refused by the server's access rules")

    # ------------------------------------------------------------------ connections

    def attach(self, conn: Peer) -> None:
        """Start serving an authenticated connection."""
        if conn.peer_id is None:
            raise PeerlineError("connection is not authenticated", code="local.misuse")
        session = _Session(conn, conn.peer_id, envelope.mailbox_id(conn.peer_id))
        self._sessions[conn] = session
        self._by_mailbox.setdefault(session.mailbox, set()).add(session)
        self.metrics.connections.set(len(self._sessions))
        self.event("connected", peer=session.peer.text(), address=conn.remote_address)

    def detach(self, conn: Peer) -> None:
        """Forget a connection (closed or expelled). Its registration stays until it expires."""
        session = self._sessions.pop(conn, None)
        if session is None:
            return
        owners = self._by_mailbox.get(session.mailbox)
        if owners is not None:
            owners.discard(session)
            if not owners:
                del self._by_mailbox[session.mailbox]
                self.presence.forget_observed(session.peer.key)
        self.metrics.connections.set(len(self._sessions))

    @property
    def connected(self) -> int:
        return len(self._sessions)

    async def handle(self, conn: Peer, message: wire.Message) -> wire.Message | None:
        """The connection handler: a reply for every request, ``None`` for one-way frames."""
        session = self._sessions.get(conn)
        if session is None:
            return self._refuse(Refused("server.not_attached", "connection is not being served"))
        handler = self._handlers.get(type(message))
        if handler is None:
            return self._refuse(
                Refused("request.unexpected", f"{type(message).__name__} is not a request")
            )
        if not isinstance(message, p.Hello):
            refusal = self._admit(session, None)
            if refusal is not None:
                return self._refuse(refusal)
        return await handler(session, message)

    def _admit(self, session: _Session, token: bytes | None) -> Refused | None:
        if session.admitted and session.peer.key not in self.rules.banned:
            return None
        decision = self.rules.admit(session.peer.key, token, self.clock())
        if isinstance(decision, Refused):
            return decision
        session.admitted = True
        return None

    def _refuse(self, refusal: Refused) -> p.Refusal:
        self.metrics.refused(refusal.code)
        self.event("refused", logging.DEBUG, reason=refusal.code)
        return p.Refusal(refusal.code, refusal.message, refusal.retry_after)

    # ------------------------------------------------------------------ access and presence

    async def _hello(self, session: _Session, message: p.Hello) -> wire.Message:
        session.admitted = False
        decision = self.rules.admit(session.peer.key, message.invite, self.clock())
        if isinstance(decision, Refused):
            return self._refuse(decision)
        session.admitted = True
        if isinstance(decision, Admitted) and decision.invite is not None:
            now = self.clock()
            await self.store.write(
                [
                    db.invite_op(decision.invite, now),
                    *db.access_ops(session.peer.key, "known", True, bump=False),
                ]
            )
        return p.Welcome(self.config.mode.value, self.clock())

    async def _register(self, session: _Session, message: p.Register) -> wire.Message:
        now = self.clock()
        try:
            record = records.validate(message.record, now, peer_id=session.peer)
        except PeerlineError as exc:
            return self._refuse(Refused(exc.code, exc.message))
        host, port = session.conn.remote_address
        entry = self.presence.register(
            session.peer.key,
            message.record,
            seq=record.seq,
            record_expires=float(record.expires),
            observed=(host, port),
            ttl=None if message.ttl is None else float(message.ttl),
            now=now,
        )
        if isinstance(entry, Refused):
            return self._refuse(entry)
        self.metrics.register_total.inc()
        self.metrics.registrations.set(len(self.presence))
        return p.Registered(entry.expires_at)

    async def _lookup(self, session: _Session, message: p.Lookup) -> wire.Message:
        entry = self.presence.lookup(message.peer, self.clock())
        if entry is None:
            return p.LookupResult(None, None)
        observed = p.ObservedAddress(*entry.observed) if entry.observed else None
        return p.LookupResult(entry.record, observed)

    # ------------------------------------------------------------------ mailbox

    async def _deposit(self, session: _Session, message: p.Deposit) -> wire.Message:
        """Decide every envelope, commit the new ones in one unit, then answer one outcome per
        envelope: a signed receipt or a refusal."""
        decisions = [self._decide(session, data) for data in message.envelopes]
        accepted = [
            (d, data)
            for d, data in zip(decisions, message.envelopes, strict=True)
            if isinstance(d, Accepted)
        ]
        stored = iter(await self._persist(accepted))
        items: list[p.StoredItem] = []
        refused: list[p.IndexedRefusal] = []
        failed = Refused("server.storage", "the server could not store it")
        for index, decision in enumerate(decisions):
            if isinstance(decision, Accepted) and next(stored):
                items.append(self._stored(decision))
            else:
                reason = decision if isinstance(decision, Refused) else failed
                refused.append(p.IndexedRefusal(index, self._refuse(reason)))
        if accepted:
            self._update_gauges()
        receipt = None
        if items:
            receipt = p.sign_receipt(self.identity, p.ReceiptBody(self.identity.peer_id.key, items))
        return p.Deposited(receipt, refused)

    def _decide(self, session: _Session, data: bytes) -> Accepted | Refused:
        try:
            header = envelope.parse_envelope(data)
        except PeerlineError as exc:
            return Refused(exc.code, exc.message)
        now = self.clock()
        return self.book.deposit(
            header.mailbox_id,
            header.envelope_id,
            header.size,
            header.expires - now,
            sender=session.peer.key,
            now=now,
        )

    def _stored(self, decision: Accepted) -> p.StoredItem:
        entry = decision.envelope
        if not decision.duplicate:
            self.metrics.deposits.inc()
            self._wake(entry.mailbox_id)
        return p.StoredItem(entry.mailbox_id, entry.envelope_id, math.floor(entry.expires_at))

    async def _persist(self, accepted: list[tuple[Accepted, bytes]]) -> list[bool]:
        """Commit the new envelopes in one unit; for duplicates, wait for the write of the same
        id already under way. Returns, per item, whether its row is committed.

        The write runs in its own task, so a cancelled request cannot leave the index and the
        database disagreeing: index entries are dropped exactly when their rows were not written.
        """
        loop = asyncio.get_running_loop()
        fresh = [(d.envelope, data) for d, data in accepted if not d.duplicate]
        written: asyncio.Future[bool] = loop.create_future()
        if fresh:
            for entry, _ in fresh:
                self._pending[entry.envelope_id] = written
            ops = [db.insert_envelope_op(entry, data) for entry, data in fresh]
            task = loop.create_task(self.store.write(ops))
            entries = [entry for entry, _ in fresh]
            task.add_done_callback(lambda done: self._written(entries, written, done))
        results: list[bool] = []
        for decision, _ in accepted:
            waiting = (
                written
                if not decision.duplicate
                else self._pending.get(decision.envelope.envelope_id)
            )
            results.append(True if waiting is None else await asyncio.shield(waiting))
        return results

    def _written(
        self, entries: list[StoredEnvelope], future: asyncio.Future[bool], task: asyncio.Task[None]
    ) -> None:
        for entry in entries:
            if self._pending.get(entry.envelope_id) is future:
                del self._pending[entry.envelope_id]
        failed = task.cancelled() or task.exception() is not None
        if failed:
            for entry in entries:
                self.book.remove(entry.mailbox_id, [entry.envelope_id])
            error = None if task.cancelled() else task.exception()
            code = error.code if isinstance(error, PeerlineError) else "cancelled"
            self.event("deposit_failed", logging.WARNING, error=code)
        if not future.done():
            future.set_result(not failed)

    def _wake(self, mailbox: bytes) -> None:
        owners = self._by_mailbox.get(mailbox)
        if not owners:
            return
        for session in owners:
            if not session.waking:  # one Wake in flight per connection: a burst wakes once
                session.waking = True
                task = asyncio.get_running_loop().create_task(self._send_wake(session))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send_wake(self, session: _Session) -> None:
        try:
            with contextlib.suppress(PeerlineError):
                pending = self.book.usage(session.mailbox)[0]
                await session.conn.send(p.Wake(pending), timeout=5.0)
        finally:
            session.waking = False

    def _owner_check(self, session: _Session, mailbox: bytes) -> p.Refusal | None:
        if mailbox != session.mailbox:
            return self._refuse(Refused(_NOT_OWNER, "only the owner may read its mailbox"))
        return None

    async def _list(self, session: _Session, message: p.ListMailbox) -> wire.Message:
        refusal = self._owner_check(session, message.mailbox)
        if refusal is not None:
            return refusal
        entries = self.book.listing(session.mailbox, message.limit)
        items = [p.ListItem(e.envelope_id, e.size, math.floor(e.expires_at)) for e in entries]
        return p.Listing(items, self.book.usage(session.mailbox)[0])

    async def _fetch(self, session: _Session, message: p.Fetch) -> wire.Message:
        refusal = self._owner_check(session, message.mailbox)
        if refusal is not None:
            return refusal
        deleted = await self._delete(session, message.ack)
        entries = self._select(session.mailbox, message.ids, message.limit)
        data = await db.read_envelopes(
            self.store, session.mailbox, [e.envelope_id for e in entries]
        )
        items = [
            p.EnvelopeItem(e.envelope_id, math.floor(e.expires_at), data[e.envelope_id])
            for e in entries
            if e.envelope_id in data
        ]
        remaining = self.book.usage(session.mailbox)[0] - len(items)
        return p.Envelopes(items, max(0, remaining), deleted)

    def _select(self, mailbox: bytes, ids: list[bytes], limit: int) -> list[StoredEnvelope]:
        if not ids:
            return self.book.listing(mailbox, limit, p.MAX_FETCH_BYTES)
        chosen: list[StoredEnvelope] = []
        total = 0
        for envelope_id in ids[:limit]:
            entry = self.book.get(envelope_id)
            if entry is None or entry.mailbox_id != mailbox:
                continue
            if chosen and total + entry.size > p.MAX_FETCH_BYTES:
                break
            chosen.append(entry)
            total += entry.size
        return chosen

    async def _ack(self, session: _Session, message: p.Ack) -> wire.Message:
        refusal = self._owner_check(session, message.mailbox)
        if refusal is not None:
            return refusal
        deleted = await self._delete(session, message.ids)
        return p.Acked(deleted, self.book.usage(session.mailbox)[0])

    async def _delete(self, session: _Session, ids: list[bytes]) -> int:
        """Delete the acked envelopes that belong to the session's own mailbox (others are
        ignored); the index forgets them only once the rows are gone."""
        owned = [
            envelope_id
            for envelope_id in dict.fromkeys(ids)
            if (entry := self.book.get(envelope_id)) is not None
            and entry.mailbox_id == session.mailbox
        ]
        if not owned:
            return 0
        await self.store.write(db.delete_envelopes(owned))
        removed = self.book.remove(session.mailbox, owned)
        self.metrics.drained.inc(len(removed))
        self._update_gauges()
        return len(removed)

    # ------------------------------------------------------------------ directory

    async def _publish(self, session: _Session, message: p.Publish) -> wire.Message:
        try:
            kind = EntryKind(message.kind)
        except ValueError:
            return self._refuse(Refused("directory.bad_kind", "kind is 'account' or 'group'"))
        result = self.directory.publish(
            session.peer.key,
            kind,
            message.entry_id,
            name=message.name,
            description=message.description,
            listed=message.listed,
            ttl=None if message.ttl is None else float(message.ttl),
            now=self.clock(),
        )
        if isinstance(result, Refused):
            return self._refuse(result)
        self.metrics.directory_entries.set(len(self.directory))
        return p.Published(None if result is None else result.expires_at)

    async def _search(self, session: _Session, message: p.Search) -> wire.Message:
        found = self.directory.search(message.query, self.clock(), message.limit)
        return p.SearchResult([_directory_item(e) for e in found])

    # ------------------------------------------------------------------ observability

    def _update_gauges(self) -> None:
        self.metrics.stored_envelopes.set(len(self.book))
        self.metrics.stored_bytes.set(self.book.total_bytes)
        self.metrics.registrations.set(len(self.presence))
        self.metrics.directory_entries.set(len(self.directory))

    def event(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        """Log an event; ``peer``/``address`` fields only appear with ``debug_log``."""
        if not self.config.debug_log:
            fields.pop("peer", None)
            fields.pop("address", None)
        if log.isEnabledFor(level):
            log.log(level, event, extra={"fields": fields})


def _directory_item(entry: DirectoryEntry) -> p.DirectoryItem:
    return p.DirectoryItem(entry.kind.value, entry.entry_id, entry.name, entry.description)
