"""1:1 messaging core (pure): frames, message ids, delivery states, outbox, receive order,
receipts and acceptance policy (invite links: :mod:`node.invite`).

Nothing here does I/O, reads a clock or draws randomness: ``now`` and ``rng`` are arguments.
The node (``node/node.py``) drives these machines and persists what they decide.

Delivery, end to end:

1. ``send`` gives a message a random 16-byte id and the next *sender sequence number* of the
   conversation, and queues it in the :class:`Outbox` (state ``queued``).
2. The outbox emits :class:`Attempt` events when an entry is due. The node tries a direct QUIC
   send (``sent``) or a mailbox deposit (``stored``). A failed attempt is retried after an
   exponential backoff with jitter; an entry still undelivered at its expiry becomes
   ``failed`` with the reason.
3. The receiver de-duplicates by message id and releases messages in sender order through a
   :class:`ReceiveOrder` per conversation (a gap is waited for at most ``gap_timeout``), then
   answers with a :class:`Receipt` signed with the domain :data:`RECEIPT_DOMAIN`.
4. ``delivered`` and ``read`` come only from receipts whose signature verifies for the
   recipient's key; states never move backwards (:func:`merge_state`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Annotated, Generic, Literal, TypeVar

from node import wire
from node.backoff import Backoff
from node.crypto import Rng, verify
from node.errors import LocalProtocolError, RemoteProtocolError, UsageError
from node.identity import Identity, PeerId

__all__ = [
    "DEFAULT_LIFETIME",
    "MAX_RECEIPT_IDS",
    "MAX_TEXT_BYTES",
    "MAX_TTL",
    "MESSAGE_ID_SIZE",
    "POLICIES",
    "RECEIPT_DOMAIN",
    "STATES",
    "Attempt",
    "ChatText",
    "ConversationStatus",
    "Deliver",
    "Expired",
    "GetPrekeys",
    "Outbox",
    "OutboxEntry",
    "Outcome",
    "OutboxEvent",
    "Policy",
    "Prekeys",
    "Presence",
    "Receipt",
    "ReceiptKind",
    "ReceiveOrder",
    "Refused",
    "RetryPolicy",
    "State",
    "StateChanged",
    "Typing",
    "Verdict",
    "check_text",
    "check_ttl",
    "decide",
    "make_receipt",
    "merge_state",
    "new_message_id",
    "parse_hostport",
    "verify_receipt",
]

MESSAGE_ID_SIZE = 16
MAX_TEXT_BYTES = 8192
"""Largest message text in UTF-8 bytes (about 2,000 emoji or 8,000 ASCII characters)."""
MAX_TTL = 30 * 86400.0
"""Longest ``--ttl`` (disappearing message lifetime), in seconds."""
DEFAULT_LIFETIME = 7 * 86400.0
"""How long an undelivered message is retried before it becomes ``failed``."""
MAX_CIPHERTEXT = MAX_TEXT_BYTES + 1024
MAX_RECEIPT_IDS = 256
RECEIPT_DOMAIN = "peerline/receipt/v1"

State = Literal["queued", "sent", "stored", "delivered", "read", "failed"]
STATES: tuple[State, ...] = ("queued", "sent", "stored", "delivered", "read", "failed")
_RANK: dict[str, int] = {"queued": 0, "sent": 1, "stored": 2, "delivered": 3, "read": 4}

_Id = Annotated[bytes, wire.Bytes(size=MESSAGE_ID_SIZE)]
_Key = Annotated[bytes, wire.Bytes(size=32)]
_Time = Annotated[float, wire.Float()]


# --------------------------------------------------------------------------- frames


@wire.frame(0x10)
@dataclass(frozen=True, slots=True)
class ChatText(wire.Message):
    """The plaintext of a chat message, encrypted end to end inside :class:`Deliver`.

    ``seq`` is the sender's sequence number in this conversation (1, 2, ...): the receiver
    shows messages in that order. ``ttl`` (seconds) makes the message disappear on both sides.
    """

    message_id: _Id
    seq: Annotated[int, wire.Int(min=1, max=2**63 - 1)]
    sent_at: _Time
    text: Annotated[str, wire.Str(min=1, max=MAX_TEXT_BYTES)]
    ttl: Annotated[float | None, wire.Maybe(wire.Float(min=1.0, max=MAX_TTL))]


@wire.frame(0x11)
@dataclass(frozen=True, slots=True)
class Deliver(wire.Message):
    """One end-to-end encrypted message on a live connection.

    ``message_id`` travels in clear (it is random and says nothing) so that a receiver that
    already stored the message can acknowledge a retransmission its ratchet refuses as a replay.
    """

    message_id: _Id
    ciphertext: Annotated[bytes, wire.Bytes(min=1, max=MAX_CIPHERTEXT)]


class ReceiptKind(IntEnum):
    DELIVERED = 1
    READ = 2


@dataclass(frozen=True, slots=True)
class _ReceiptBody(wire.Message):
    kind: Annotated[int, wire.Int(min=1, max=2)]
    sender: _Key
    recipient: _Key
    at: _Time
    message_ids: Annotated[list[bytes], wire.ListOf(wire.Bytes(size=16), max_items=256)]


@wire.frame(0x12)
@dataclass(frozen=True, slots=True)
class Receipt(wire.Message):
    """``recipient`` confirms it stored (or read) ``message_ids`` that ``sender`` wrote.

    One signature covers a batch of ids, so receipts cost far less than one signature per
    message. Build with :func:`make_receipt`, check with :func:`verify_receipt`.
    """

    body: Annotated[_ReceiptBody, wire.Nested(_ReceiptBody)]
    signature: Annotated[bytes, wire.Bytes(size=64)]


@wire.frame(0x13)
@dataclass(frozen=True, slots=True)
class Refused(wire.Message):
    """The recipient's policy refuses these messages (``reason`` is an error code)."""

    message_ids: Annotated[list[bytes], wire.ListOf(wire.Bytes(size=16), max_items=256)]
    reason: Annotated[str, wire.Str(min=1, max=64)]


