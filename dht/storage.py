"""Validated, bounded storage for the DHT (implements kademlia's ``IStorage``).

Every write goes through :meth:`ValidatedStorage.offer`, whichever path it comes from (a STORE
RPC, our own publish, the library's republish via ``__setitem__``):

- the value must pass the :class:`~dht.values.Validator` for its key (signature, expiry, key
  binding) and be at most ``max_value_size`` bytes;
- it replaces the held value only if :func:`~dht.values.newer` says so, so a republished or
  replayed old value can never roll a newer one back;
- quotas: at most ``max_entries`` keys and ``max_bytes`` of values in total, and at most
  ``max_per_source`` keys last written by one source (the sender's IP; our own writes are
  exempt). A full store refuses new keys; it never evicts valid data for a stranger.

Reads never return an expired value; expired entries are dropped lazily. Nothing is ever
pickled or written to disk.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kademlia.storage import IStorage

from dht.values import Accepted, Validator, newer
from node.errors import RemoteProtocolError

__all__ = ["LOCAL_SOURCE", "StorageLimits", "ValidatedStorage"]

LOCAL_SOURCE = ""
"""The ``source`` of our own writes: exempt from the per-source quota."""


@dataclass(frozen=True, slots=True)
class StorageLimits:
    max_value_size: int = 2048
    max_entries: int = 10_000
    max_bytes: int = 8 << 20
    max_per_source: int = 512


@dataclass(slots=True)
class _Entry:
    accepted: Accepted
    source: str
    stored_at: float  # monotonic: when this value was last stored or re-confirmed


class ValidatedStorage(IStorage):  # type: ignore[misc]
    """Key (20 bytes) -> newest valid value. ``clock`` is wall time for expiry checks."""

    def __init__(
        self,
        validator: Validator,
        limits: StorageLimits = StorageLimits(),
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._validator = validator
        self.limits = limits
        self._clock = clock
        self._monotonic = monotonic
        self._data: dict[bytes, _Entry] = {}
        self._per_source: Counter[str] = Counter()
        self._bytes = 0
        self.refused: Counter[str] = Counter()
        """Refusals by reason code, for metrics and tests."""

    # ------------------------------------------------------------------ writes

    def offer(self, key: object, value: object, source: str) -> bool:
        """Store ``value`` if valid, newer than what we hold and within quota.

        Returns True if the store now holds exactly this value (newly stored or already held),
        False if it was refused; the reason is counted in :attr:`refused`.
        """
        accepted = self.check(key, value)
        if accepted is None:
            return False
        assert isinstance(key, bytes)
        current = self._live(key)
        if current is not None and current.accepted.value == accepted.value:
            current.stored_at = self._monotonic()
            return True
        if current is not None and not newer(accepted, current.accepted):
            self._refuse("stale")
            return False
        problem = self._quota_problem(accepted, source, current)
        if problem is not None:
            self._refuse(problem)
            return False
        if current is not None:
            self._forget(key)
        self._data[key] = _Entry(accepted, source, self._monotonic())
        self._per_source[source] += 1
        self._bytes += len(accepted.value)
        return True

    def check(self, key: object, value: object) -> Accepted | None:
        """Validate without storing; None (and a counted refusal) if invalid."""
        if type(key) is not bytes or len(key) != 20:
            self._refuse("bad_key")
            return None
        if type(value) is not bytes or len(value) > self.limits.max_value_size:
            self._refuse("too_large")
            return None
        try:
            return self._validator.check(key, value, self._clock())
        except RemoteProtocolError as exc:
            self._refuse(exc.code)
            return None

    def _refuse(self, reason: str) -> None:
        self.refused[reason] += 1

    def _quota_problem(self, accepted: Accepted, source: str, current: _Entry | None) -> str | None:
        """The quota this write would break (after dropping expired entries), if any."""
        for attempt in range(2):
            if attempt:
                self._cull()
            growth = len(accepted.value) - (len(current.accepted.value) if current else 0)
            if current is None and len(self._data) >= self.limits.max_entries:
                problem: str | None = "quota_entries"
            elif self._bytes + growth > self.limits.max_bytes:
                problem = "quota_bytes"
            elif (
                source != LOCAL_SOURCE
                and (current is None or current.source != source)
                and self._per_source[source] >= self.limits.max_per_source
            ):
                problem = "quota_source"
            else:
                return None
        return problem

    def _forget(self, key: bytes) -> None:
        entry = self._data.pop(key)
        self._per_source[entry.source] -= 1
        if not self._per_source[entry.source]:
            del self._per_source[entry.source]
        self._bytes -= len(entry.accepted.value)

    def _cull(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._data.items() if e.accepted.expires <= now]:
            self._forget(key)

    def _live(self, key: bytes) -> _Entry | None:
        entry = self._data.get(key)
        if entry is not None and entry.accepted.expires <= self._clock():
            self._forget(key)
            return None
        return entry

    # ------------------------------------------------------------------ IStorage

    def __setitem__(self, key: bytes, value: bytes) -> None:
        """Library write path (its own ``set``/republish): validated like every other write."""
        self.offer(key, value, LOCAL_SOURCE)

    def __getitem__(self, key: bytes) -> bytes:
        entry = self._live(key) if type(key) is bytes else None
        if entry is None:
            raise KeyError(key)
        return entry.accepted.value

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        entry = self._live(key) if type(key) is bytes else None
        return default if entry is None else entry.accepted.value

    def accepted(self, key: bytes) -> Accepted | None:
        entry = self._live(key)
        return None if entry is None else entry.accepted

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, bytes]]:
        """Live values not stored or re-confirmed for ``seconds_old`` (republish candidates)."""
        self._cull()
        cutoff = self._monotonic() - seconds_old
        return [(k, e.accepted.value) for k, e in self._data.items() if e.stored_at <= cutoff]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        self._cull()
        return iter([(k, e.accepted.value) for k, e in self._data.items()])

    def __len__(self) -> int:
        self._cull()
        return len(self._data)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def source_count(self, source: str) -> int:
        return self._per_source[source]
