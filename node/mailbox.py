"""Mailbox rules of a rendezvous server (pure): quotas, TTL, idempotency, rate limits.

A mailbox holds sealed envelopes for one recipient, named by its *mailbox id* (a hash of the
recipient's PeerId). The server sees only the mailbox id, the envelope's size and expiry and the
authenticated peer that deposits it (used for rate limiting only, never stored).

:class:`MailboxBook` is the in-memory index the server keeps beside its database. It decides,
without I/O, whether a deposit is accepted; time is passed in as ``now``. Contracts:

- **Idempotency**: the envelope id is computed by the caller from the envelope bytes (never
  read from the wire). A second deposit of a known id is :class:`Accepted` with
  ``duplicate=True`` and changes nothing (not even the sender's rate budget).
- **Quotas**: per mailbox at most ``max_count`` envelopes and ``max_bytes`` bytes; one
  envelope at most ``max_envelope`` bytes. Refusals carry a stable reason code.
- **TTL**: the depositor asks for a TTL (``None`` = ``default_ttl``; a sealed envelope
  carries its own expiry, so the server passes ``expires - now``); more than ``max_ttl`` is
  refused (``mailbox.bad_ttl``), zero or less too (``mailbox.expired``). :meth:`handle_timer`
  removes what expired and returns it so the server can delete it from disk;
  :meth:`get_timer` says when to call it next.
- **Rate limits**: one token bucket per sender (``sender_rate`` tokens/s, ``sender_burst``
  capacity; :class:`node.backoff.TokenBuckets`). At most ``max_senders`` buckets are kept;
  beyond that the least recently used is forgotten (memory stays bounded). A refusal's
  ``retry_after`` is the time one token takes to refill (an upper bound of the wait).
- **Deletion only after ack**: :meth:`remove` takes a mailbox id and envelope ids and removes
  only the ids that belong to that mailbox; the server calls it after the owner's ack.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from node.backoff import TokenBuckets
from node.errors import LocalProtocolError

__all__ = [
    "DAY",
    "Accepted",
    "ExpiryHeap",
    "MailboxBook",
    "MailboxLimits",
    "Refused",
    "StoredEnvelope",
]

DAY = 86_400.0
MAILBOX_ID_SIZE = 32
ENVELOPE_ID_SIZE = 32
_HEAP_SLACK = 64


@dataclass(frozen=True, slots=True)
class MailboxLimits:
    """Operator-tunable limits; the defaults suit a small town's server."""

    max_count: int = 2_000
    max_bytes: int = 32 << 20
    max_envelope: int = 64 << 10
    default_ttl: float = 14 * DAY
    max_ttl: float = 30 * DAY
    sender_rate: float = 50.0
    sender_burst: int = 500
    max_senders: int = 100_000

    def __post_init__(self) -> None:
        if min(self.max_count, self.max_bytes, self.max_envelope, self.max_senders) < 1:
            raise LocalProtocolError("mailbox limits must be positive", code="config.invalid")
        if not 1.0 <= self.default_ttl <= self.max_ttl or self.sender_rate <= 0:
            raise LocalProtocolError(
                "mailbox TTL/rate limits are inconsistent", code="config.invalid"
            )


@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    """What the book knows of one stored envelope (its bytes live in the database)."""

    envelope_id: bytes
    mailbox_id: bytes
    size: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class Accepted:
    envelope: StoredEnvelope
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """A refusal: ``code`` is stable (README Protocol section), ``retry_after`` in seconds."""

    code: str
    message: str
    retry_after: float | None = None


