"""Node side of a rendezvous server: register, look up, deposit, drain (L2, over the transport).

:class:`RendezvousClient` talks to one server through the node's :class:`~node.transport.Transport`
(the dial pins the server's PeerId from its ADDRESS). Contracts:

- Every reply is checked: a :class:`~rendezvous.protocol.Refusal` becomes
  :class:`~node.errors.RefusedError` with the server's reason code (and ``retry_after``); any
  other unexpected reply is :class:`~node.errors.RemoteProtocolError`.
- :meth:`deposit` returns only after the server's receipt verified under the pinned key.
- :meth:`drain` fetches envelopes in batches, awaits the caller's ``store`` coroutine for each
  (in order) and acks a batch only with the ids whose ``store`` returned: an envelope is never
  deleted on the server before the caller stored it. If ``store`` raises, nothing after it is
  acked and the error propagates (the envelopes stay on the server). The caller de-duplicates
  by envelope id, since a crash between ``store`` and the ack delivers the envelope again.
- :meth:`run` keeps a registration fresh (re-registering at half its lifetime), drains on
  every (re)connection and on every ``Wake``, and reconnects with backoff; it ends only when
  cancelled. Its work queue is one pending "drain" flag, so wake-ups cannot pile up.
- :meth:`addresses` is the address-lookup used by the dialer: the record's addresses plus the
  address the server observed, validated records only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from node import envelope, records, wire
from node.backoff import Backoff
from node.connection import Connection
from node.crypto import random_bytes
from node.errors import (
    ConnectionClosedError,
    CryptoError,
    PeerlineError,
    RefusedError,
    RemoteProtocolError,
)
from node.identity import PeerId
from node.records import PeerRecord
from node.transport import Transport
from rendezvous import protocol as p

__all__ = ["Found", "RendezvousClient", "StoreEnvelope"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=wire.Message)

StoreEnvelope = Callable[[bytes, bytes], Awaitable[None]]
"""``await store(envelope_id, envelope)``: durably store one envelope (idempotent by id)."""


@dataclass(frozen=True, slots=True)
class Found:
    """A lookup answer: the peer's validated record (if registered) and where the server saw it."""

    record: PeerRecord | None
    observed: tuple[str, int] | None