@wire.frame(0x14)
@dataclass(frozen=True, slots=True)
class Typing(wire.Message):
    """The peer started (``True``) or stopped typing. Live connections only, never stored."""

    active: Annotated[bool, wire.Bool()]


@wire.frame(0x15)
@dataclass(frozen=True, slots=True)
class Presence(wire.Message):
    """The peer's presence (``online``, ``away``). Live connections only, never stored."""

    status: Annotated[str, wire.Str(min=1, max=16)]


@wire.frame(0x16)
@dataclass(frozen=True, slots=True)
class GetPrekeys(wire.Message):
    """Request: send me your current prekey bundle (answered with :class:`Prekeys`)."""


@wire.frame(0x17)
@dataclass(frozen=True, slots=True)
class Prekeys(wire.Message):
    """The sender's signed prekey bundle bytes (checked with ``prekeys.verify_bundle``)."""

    bundle: Annotated[bytes, wire.Bytes(min=1, max=16384)]


# --------------------------------------------------------------------------- ids, text, states


def new_message_id(rng: Rng) -> bytes:
    """A fresh random message id (128 bits: collisions are not a concern)."""
    message_id = rng(MESSAGE_ID_SIZE)
    if type(message_id) is not bytes or len(message_id) != MESSAGE_ID_SIZE:
        raise LocalProtocolError("rng returned the wrong size", code="messaging.bad_rng")
    return message_id


def check_text(text: str) -> str:
    """Validate message text: non-empty after trimming, valid UTF-8, at most the byte limit.

    Raises :class:`UsageError` (``message.empty``, ``message.too_long``, ``message.bad_text``).
    The text itself is returned unchanged (no normalisation: what the user typed is sent).
    """
    if not text.strip():
        raise UsageError("message text is empty", code="message.empty")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError("message text is not valid Unicode", code="message.bad_text") from None
    if size > MAX_TEXT_BYTES:
        raise UsageError(
            f"message is {size} bytes, the limit is {MAX_TEXT_BYTES}", code="message.too_long"
        )
    return text