class ExpiryHeap:
    """A lazy min-heap of ``(expires_at, key)`` over a table of live values.

    Entries are not removed when their key is deleted or refreshed: :meth:`due` returns keys
    whose entry is due and the caller re-checks the live value. So that a peer refreshing or
    churning keys cannot grow the heap without bound, it is rebuilt from ``live()`` whenever it
    holds more than twice the live count plus :data:`_HEAP_SLACK` entries (amortised O(1)).
    """

    def __init__(
        self, live: Callable[[], Iterable[tuple[float, bytes]]], count: Callable[[], int]
    ) -> None:
        self._heap: list[tuple[float, bytes]] = []
        self._live, self._count = live, count

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, expires_at: float, key: bytes) -> None:
        heapq.heappush(self._heap, (expires_at, key))
        if len(self._heap) > 2 * self._count() + _HEAP_SLACK:
            self._heap = list(self._live())
            heapq.heapify(self._heap)

    def next(self) -> float | None:
        """When the earliest entry is due (a stale entry may make this early: harmless)."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[bytes]:
        """Pop and return the keys of every entry due at ``now``."""
        keys: list[bytes] = []
        while self._heap and self._heap[0][0] <= now:
            keys.append(heapq.heappop(self._heap)[1])
        return keys


@dataclass(slots=True)
class _Box:
    entries: dict[bytes, StoredEnvelope] = field(default_factory=dict)
    size: int = 0


class MailboxBook:
    """The index of stored envelopes with the deposit rules (see module doc)."""

    def __init__(self, limits: MailboxLimits | None = None) -> None:
        self.limits = limits or MailboxLimits()
        self._boxes: dict[bytes, _Box] = {}
        self._by_id: dict[bytes, StoredEnvelope] = {}
        self._expiry = ExpiryHeap(
            lambda: ((e.expires_at, k) for k, e in self._by_id.items()), lambda: len(self._by_id)
        )
        self._bytes = 0
        self._senders = TokenBuckets(
            self.limits.sender_rate, self.limits.sender_burst, self.limits.max_senders
        )
        self._refill = 1.0 / self.limits.sender_rate

    # -- queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def get(self, envelope_id: bytes) -> StoredEnvelope | None:
        return self._by_id.get(envelope_id)

    def usage(self, mailbox_id: bytes) -> tuple[int, int]:
        """(envelope count, bytes) held for a mailbox."""
        box = self._boxes.get(mailbox_id)
        return (len(box.entries), box.size) if box else (0, 0)

    def listing(
        self, mailbox_id: bytes, limit: int, max_bytes: int | None = None
    ) -> list[StoredEnvelope]:
        """The oldest envelopes of a mailbox, at most ``limit`` and (beyond the first)
        ``max_bytes`` in total, in deposit order."""
        box = self._boxes.get(mailbox_id)
        out: list[StoredEnvelope] = []
        total = 0
        for entry in box.entries.values() if box else ():
            if len(out) >= limit or (
                out and max_bytes is not None and total + entry.size > max_bytes
            ):
                break
            out.append(entry)
            total += entry.size
        return out

    # -- changes ------------------------------------------------------------------------------

    def load(self, entries: Iterable[StoredEnvelope]) -> None:
        """Rebuild the index from the database at start (in deposit order, no rule checks)."""
        for entry in entries:
            self._insert(entry)

    def deposit(
        self,
        mailbox_id: bytes,
        envelope_id: bytes,
        size: int,
        ttl: float | None,
        *,
        sender: bytes,
        now: float,
    ) -> Accepted | Refused:
        """Decide a deposit; on acceptance the envelope is indexed (call :meth:`remove` if the
        server then fails to store it)."""
        if len(mailbox_id) != MAILBOX_ID_SIZE or len(envelope_id) != ENVELOPE_ID_SIZE:
            raise LocalProtocolError("mailbox and envelope ids are 32 bytes", code="mailbox.bad_id")
        known = self._by_id.get(envelope_id)
        if known is not None:
            if known.mailbox_id != mailbox_id:
                return Refused(
                    "mailbox.id_conflict", "envelope id already used for another mailbox"
                )
            return Accepted(known, duplicate=True)
        refusal = self._check(mailbox_id, size, ttl)
        if refusal is not None:
            return refusal
        if not self._senders.allow(sender.hex(), now):
            return Refused(
                "mailbox.rate_limited", "too many deposits: slow down", retry_after=self._refill
            )
        lifetime = self.limits.default_ttl if ttl is None else ttl
        entry = StoredEnvelope(envelope_id, mailbox_id, size, now + lifetime)
        self._insert(entry)
        return Accepted(entry, duplicate=False)

    def _check(self, mailbox_id: bytes, size: int, ttl: float | None) -> Refused | None:
        limits = self.limits
        if size < 1 or size > limits.max_envelope:
            return Refused("mailbox.too_large", f"envelope must be 1..{limits.max_envelope} bytes")
        if ttl is not None and ttl <= 0:
            return Refused("mailbox.expired", "the envelope has already expired")
        if ttl is not None and ttl > limits.max_ttl:
            return Refused("mailbox.bad_ttl", f"ttl must be at most {limits.max_ttl:.0f} seconds")
        count, used = self.usage(mailbox_id)
        if count + 1 > limits.max_count:
            return Refused("mailbox.full_count", f"mailbox holds {limits.max_count} envelopes")
        if used + size > limits.max_bytes:
            return Refused("mailbox.full_bytes", f"mailbox holds {limits.max_bytes} bytes")
        return None

    def _insert(self, entry: StoredEnvelope) -> None:
        box = self._boxes.setdefault(entry.mailbox_id, _Box())
        box.entries[entry.envelope_id] = entry
        box.size += entry.size
        self._bytes += entry.size
        self._by_id[entry.envelope_id] = entry
        self._expiry.push(entry.expires_at, entry.envelope_id)

    def remove(self, mailbox_id: bytes, envelope_ids: Iterable[bytes]) -> list[StoredEnvelope]:
        """Remove the given ids *of this mailbox*; ids of other mailboxes are ignored."""
        box = self._boxes.get(mailbox_id)
        removed: list[StoredEnvelope] = []
        if box is None:
            return removed
        for envelope_id in envelope_ids:
            entry = box.entries.pop(envelope_id, None)
            if entry is not None:
                box.size -= entry.size
                self._bytes -= entry.size
                del self._by_id[envelope_id]
                removed.append(entry)
        if not box.entries:
            del self._boxes[mailbox_id]
        return removed

    # -- timers -------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When the next envelope expires (possibly early: harmless)."""
        return self._expiry.next()

    def handle_timer(self, now: float) -> list[StoredEnvelope]:
        """Remove and return every envelope whose expiry is at or before ``now``."""
        expired: list[StoredEnvelope] = []
        for envelope_id in self._expiry.due(now):
            entry = self._by_id.get(envelope_id)
            if entry is not None and entry.expires_at <= now:
                expired.extend(self.remove(entry.mailbox_id, [envelope_id]))
        return expired
