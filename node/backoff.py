"""Pacing policies (pure): reconnect backoff with jitter, and per-key token buckets.

Jitter spreads the retries of many nodes that lost the same peer at the same moment (a
rendezvous restart) so they do not reconnect in lock step. Randomness comes in as ``rng`` (the
house :data:`~node.crypto.Rng` shape), so tests are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.crypto import Rng
from node.errors import ConfigError

__all__ = ["Backoff", "TokenBuckets"]

_UNIFORM_BYTES = 7  # 56 bits: plenty for a uniform float in [0, 1)


def _uniform(rng: Rng) -> float:
    return int.from_bytes(rng(_UNIFORM_BYTES), "big") / float(1 << (8 * _UNIFORM_BYTES))


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number ``attempt`` (0-based).

    ``base = min(maximum, initial * factor ** attempt)``; the delay is drawn uniformly from
    ``[base * (1 - jitter), base]``. So delays never exceed ``maximum``, never go below
    ``initial * (1 - jitter)``, and ``jitter=0`` gives the plain exponential sequence.
    """

    initial: float = 0.2
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ConfigError("backoff needs 0 < initial <= maximum")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ConfigError("backoff needs factor >= 1 and jitter within 0..1")

    def base(self, attempt: int) -> float:
        """The un-jittered delay of ``attempt`` (saturates at ``maximum`` without overflow)."""
        if attempt < 0:
            raise ConfigError("attempt must be >= 0")
        delay = self.initial
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.maximum:
                return self.maximum
        return delay

    def delay(self, attempt: int, rng: Rng) -> float:
        """A jittered delay for ``attempt``, in ``[base * (1 - jitter), base]``."""
        base = self.base(attempt)
        return base * (1 - self.jitter * _uniform(rng))


class TokenBuckets:
    """Per-key token buckets (``rate`` tokens/s, at most ``burst``), with a bounded key table.

    Used for handshakes per second per remote IP. When ``max_keys`` keys are tracked, the least
    recently used key is forgotten (it starts again with a full bucket: the cap bounds memory,
    the rate still bounds any one busy key).
    """

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ConfigError("token buckets need rate > 0, burst >= 1, max_keys >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        """Take one token for ``key`` if it has one."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        if len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        self._buckets[key] = (tokens, now)
        return allowed