def check_ttl(ttl: float | None) -> float | None:
    """``None`` or a lifetime in ``1..MAX_TTL`` seconds, else :class:`UsageError`."""
    if ttl is not None and not 1.0 <= ttl <= MAX_TTL:
        raise UsageError(f"--ttl must be 1..{int(MAX_TTL)} seconds", code="message.bad_ttl")
    return ttl


def merge_state(current: State, new: State) -> State:
    """The state after ``new`` is reported for a message in ``current``: never backwards.

    ``failed`` replaces only states before ``delivered``; a receipt that arrives after a
    failure still wins, because the recipient's signature proves delivery.
    """
    if new == "failed":
        return "failed" if current in ("queued", "sent", "stored") else current
    if current == "failed":
        return new if new in ("delivered", "read") else current
    return new if _RANK[new] > _RANK[current] else current


# --------------------------------------------------------------------------- outbox


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to retry an outbox entry.

    ``backoff``: delay after a failed attempt (exponential, capped, jittered; see
    :class:`~node.backoff.Backoff`). ``ack_timeout``: how long an attempt may stay silent
    (no receipt, no result) before it counts as failed and the backoff delay starts.
    """

    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=30.0))
    ack_timeout: float = 10.0

    def delay(self, attempts: int, rng: Rng) -> float:
        return self.backoff.delay(max(attempts - 1, 0), rng)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One message waiting for delivery (the row of the ``outbox`` table)."""

    message_id: bytes
    recipient: bytes
    expires_at: float
    next_attempt_at: float
    attempts: int = 0
    state: State = "queued"