class RendezvousClient:
    """One server, one connection (re-dialed on demand). See module doc."""

    def __init__(
        self,
        transport: Transport,
        server: p.RendezvousAddress,
        *,
        invite: bytes | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float | None = None,
    ) -> None:
        self.transport = transport
        self.server = server
        self.invite = invite
        self.clock = clock
        self.timeout = timeout
        self.mailbox = envelope.mailbox_id(transport.peer_id)
        self._conn: Connection | None = None
        self._welcomed: Connection | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ connection

    async def connect(self) -> Connection:
        """The open, welcomed connection to the server: dials and says hello as needed.

        A refused hello (e.g. ``access.invite_required``) raises and leaves the connection
        un-welcomed, so the next call says hello again on it.
        """
        async with self._connecting:
            conn = self._conn
            if conn is None or not conn.is_open:
                conn = await self.transport.dial(
                    self.server.peer_id, [(self.server.host, self.server.port)]
                )
                conn.set_handler(self._on_frame)
                self._conn = conn
            if self._welcomed is not conn:
                await self._exchange(conn, p.Hello(self.invite), p.Welcome)
                self._welcomed = conn
                self._wake.set()  # drain what arrived while we were away
            return conn

    async def _on_frame(self, conn: Connection, message: wire.Message) -> wire.Message | None:
        if isinstance(message, p.Wake):
            self._wake.set()
            return None
        return p.Refusal("request.unexpected", "a node serves no rendezvous requests", None)

    async def _ask(self, request: wire.Message, expected: type[M]) -> M:
        conn = self._conn
        if conn is None or not conn.is_open or self._welcomed is not conn:
            conn = await self.connect()
        return await self._exchange(conn, request, expected)

    async def _exchange(self, conn: Connection, request: wire.Message, expected: type[M]) -> M:
        reply = await conn.request(request, timeout=self.timeout)
        if isinstance(reply, p.Refusal):
            raise RefusedError(reply.message, code=reply.code, retry_after=reply.retry_after)
        if not isinstance(reply, expected):
            raise RemoteProtocolError(
                f"server answered {type(reply).__name__} to {type(request).__name__}",
                code="rendezvous.unexpected_reply",
            )
        return reply

    # ------------------------------------------------------------------ presence

    async def register(self, record: PeerRecord, ttl: int | None = None) -> float:
        """Register (or refresh) our record; returns when the registration expires."""
        reply = await self._ask(p.Register(record.encode(), ttl), p.Registered)
        return reply.expires_at

    async def lookup(self, peer: PeerId) -> Found:
        reply = await self._ask(p.Lookup(peer.key), p.LookupResult)
        record = None
        if reply.record is not None:
            try:
                record = records.validate(reply.record, self.clock(), peer_id=peer)
            except PeerlineError as exc:
                log.debug("server returned an invalid record: %s", exc.code)
        observed = None if reply.observed is None else (reply.observed.host, reply.observed.port)
        return Found(record, observed if record is not None else None)

    async def addresses(self, peer: PeerId) -> list[tuple[str, int]]:
        """Address lookup for the dialer: observed address first, then the record's."""
        found = await self.lookup(peer)
        if found.record is None:
            return []
        candidates = [found.observed] if found.observed else []
        candidates += found.record.addresses
        return list(dict.fromkeys(candidates))

    # ------------------------------------------------------------------ mailbox

    async def deposit(self, envelope: bytes) -> p.StoredItem:
        """Store one sealed envelope; returns its verified receipt item or raises RefusedError."""
        (outcome,) = await self.deposit_many([envelope])
        if isinstance(outcome, RefusedError):
            raise outcome
        return outcome

    async def deposit_many(self, envelopes: list[bytes]) -> list[p.StoredItem | RefusedError]:
        """Store up to :data:`~rendezvous.protocol.MAX_DEPOSIT_BATCH` envelopes in one request.

        Returns, per envelope in order, the item of the server's verified receipt (its id is
        checked against the id we compute) or the refusal. The receipt is signed once for all.
        """
        reply = await self._ask(p.Deposit(envelopes), p.Deposited)
        refused = {r.index: r.refusal for r in reply.refused}
        stored = {item.envelope_id: item for item in self._verified(reply.receipt)}
        outcomes: list[p.StoredItem | RefusedError] = []
        for index, data in enumerate(envelopes):
            refusal = refused.get(index)
            item = stored.get(envelope.envelope_id(data))
            if refusal is not None:
                outcomes.append(
                    RefusedError(
                        refusal.message, code=refusal.code, retry_after=refusal.retry_after
                    )
                )
            elif item is not None:
                outcomes.append(item)
            else:
                raise RemoteProtocolError(
                    "the server neither stored nor refused an envelope",
                    code="rendezvous.bad_receipt",
                )
        return outcomes

    def _verified(self, receipt: p.Receipt | None) -> list[p.StoredItem]:
        if receipt is None:
            return []
        try:
            return p.verify_receipt(receipt, self.server.peer_id).items
        except CryptoError as exc:
            raise RemoteProtocolError(
                f"bad receipt from the server: {exc.code}", code="rendezvous.bad_receipt"
            ) from None

    async def pending(self, limit: int = p.MAX_BATCH) -> p.Listing:
        return await self._ask(p.ListMailbox(self.mailbox, limit), p.Listing)

    async def drain(self, store: StoreEnvelope, *, batch: int = 64) -> int:
        """Fetch, store (via ``store``) and ack everything waiting; returns how many were acked."""
        self._wake.clear()
        total = 0
        stored: list[bytes] = []
        while True:
            fetched = await self._ask(p.Fetch(self.mailbox, [], batch, stored), p.Envelopes)
            total += fetched.deleted
            stored = []
            try:
                for item in fetched.items:
                    await store(item.envelope_id, item.envelope)
                    stored.append(item.envelope_id)
            except Exception:  # (a cancelled drain acks nothing: those envelopes come again)
                if stored:  # ack what is safely stored, then report the failure
                    await self._ask(p.Ack(self.mailbox, stored), p.Acked)
                raise
            if not fetched.items or fetched.remaining == 0:
                break
        if stored:
            total += (await self._ask(p.Ack(self.mailbox, stored), p.Acked)).deleted
        return total

    # ------------------------------------------------------------------ directory

    async def publish(
        self,
        kind: str,
        entry_id: bytes,
        name: str,
        description: str = "",
        *,
        listed: bool = True,
        ttl: int | None = None,
    ) -> float | None:
        reply = await self._ask(
            p.Publish(kind, entry_id, name, description, listed, ttl), p.Published
        )
        return reply.expires_at

    async def search(self, query: str, limit: int = 20) -> list[p.DirectoryItem]:
        return (await self._ask(p.Search(query, limit), p.SearchResult)).entries

    # ------------------------------------------------------------------ the background loop

    async def run(
        self,
        record: Callable[[], PeerRecord],
        store: StoreEnvelope,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        """Stay registered and drained until cancelled (see module doc)."""
        backoff = backoff or Backoff(0.5, 60.0, 2.0, 0.5)
        attempt = 0
        while True:
            try:
                await self.connect()
                attempt = 0
                await self._serve_session(record, store)
            except (PeerlineError, OSError) as exc:
                code = getattr(exc, "code", "os")
                log.info("rendezvous session ended: %s", code)
                if isinstance(exc, RefusedError) and exc.code.startswith("access."):
                    raise
                await asyncio.sleep(backoff.delay(attempt, random_bytes))
                attempt += 1

    async def _serve_session(self, record: Callable[[], PeerRecord], store: StoreEnvelope) -> None:
        """Register, then drain on wake-ups and re-register at half-life until the link drops."""
        conn = self._conn
        assert conn is not None
        refresh_at = self._refresh_time(await self.register(record()))
        while conn.is_open:
            if self._wake.is_set():
                await self.drain(store)
            elif self.clock() >= refresh_at:
                refresh_at = self._refresh_time(await self.register(record()))
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, refresh_at - self.clock())):
                        await _first(self._wake.wait(), asyncio.shield(conn.closed))
        raise ConnectionClosedError("connection to the server closed")

    def _refresh_time(self, expires_at: float) -> float:
        now = self.clock()
        return now + max(1.0, (expires_at - now) / 2)


async def _first(*waits: Awaitable[object]) -> None:
    """Wait until the first of ``waits`` completes; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
