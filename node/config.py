"""Transport limits and timings (pure): every bound the transport enforces is named here.

Nothing in ``node/transport.py`` or ``node/connection.py`` is implicit: a number that limits what
a peer can make us hold or do comes from :class:`TransportConfig`. When a remote peer exceeds a
limit, the transport refuses *that* peer (a QUIC close or stream reset carrying the error code
as its reason) and keeps serving everyone else; when the local caller exceeds one, the call
raises :class:`~node.errors.LimitExceededError` with ``fault == "remote"`` only if a peer caused
it, otherwise :class:`~node.errors.LocalProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.errors import ConfigError
from node.wire import DEFAULT_MAX_FRAME, LENGTH_PREFIX

__all__ = ["TransportConfig"]


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Limits and timeouts of one node's QUIC transport (seconds, bytes, counts).

    Connections
        ``max_connections``: authenticated plus in-handshake connections, both directions.
        ``max_connections_per_ip``: the same, per remote IP address (inbound and outbound;
        loopback is not exempt: many local test nodes need a higher value).
        ``max_handshakes_per_second_per_ip`` / ``handshake_burst``: a token bucket per remote IP
        applied to new inbound connections (after address validation by Retry).
        ``max_tracked_ips``: size cap of the per-IP table (oldest idle entries are evicted).
    Timing
        ``handshake_timeout``: from the first datagram to a verified identity proof; an
        unauthenticated connection is dropped when it expires.
        ``idle_timeout``: QUIC idle timeout; keepalive pings go out every third of it.
        ``request_timeout``: default budget of :meth:`Connection.request` and of waiting for
        send credit.
        ``close_timeout``: how long a graceful close waits for the peer before dropping.
    Frames and buffers
        ``max_frame_size``: largest frame body accepted (checked before buffering).
        ``control_window``: bytes of requests and one-way frames a peer may have in flight
        towards us on the control stream (credit-based; must hold at least one largest frame).
        ``bulk_window``: the same per bulk stream.
        ``max_streams_per_connection``: concurrently open bulk streams opened by the peer.
        ``quic_handshake_window``: QUIC receive window (per stream and per connection) until the
        peer is authenticated; ``quic_stream_window`` / ``quic_connection_window``: the sliding
        windows afterwards (how far a peer may send past what was delivered in order). They
        bound what QUIC itself buffers for a peer, out-of-order data included.
        ``max_pending_requests``: our own requests awaiting a response, per connection.
    Dialing
        ``dial_attempts``, ``backoff_initial``, ``backoff_max``, ``backoff_factor``,
        ``backoff_jitter``: reconnect policy (see :mod:`node.backoff`).
    """

    max_connections: int = 512
    max_connections_per_ip: int = 64
    max_handshakes_per_second_per_ip: float = 20.0
    handshake_burst: int = 40
    max_tracked_ips: int = 4096
    handshake_timeout: float = 5.0
    idle_timeout: float = 30.0
    request_timeout: float = 10.0
    close_timeout: float = 1.0
    max_frame_size: int = DEFAULT_MAX_FRAME
    control_window: int = 2 * (DEFAULT_MAX_FRAME + LENGTH_PREFIX.size)
    bulk_window: int = 2 * (DEFAULT_MAX_FRAME + LENGTH_PREFIX.size)
    max_streams_per_connection: int = 16
    quic_handshake_window: int = 256 * 1024
    quic_stream_window: int = 4 << 20
    quic_connection_window: int = 16 << 20
    max_pending_requests: int = 1024
    dial_attempts: int = 3
    backoff_initial: float = 0.2
    backoff_max: float = 30.0
    backoff_factor: float = 2.0
    backoff_jitter: float = 0.5

    def __post_init__(self) -> None:
        counts = (
            self.max_connections,
            self.max_connections_per_ip,
            self.handshake_burst,
            self.max_tracked_ips,
            self.max_streams_per_connection,
            self.max_pending_requests,
            self.dial_attempts,
            self.quic_handshake_window,
            self.quic_stream_window,
            self.quic_connection_window,
        )
        if any(type(n) is not int or n < 1 for n in counts):
            raise ConfigError("transport counts must be positive integers")
        times = (
            self.max_handshakes_per_second_per_ip,
            self.handshake_timeout,
            self.idle_timeout,
            self.request_timeout,
            self.close_timeout,
            self.backoff_initial,
            self.backoff_max,
        )
        if any(not t > 0 for t in times):
            raise ConfigError("transport timings and rates must be positive")
        if not 64 <= self.max_frame_size <= 1 << 26:
            raise ConfigError("max_frame_size must be within 64 B .. 64 MiB")
        smallest_window = self.max_frame_size + LENGTH_PREFIX.size
        if min(self.control_window, self.bulk_window) < smallest_window:
            raise ConfigError("credit windows must hold at least one largest frame")
        if not self.quic_handshake_window <= self.quic_stream_window <= self.quic_connection_window:
            raise ConfigError("QUIC windows: handshake <= stream <= connection")
        if self.backoff_factor < 1 or not 0 <= self.backoff_jitter <= 1:
            raise ConfigError("backoff_factor must be >= 1 and backoff_jitter within 0..1")

    @property
    def keepalive_interval(self) -> float:
        """A third of the idle timeout: two pings may be lost before the link idles out."""
        return self.idle_timeout / 3
