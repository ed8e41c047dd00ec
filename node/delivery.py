"""Delivery: the outbox driver and the receive pipeline behind :class:`~node.node.Node`.

The pure rules come from :mod:`node.messaging`; this module moves bytes between those machines,
the store and :class:`~node.reach.Reach`. The node runs the three loops in its task group and
routes frames and mailbox envelopes here (:meth:`Delivery.on_frame`, :meth:`Delivery.on_envelope`).

Outgoing (DESIGN section 8): :meth:`Delivery.send` commits the message and its outbox row in
one unit; the outbox machine asks for attempts; an attempt encrypts (the new ratchet state and
the ciphertext are committed in one unit *before* anything leaves), then sends
:class:`~node.messaging.Deliver` on a live connection (``sent``) or seals it into the
recipient's mailbox (``stored``). Signed receipts move it to ``delivered``/``read``.

Incoming: blocked peers are dropped before anything is decrypted; the policy decides
(refuse / request / accept); the id is de-duplicated; the ratchet decrypts; the receive order
holds out-of-order messages; one unit commits session, prekeys and rows; only then the
receipt goes out. Receipts are batched per peer (one signature for up to 256 ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from node import envelope, prekeys, session, wire
from node.channel import CloseCode
from node.connection import Connection
from node.contacts import Contacts
from node.crypto import Rng
from node.errors import PeerlineError, UsageError
from node.history import History, Status
from node.identity import Identity, PeerId
from node.messaging import (
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
    verify_receipt,
)
from node.reach import NETWORK_TIMEOUT, Reach
from node.session_store import SessionStore, prekeys_op, session_op
from node.store import Store, WriteOp
from node.transport import Transport

__all__ = ["Delivery"]

log = logging.getLogger(__name__)

_RECEIPT_BATCH = 256
_MAX_INFLIGHT = 1024
"""Received messages decrypted but not yet committed (then the connection waits)."""


@dataclass(frozen=True, slots=True)
class _Unsaved:
    """A received message decrypted and ordered, waiting for its commit."""

    ops: list[WriteOp]
    message_id: bytes
    shown: list[ChatText]
    first: bool
    verdict: Verdict


class Delivery:
    """Outbox, sessions, receive order and receipts of one node (see the module doc).

    ``reach`` connects to peers or their mailboxes; ``emit(event, **fields)`` publishes node
    events.
    """

    def __init__(
        self,
        identity: Identity,
        store: Store,
        transport: Transport,
        reach: Reach,
        *,
        contacts: Contacts,
        history: History,
        sessions: SessionStore,
        retry: RetryPolicy,
        lifetime: float,
        gap_timeout: float,
        emit: Callable[..., None],
        clock: Callable[[], float],
        rng: Rng,
    ) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        self._own_text = self.peer_id.text()
        self.store = store
        self.transport = transport
        self.reach = reach
        self.contacts = contacts
        self.history = history
        self.sessions = sessions
        self._retry = retry
        self._lifetime = lifetime
        self._gap_timeout = gap_timeout
        self.emit = emit
        self.clock = clock
        self.rng = rng
        self.blocked: set[PeerId] = set()
        """Peers whose frames are dropped unread (the node reloads it)."""
        self.prekeys: prekeys.PrekeyState | None = None
        self._outbox = Outbox(rng, retry)
        self._wake = asyncio.Event()
        self._sessions: dict[PeerId, session.Session] = {}
        self._session_locks: dict[PeerId, asyncio.Lock] = {}
        self._orders: dict[PeerId, ReceiveOrder[ChatText]] = {}
        self._senders: dict[PeerId, asyncio.Task[None]] = {}
        self._attempts: dict[PeerId, list[Attempt]] = {}
        self._receipts: dict[tuple[PeerId, ReceiptKind], list[bytes]] = {}
        self._receipt_wake = asyncio.Event()
        self._verdicts: dict[PeerId, tuple[Verdict, str]] = {}
        self._send_seq: dict[PeerId, int] = {}
        self._fresh: dict[bytes, ChatText] = {}
        self._inflight = asyncio.Semaphore(_MAX_INFLIGHT)
        self._unsaved: dict[PeerId, list[_Unsaved]] = {}
        self._committers: dict[PeerId, asyncio.Task[None]] = {}
        self._prekeys_dirty = False
        self._sent_on: dict[bytes, tuple[Connection, float]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        """Load (or create) and maintain our prekeys, and the outbox as the store left it."""
        now = self.clock()
        state = await self.sessions.load_prekeys()
        if state is None:
            state = prekeys.generate(self.identity, now=now, rng=self.rng)
        state = prekeys.maintain(state, self.identity, now=now, rng=self.rng)
        await self.store.write([prekeys_op(state, now)])
        self.prekeys = state
        for entry in await self.history.outbox_entries():
            self._outbox.add(entry)

    async def flush(self) -> None:
        """Wait until every received message handed to a committer is committed (or failed)."""
        await asyncio.gather(*self._committers.values(), return_exceptions=True)

    def cancel_senders(self) -> list[asyncio.Task[None]]:
        """Cancel the per-peer delivery tasks; returns them for the caller to await."""
        senders = list(self._senders.values())
        for task in senders:
            task.cancel()
        return senders

    def __len__(self) -> int:
        """Messages in the outbox (not yet delivered, read or failed)."""
        return len(self._outbox)

    def prekey_bundle(self, *, max_one_time: int = prekeys.ONE_TIME_POOL) -> bytes:
        assert self.prekeys is not None
        bundle = prekeys.make_bundle(
            self.prekeys, self.identity, now=self.clock(), max_one_time=max_one_time
        )
        return bundle.to_bytes()

    def peer_reachable(self, peer: PeerId) -> None:
        """``peer`` was just seen (discovered or connected): dial it again and retry now."""
        self.reach.peer_seen(peer)
        self._outbox.peer_reachable(peer.key, self.clock())
        self._wake.set()

    # ------------------------------------------------------------------ sending

    async def send(self, peer: PeerId, text: str, *, ttl: float | None = None) -> bytes:
        """Queue a message (committed before this returns); returns its id."""
        check_text(text)
        check_ttl(ttl)
        if peer in self.blocked:
            raise UsageError("recipient is blocked (unblock first)", code="contact.blocked")
        message_id = new_message_id(self.rng)
        now = self.clock()
        seq = await self._next_seq(peer)
        lifetime = self._lifetime
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

    async def outbox_loop(self) -> None:
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
        conn = await self.reach.connect(peer)
        ciphertexts = await self._ciphertexts(peer, ids, conn)
        now = self.clock()
        if conn is not None:
            for message_id, data in ciphertexts.items():
                await conn.send(Deliver(message_id, data), timeout=NETWORK_TIMEOUT)
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
            stored = await self.reach.deposit(sealed)
            self._outbox.report(message_id, "stored" if stored else "unreachable", now)

    def _drop_silent_connection(self, peer: PeerId, ids: list[bytes]) -> None:
        """A message already ``sent`` on the live connection got no receipt within the ack
        timeout: the peer is most likely gone (a crash sends no close). Drop the connection
        now rather than waiting for the QUIC idle timeout, so this attempt dials afresh."""
        conn = self.transport.connection(peer)
        if conn is None:
            return
        limit = self.clock() - self._retry.ack_timeout
        for message_id in ids:
            sent = self._sent_on.pop(message_id, None)
            if sent is not None and sent[0] is conn and sent[1] <= limit:
                conn.abort(CloseCode.TIMEOUT, "timeout: no receipts from the peer")
                return

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
            reply = await conn.request(GetPrekeys(), timeout=NETWORK_TIMEOUT)
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

    # ------------------------------------------------------------------ receiving

    async def on_frame(self, conn: Connection, message: wire.Message) -> wire.Message | None:
        peer = conn.peer_id
        assert peer is not None
        if peer in self.blocked:
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

    async def on_envelope(self, envelope_id: bytes, data: bytes) -> None:
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
            await self.reach.send_frame(peer, Refused([deliver.message_id], "policy.refused"))
            return
        chat = await self._decrypt(peer, deliver)
        if chat is None:
            if await self.history.known_ids([deliver.message_id]):
                self.queue_receipt(peer, ReceiptKind.DELIVERED, deliver.message_id)
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
                assert self.prekeys is not None
                self._prekeys_dirty = False
                ops.append(prekeys_op(self.prekeys, now))
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
                self.queue_receipt(peer, ReceiptKind.DELIVERED, item.message_id)
                self._announce(peer, item.shown, item.first, item.verdict)

    async def _decrypt(self, peer: PeerId, deliver: Deliver) -> ChatText | None:
        assert self.prekeys is not None
        current = await self._session(peer)
        try:
            received = session.receive(
                self.identity,
                self.prekeys,
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
        if received.prekeys is not self.prekeys:
            self.prekeys = received.prekeys
            self._prekeys_dirty = True
        return chat

    async def _order(self, peer: PeerId) -> ReceiveOrder[ChatText]:
        order = self._orders.get(peer)
        if order is None:
            info = await self.history.conversation(peer)
            start = info.recv_seq + 1 if info is not None and info.recv_seq > 0 else None
            order = ReceiveOrder(start, self._gap_timeout)
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

    def queue_receipt(self, peer: PeerId, kind: ReceiptKind, message_id: bytes) -> None:
        self._receipts.setdefault((peer, kind), []).append(message_id)
        self._receipt_wake.set()

    async def receipt_loop(self) -> None:
        while True:
            await self._receipt_wake.wait()
            self._receipt_wake.clear()
            pending, self._receipts = self._receipts, {}
            for (peer, kind), ids in pending.items():
                for start in range(0, len(ids), _RECEIPT_BATCH):
                    batch = ids[start : start + _RECEIPT_BATCH]
                    receipt = make_receipt(self.identity, kind, peer, batch, self.clock())
                    await self.reach.send_frame(peer, receipt)

    async def housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            ops: list[WriteOp] = []
            for peer, order in self._orders.items():
                for _, chat in order.handle_timer(now):
                    ops += self.history.release_ops(peer, chat, now)
            ops += self.history.expire_ops(now)
            await self.store.write(ops)
