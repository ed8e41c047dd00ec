"""Admission of connections against the configured limits (pure).

Counts connections (in handshake or open, both directions) in total and per remote IP, and
rate-limits new inbound handshakes per IP. The transport asks before it creates any state and
refuses with the returned reason (a dotted error code, then a message).
"""

from __future__ import annotations

from node.backoff import TokenBuckets
from node.config import TransportConfig

__all__ = ["Admission"]


class Admission:
    """Connection counts and handshake rates; ``now`` is passed in."""

    def __init__(self, config: TransportConfig) -> None:
        self._config = config
        self._total = 0
        self._per_ip: dict[str, int] = {}
        self._handshakes = TokenBuckets(
            config.max_handshakes_per_second_per_ip,
            config.handshake_burst,
            config.max_tracked_ips,
        )

    def __len__(self) -> int:
        return self._total

    def refusal(self, ip: str, *, inbound: bool, now: float) -> str | None:
        """Why a new connection with ``ip`` must be refused, or ``None`` to admit it.

        An inbound admission also takes a handshake token from ``ip``'s bucket.
        """
        if self._total >= self._config.max_connections:
            return "limit.connections: too many connections"
        if self._per_ip.get(ip, 0) >= self._config.max_connections_per_ip:
            return "limit.connections_per_ip: too many connections from this address"
        if inbound and not self._handshakes.allow(ip, now):
            return "limit.handshake_rate: too many handshakes from this address"
        return None

    def add(self, ip: str) -> None:
        self._total += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1

    def remove(self, ip: str) -> None:
        self._total -= 1
        remaining = self._per_ip.get(ip, 1) - 1
        if remaining > 0:
            self._per_ip[ip] = remaining
        else:
            self._per_ip.pop(ip, None)

    def tracked_ips(self) -> int:
        """How many IPs have connections (for tests of bounded state)."""
        return len(self._per_ip)