Outcome = Literal["sent", "stored", "delivered", "read", "unreachable", "refused"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """Try to deliver this entry now (direct if connected, else the mailbox)."""

    message_id: bytes
    recipient: bytes
    attempt: int


@dataclass(frozen=True, slots=True)
class StateChanged:
    """Persist and report: the message's state is now ``state`` (``reason`` when failed)."""

    message_id: bytes
    state: State
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Expired:
    """The entry left the outbox undelivered (also reported as a ``failed`` StateChanged)."""

    message_id: bytes


OutboxEvent = Attempt | StateChanged | Expired


class Outbox:
    """Sans-I/O delivery machine for the outbox entries of one node.

    The driver loop: ``add`` entries (new or loaded from the store), call
    ``handle_timer(now)`` when ``get_timer()`` is reached, report attempt results with
    ``report(...)``, and after each call drain ``next_event()`` and act on the events.

    Rules: a due entry yields one :class:`Attempt` and is re-armed ``ack_timeout`` later, so an
    attempt that never reports is retried. ``unreachable`` reschedules with backoff + jitter.
    ``stored`` (a mailbox took it) stops retries until expiry: the mailbox holds it.
    ``delivered``/``read`` and ``refused`` remove the entry. At ``expires_at`` an undelivered
    entry becomes ``failed`` with reason ``expired``. ``peer_reachable`` makes the recipient's
    pending entries, stored ones included, due at once (a connection just came up). The
    timer heap uses lazy deletion, so every operation is O(log n).
    """

    def __init__(self, rng: Rng, policy: RetryPolicy | None = None) -> None:
        self._rng = rng
        self._policy = policy or RetryPolicy()
        self._entries: dict[bytes, OutboxEntry] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._events: list[OutboxEvent] = []
        self._event_pos = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, message_id: bytes) -> OutboxEntry | None:
        return self._entries.get(message_id)

    def pending_for(self, recipient: bytes) -> list[OutboxEntry]:
        return [e for e in self._entries.values() if e.recipient == recipient]

    def add(self, entry: OutboxEntry) -> None:
        """Track ``entry`` (idempotent by id: a second add replaces the first)."""
        self._set(entry)

    def _set(self, entry: OutboxEntry) -> None:
        self._entries[entry.message_id] = entry
        heapq.heappush(self._heap, (self._wake(entry), entry.message_id))

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next run (``None``: nothing pending)."""
        while self._heap:
            when, message_id = self._heap[0]
            entry = self._entries.get(message_id)
            if entry is not None and when == self._wake(entry):
                return when
            heapq.heappop(self._heap)
        return None

    @staticmethod
    def _wake(entry: OutboxEntry) -> float:
        return min(entry.next_attempt_at, entry.expires_at)

    def handle_timer(self, now: float) -> None:
        while (when := self.get_timer()) is not None and when <= now:
            _, message_id = heapq.heappop(self._heap)
            entry = self._entries[message_id]
            if now >= entry.expires_at:
                self._fail(entry, "expired")
                continue
            attempt = entry.attempts + 1
            self._set(replace(entry, attempts=attempt, next_attempt_at=now + self._backoff(entry)))
            self._events.append(Attempt(message_id, entry.recipient, attempt))

    def _retry_at(self, entry: OutboxEntry, now: float) -> float:
        """A stored entry waits in the mailbox (until expiry or reachability), others back off."""
        if entry.state == "stored":
            return entry.expires_at
        return now + self._policy.delay(entry.attempts, self._rng)

    def _backoff(self, entry: OutboxEntry) -> float:
        return self._policy.ack_timeout + self._policy.delay(entry.attempts, self._rng)

    def report(self, message_id: bytes, outcome: Outcome, now: float) -> None:
        """Record what happened to an attempt (or a receipt/refusal that arrived)."""
        entry = self._entries.get(message_id)
        if entry is None:
            return  # already finished: a late duplicate receipt or result
        if outcome in ("delivered", "read"):
            del self._entries[message_id]
            self._events.append(StateChanged(message_id, outcome))
        elif outcome == "refused":
            self._fail(entry, "refused")
        elif outcome == "unreachable":
            self._set(replace(entry, next_attempt_at=self._retry_at(entry, now)))
        else:
            self._advance(entry, outcome, now)

    def _advance(self, entry: OutboxEntry, state: State, now: float) -> None:
        merged = merge_state(entry.state, state)
        wait = entry.expires_at if merged == "stored" else now + self._backoff(entry)
        self._set(replace(entry, state=merged, next_attempt_at=wait))
        if merged != entry.state:
            self._events.append(StateChanged(entry.message_id, merged))

    def _fail(self, entry: OutboxEntry, reason: str) -> None:
        del self._entries[entry.message_id]
        self._events.append(StateChanged(entry.message_id, "failed", reason))
        self._events.append(Expired(entry.message_id))

    def peer_reachable(self, recipient: bytes, now: float) -> None:
        """A live connection to ``recipient`` exists: retry all its entries now.

        Stored entries too: the recipient de-duplicates and answers with a receipt, which is
        how a sender learns of a mailbox delivery whose receipt was lost.
        """
        for entry in self.pending_for(recipient):
            if entry.next_attempt_at > now:
                self._set(replace(entry, next_attempt_at=now))

    def next_event(self) -> OutboxEvent | None:
        if self._event_pos >= len(self._events):
            self._events.clear()
            self._event_pos = 0
            return None
        event = self._events[self._event_pos]
        self._event_pos += 1
        return event


# --------------------------------------------------------------------------- receive order

T = TypeVar("T")


@dataclass(slots=True)
class ReceiveOrder(Generic[T]):
    """Release a conversation's incoming messages in the sender's order (pure, sans-I/O).

    The caller de-duplicates by message id first; this machine only orders. ``next_seq`` is
    the next sequence number to show (``None``: nothing received yet, so the first arrival
    sets it, which also copes with a sender or receiver that deleted the conversation).
    ``receive(seq, item, now)`` returns ``(is_new, released)``: a ``seq`` already held is a
    duplicate; ``next_seq`` releases itself and every held successor; a ``seq`` below
    ``next_seq`` (a straggler after a skipped gap) is released at once. A message behind a
    gap is held (``held`` is what the node persists) until the gap fills, or ``gap_timeout``
    after the oldest held arrival (the missing one may have expired at the sender), or when
    more than ``max_held`` wait: then the gap is skipped. State and memory are bounded.
    """

    next_seq: int | None = None
    gap_timeout: float = 60.0
    max_held: int = 4096
    held: dict[int, tuple[float, T]] = field(default_factory=dict)

    def receive(self, seq: int, item: T, now: float) -> tuple[bool, list[tuple[int, T]]]:
        if seq in self.held:
            return False, []
        if self.next_seq is None:
            self.next_seq = seq
        if seq < self.next_seq:
            return True, [(seq, item)]
        self.held[seq] = (now, item)
        released = self._release_run()
        if len(self.held) > self.max_held:
            released += self._skip_gap()
        return True, released

    def _release_run(self) -> list[tuple[int, T]]:
        released: list[tuple[int, T]] = []
        while self.next_seq is not None and self.next_seq in self.held:
            released.append((self.next_seq, self.held.pop(self.next_seq)[1]))
            self.next_seq += 1
        return released

    def _skip_gap(self) -> list[tuple[int, T]]:
        self.next_seq = min(self.held)
        return self._release_run()

    def get_timer(self) -> float | None:
        if not self.held:
            return None
        return min(arrived for arrived, _ in self.held.values()) + self.gap_timeout

    def handle_timer(self, now: float) -> list[tuple[int, T]]:
        """Skip gaps that waited too long; returns what that releases, in order."""
        released: list[tuple[int, T]] = []
        while (timer := self.get_timer()) is not None and timer <= now:
            released += self._skip_gap()
        return released


# --------------------------------------------------------------------------- receipts


def make_receipt(
    identity: Identity,
    kind: ReceiptKind,
    sender: PeerId,
    message_ids: Iterable[bytes],
    now: float,
) -> Receipt:
    """A receipt signed by ``identity`` (the recipient) for messages ``sender`` wrote."""
    ids = list(message_ids)
    if not 1 <= len(ids) <= MAX_RECEIPT_IDS:
        raise LocalProtocolError("a receipt covers 1..256 ids", code="messaging.bad_receipt")
    body = _ReceiptBody(int(kind), sender.key, identity.peer_id.key, now, ids)
    return Receipt(body, identity.sign(RECEIPT_DOMAIN, wire.encode_message(body)))


def verify_receipt(receipt: Receipt, *, signer: PeerId, sender: PeerId) -> ReceiptKind:
    """Check that ``signer`` signed ``receipt`` for messages of ``sender``; return its kind.

    Raises :class:`RemoteProtocolError` (``receipt.mismatch``) for a receipt about other
    peers and :class:`~node.errors.InvalidSignatureError` for a bad signature.
    """
    body = receipt.body
    if body.recipient != signer.key or body.sender != sender.key:
        raise RemoteProtocolError("receipt names other peers", code="receipt.mismatch")
    verify(signer.key, RECEIPT_DOMAIN, wire.encode_message(body), receipt.signature)
    return ReceiptKind(body.kind)


# --------------------------------------------------------------------------- policy

Policy = Literal["deny", "confirm", "allow"]
POLICIES: tuple[Policy, ...] = ("deny", "confirm", "allow")
ConversationStatus = Literal["none", "request", "accepted", "declined"]


class Verdict(StrEnum):
    """What to do with an incoming message, decided before any expensive work."""

    DROP = "drop"  # blocked: no decryption, no storage, no answer
    REFUSE = "refuse"  # tell the sender it was refused (policy deny, or a declined request)
    REQUEST = "request"  # store as a chat request, show nothing until accepted
    ACCEPT = "accept"  # store and show


def decide(
    policy: Policy, *, blocked: bool, is_contact: bool, status: ConversationStatus
) -> Verdict:
    """The acceptance decision for a message from a peer.

    Blocked peers are dropped silently. Contacts, and conversations we started or accepted,
    are always accepted. A declined request is refused. Otherwise (a stranger) the policy
    decides: ``deny`` refuses, ``confirm`` makes (or adds to) a request, ``allow`` accepts.
    """
    if blocked:
        return Verdict.DROP
    if is_contact or status == "accepted":
        return Verdict.ACCEPT
    if status == "declined" or policy == "deny":
        return Verdict.REFUSE
    return Verdict.REQUEST if policy == "confirm" else Verdict.ACCEPT


def parse_hostport(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to ``(host, port)``; :class:`UsageError` otherwise."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"not HOST:PORT: {text[:80]!r}", code="usage.bad_address")
    return host, int(port)
