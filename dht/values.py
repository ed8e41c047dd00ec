"""What the DHT accepts as a value, decided by a validator passed in by the node.

The DHT layer knows nothing about peers: it asks a :class:`Validator` whether ``value`` may be
stored under ``key`` at time ``now``, and learns the value's ``seq`` and absolute expiry. Of two
accepted values for one key, :func:`newer` decides (highest ``seq``, ties broken by the larger
bytes, exactly like :func:`node.records.select`), so every honest node converges on one value and
a stale or replayed value can never replace a newer one.

:class:`PeerRecordValidator` is the validator for peer records: the value must be a valid
:class:`node.records.PeerRecord` *and* the key must be that peer's discovery key, so nobody can
file a (validly signed) record of one peer under another peer's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from node import records
from node.errors import InvalidRecordError

__all__ = ["Accepted", "PeerRecordValidator", "Validator", "newer"]


@dataclass(frozen=True, slots=True)
class Accepted:
    """A value that passed its validator: its bytes, ``seq`` and absolute expiry (unix s)."""

    value: bytes
    seq: int
    expires: float


class Validator(Protocol):
    def check(self, key: bytes, value: bytes, now: float) -> Accepted:
        """Return the accepted value or raise :class:`node.errors.RemoteProtocolError`."""
        ...


def newer(candidate: Accepted, current: Accepted | None) -> bool:
    """Whether ``candidate`` should replace ``current`` (strictly newer; equal is not newer)."""
    if current is None:
        return True
    return (candidate.seq, candidate.value) > (current.seq, current.value)


class PeerRecordValidator:
    """Accept signed peer records filed under their owner's discovery key."""

    def check(self, key: bytes, value: bytes, now: float) -> Accepted:
        record = records.validate(value, now)
        if records.discovery_key(record.peer_id) != key:
            raise InvalidRecordError(
                "record stored under another peer's key", code="record.wrong_key"
            )
        return Accepted(value, record.seq, float(record.expires))
