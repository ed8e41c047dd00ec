"""QUIC transport: the only module that imports aioquic.

One UDP socket per node both dials and accepts; datagrams are routed to connections by
destination connection ID (aioquic's ``connect()`` would open a socket per dial). The socket is
read in batches (up to 64 datagrams per wake-up) and each connection transmits once at the end
of the loop turn, so ACKs coalesce and a handler's answer shares a packet with them. ALPN is
``peerline/1``; the TLS certificate is self-signed with the node's Ed25519 identity key; Retry
validates every inbound address before any per-connection state exists; there are no session
tickets and no 0-RTT (resumed handshakes carry no certificate).

Inbound limits (total connections, connections per IP, handshakes per second per IP) are
checked on the first address-validated Initial and refused with a QUIC ``CONNECTION_REFUSED``
close whose reason is the limit's error code, before any TLS work.

Authentication, framing and credit live in :mod:`node.connection` and :mod:`node.auth`;
:mod:`node.peers` keeps one connection per pair of peers and the dialing policy. This module
turns aioquic events into calls on :class:`~node.connection.Connection`.

Usage (application frame type ids start at 0x10)::

    @wire.frame(0x0100)
    @dataclass(frozen=True, slots=True)
    class Hello(wire.Message):
        text: Annotated[str, wire.Str(max=100)]

    async def handler(conn: Connection, message: wire.Message) -> wire.Message | None:
        return Hello("hi")  # the response, if the message was a request

    async with Transport(identity, TransportConfig()) as node:  # 127.0.0.1, a free port
        node.set_handler(handler)
        conn = await node.dial(peer_id, [("127.0.0.1", 4433)])
        reply = await conn.request(Hello("hello"))

Private aioquic API (pinned aioquic==1.7.2) is used in two places only, both tested:
:func:`peer_certificate_key` (no public accessor for the peer certificate) and
:class:`_CappedQuicConnection` (aioquic grows receive windows without bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported, untyped
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY, QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler

from node.admission import Admission
from node.backoff import Backoff
from node.bulk import BulkStream
from node.certificate import certificate_key, self_signed_certificate
from node.channel import CloseCode, CloseInfo
from node.config import TransportConfig
from node.connection import BulkHandler, Connection, Handler
from node.crypto import Rng, random_bytes
from node.errors import LimitExceededError, LocalProtocolError
from node.identity import Identity, PeerId
from node.peers import Address, Dialer, PeerTable
from node.udp import bind_udp, plain_ip, wire_address

__all__ = [
    "ALPN",
    "Address",
    "BulkStream",
    "Connection",
    "Transport",
    "peer_certificate_key",
]

log = logging.getLogger(__name__)

ALPN = "peerline/1"
_CID_LENGTH = 8
_READ_BATCH = 64  # datagrams read per socket wake-up
_MAX_DATAGRAM = 65535


def peer_certificate_key(quic: QuicConnection) -> bytes | None:
    """The raw Ed25519 key of the peer's TLS certificate, or ``None``.

    Private API (``tls._peer_certificate``, no public accessor in aioquic 1.7.2). TLS has
    already checked CertificateVerify with this key, so the peer holds it.
    """
    return certificate_key(getattr(getattr(quic, "tls", None), "_peer_certificate", None))


class _CappedQuicConnection(QuicConnection):
    """A QuicConnection whose receive windows are sliding: delivered bytes + a fixed window.

    aioquic 1.7.2 instead doubles a limit whenever the *highest offset* received passes half of
    it, holes included, and allocates the holes: a peer sending one byte near the end of each
    new limit makes us allocate a buffer that doubles every round trip. Here a stream may run
    at most ``stream_window`` bytes past what it delivered in order, and the connection at most
    ``connection_window`` past what all streams delivered (``delivered``, kept by the link), so
    what QUIC buffers for a peer, out-of-order data included, stays within those windows.
    aioquic's own doubling is hidden from its test; the rest of each method (sending the
    limit frames) is unchanged. This and :func:`peer_certificate_key` are our only uses of
    aioquic private API.
    """

    stream_window = 0
    connection_window = 0
    delivered = 0

    def set_windows(self, stream: int, connection: int) -> None:
        """Window sizes in bytes (limits already granted to the peer never shrink)."""
        self.stream_window, self.connection_window = stream, connection

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: Any) -> None:
        limit = self._local_max_data
        target = self.delivered + self.connection_window
        if target - limit.value >= self.connection_window // 2:
            limit.value = target
        used, limit.used = limit.used, 0  # hide aioquic's doubling test
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used

    def _write_stream_limits(self, builder: QuicPacketBuilder, space: Any, stream: Any) -> None:
        receiver = stream.receiver
        if stream.max_stream_data_local:  # zero for our own unidirectional streams
            target = receiver._buffer_start + self.stream_window
            if target - stream.max_stream_data_local >= self.stream_window // 2:
                stream.max_stream_data_local = target
        highest, receiver.highest_offset = receiver.highest_offset, 0  # hide the doubling test
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = highest


def _refusal(version: int, source_cid: bytes, destination_cid: bytes, reason: str) -> bytes:
    """A server Initial closing the handshake with CONNECTION_REFUSED and ``reason``."""
    crypto = CryptoPair()
    crypto.setup_initial(cid=source_cid, is_client=False, version=version)
    builder = QuicPacketBuilder(
        host_cid=source_cid,
        is_client=False,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
        peer_cid=destination_cid,
        version=version,
    )
    phrase = reason.encode("ascii")[:100]
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(
        QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY + len(phrase)
    )
    buf.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(len(phrase))
    buf.push_bytes(phrase)
    datagrams, _ = builder.flush()
    return datagrams[0]


class _Link:
    """One QUIC connection on the shared socket; implements :class:`node.connection.Link`."""

    def __init__(
        self, transport: Transport, quic: _CappedQuicConnection, address: tuple[object, ...]
    ):
        self._transport = transport
        self._loop = transport.loop
        self.quic = quic
        self.address = address
        self.ip = plain_ip(str(address[0]))
        self.cids: set[bytes] = set()
        self.connection: Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self.disposed = False

    def start(self, expected: PeerId | None) -> Connection:
        self.connection = self._transport._new_connection(
            self, expected, (self.ip, int(str(self.address[1])))
        )
        return self.connection

    # -- Link protocol used by Connection and BulkStream

    def now(self) -> float:
        return self._loop.time()

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Queue stream data; it leaves on the next loop iteration, batched with what follows."""
        try:
            self.quic.send_stream_data(stream_id, data, end_stream=end)
        except (ValueError, AssertionError) as exc:  # stream reset/finished by the peer
            log.debug("dropped data for stream %d: %s", stream_id, exc)
            return
        self.transmit_soon()

    def transmit_soon(self) -> None:
        """Transmit at the end of this loop turn: after a datagram, the tasks it woke (a handler
        answering a request) run first, so the answer and the ACK leave in one packet."""
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    def flush(self) -> None:
        """Send what is queued now (before a close, which would discard it)."""
        self.transmit()

    def opened(self) -> None:
        """The peer is authenticated: its receive windows widen to the configured sizes."""
        config = self._transport.config
        self.quic.set_windows(config.quic_stream_window, config.quic_connection_window)

    def open_bidi_stream(self) -> int:
        stream_id = self.quic.get_next_available_stream_id(is_unidirectional=False)
        self.quic.send_stream_data(stream_id, b"")  # creates it: the next call gets a new id
        return stream_id

    def reset(self, stream_id: int, code: int) -> None:
        """Reset our sending side (aioquic 1.7.2 has no STOP_SENDING API)."""
        with contextlib.suppress(ValueError, AssertionError):
            self.quic.reset_stream(stream_id, code)
        self.transmit()

    def close(self, code: int, reason: str) -> None:
        self.quic.close(error_code=code, reason_phrase=reason)
        self.transmit()

    # -- QUIC driving

    def receive(self, data: bytes, address: tuple[object, ...]) -> None:
        """One datagram for this connection. The caller transmits after its read batch, so
        the ACKs of several datagrams leave together."""
        try:
            self.quic.receive_datagram(data, address, now=self._loop.time())
            if self.connection is None:  # an accepted connection's ClientHello: the
                self.start(None)  # challenge needs the stream limits it carries
            self._process_events()
        except Exception:  # a library bug must cost one connection, never the socket
            log.exception("QUIC connection failed on a datagram")
            self.close(CloseCode.INTERNAL, "transport.internal: datagram processing failed")

    def transmit(self) -> None:
        self._transmit_handle = None
        if self.disposed:
            return
        for data, address in self.quic.datagrams_to_send(now=self._loop.time()):
            self._transport._sendto(data, address)
        timer_at = self.quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def _handle_timer(self) -> None:
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer = self._timer_at = None
        try:
            self.quic.handle_timer(now=now)
            self._process_events()
        except Exception:
            log.exception("QUIC connection failed on a timer")
            self.close(CloseCode.INTERNAL, "transport.internal: timer processing failed")
        self.transmit()

    def _send_keepalive(self) -> None:
        self.quic.send_ping(0)
        self.transmit()
        self._keepalive = self._loop.call_later(
            self._transport.config.keepalive_interval, self._send_keepalive
        )

    def _process_events(self) -> None:
        conn = self.connection
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self.quic.delivered += len(event.data)
                if conn is not None:
                    conn.stream_data(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.HandshakeCompleted):
                if conn is not None:
                    conn.handshake_complete(peer_certificate_key(self.quic))
                self._keepalive = self._loop.call_later(
                    self._transport.config.keepalive_interval, self._send_keepalive
                )
            elif isinstance(event, events.StreamReset | events.StopSendingReceived):
                if conn is not None:
                    conn.stream_reset(event.stream_id, event.error_code)
            elif isinstance(event, events.ConnectionIdIssued):
                self._transport._add_cid(event.connection_id, self)
            elif isinstance(event, events.ConnectionIdRetired):
                self._transport._remove_cid(event.connection_id)
            elif isinstance(event, events.ConnectionTerminated):
                self._terminated(event)

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        if self.connection is not None:
            info = CloseInfo(
                event.error_code,
                event.reason_phrase,
                by_peer=True,
                transport_error=event.frame_type is not None,
            )
            self.connection.terminated(info)
        self.dispose()

    def dispose(self) -> None:
        """Forget this link: timers off, connection IDs unrouted."""
        self.disposed = True
        for handle in (self._timer, self._keepalive, self._transmit_handle):
            if handle is not None:
                handle.cancel()
        self._timer = self._keepalive = self._transmit_handle = None
        self._transport._forget(self)
        if self.connection is not None:
            self.connection.terminated(CloseInfo(CloseCode.SHUTDOWN, "transport.shutdown", False))


class Transport:
    """A node's QUIC endpoint: one socket, authenticated connections, configured limits.

    Use ``async with Transport(identity, config) as t`` (binds 127.0.0.1 on a free port) or
    ``await t.start(host, port)`` ... ``await t.aclose()``. Set the default handlers
    (:meth:`set_handler`, :meth:`set_bulk_handler`) and :meth:`on_connection` before peers can
    connect; they apply to every connection, dialed or accepted.
    """

    def __init__(
        self,
        identity: Identity,
        config: TransportConfig | None = None,
        *,
        rng: Rng = random_bytes,
    ) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        self.config = config or TransportConfig()
        self._rng = rng
        self._admission = Admission(self.config)
        self._handler: Handler | None = None
        self._bulk_handler: BulkHandler | None = None
        self._cids: dict[bytes, _Link] = {}
        self._links: set[_Link] = set()
        self._peers = PeerTable(identity.peer_id)
        self._dialer = Dialer(
            self._peers,
            self._open_client,
            self.config,
            Backoff(
                self.config.backoff_initial,
                self.config.backoff_max,
                self.config.backoff_factor,
                self.config.backoff_jitter,
            ),
            rng,
        )
        self._sock: socket.socket | None = None
        self._address: Address | None = None
        self._ipv6 = False
        self._dirty: set[_Link] = set()
        self._closing = False
        self._retry = QuicRetryTokenHandler()
        certificate, key = self_signed_certificate(identity)
        self._server_config = self._quic_config(is_client=False)
        self._server_config.certificate = certificate
        self._server_config.private_key = key
        self._client_config = self._quic_config(is_client=True)
        self.dropped_datagrams = 0

    def _quic_config(self, *, is_client: bool) -> QuicConfiguration:
        return QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            idle_timeout=self.config.idle_timeout,
            connection_id_length=_CID_LENGTH,
            verify_mode=ssl.CERT_NONE,  # we pin the key ourselves; CertificateVerify still runs
            server_name="peerline",
            max_data=self.config.quic_handshake_window,
            max_stream_data=self.config.quic_handshake_window,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind the UDP socket (``"::"`` gives a dual-stack socket).

        Raises :class:`~node.errors.ConfigError` (``transport.bind``) if it cannot be bound.
        """
        if self._sock is not None:
            raise LocalProtocolError("transport already started", code="transport.started")
        sock = await bind_udp(host, port)
        self._sock = sock
        self._ipv6 = sock.family == socket.AF_INET6
        bound_host, bound_port = sock.getsockname()[:2]
        self._address = (str(bound_host), int(bound_port))
        self.loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def address(self) -> Address:
        """The bound ``(host, port)``."""
        if self._address is None:
            raise LocalProtocolError("transport not started", code="transport.not_started")
        return self._address

    async def __aenter__(self) -> Transport:
        if self._sock is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection (reason ``transport.shutdown``), stop every task, unbind."""
        if self._closing:
            return
        self._closing = True
        dials = self._dialer.close()
        connections = [link.connection for link in self._links if link.connection is not None]
        for conn in connections:
            conn.abort(CloseCode.SHUTDOWN, "transport.shutdown: node shutting down")
        await asyncio.gather(
            *(c.wait_closed() for c in connections), *dials, return_exceptions=True
        )
        for link in list(self._links):
            link.dispose()
        if self._sock is not None:
            if self._sock.fileno() >= 0:
                self.loop.remove_reader(self._sock.fileno())
            self._sock.close()

    # ------------------------------------------------------------------ application API

    def set_handler(self, handler: Handler | None) -> None:
        """Default request/one-way handler of new connections (see :data:`Handler`)."""
        self._handler = handler

    def set_bulk_handler(self, handler: BulkHandler | None) -> None:
        self._bulk_handler = handler

    def on_connection(self, callback: Callable[[Connection], None]) -> None:
        """Call ``callback(conn)`` (synchronously) for each newly authenticated connection."""
        self._peers.on_connection(callback)

    def connection(self, peer: PeerId) -> Connection | None:
        """The open connection to ``peer``, if any."""
        return self._peers.get(peer)

    @property
    def connections(self) -> list[Connection]:
        """Every open authenticated connection."""
        return self._peers.open_connections()

    async def dial(self, peer: PeerId, addresses: Sequence[Address]) -> Connection:
        """An authenticated connection to ``peer``: see :meth:`node.peers.Dialer.dial`."""
        self._check_running()
        return await self._dialer.dial(peer, addresses)

    async def maintain(
        self,
        peer: PeerId,
        addresses: Callable[[], Sequence[Address]],
        on_connected: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        """Keep ``peer`` connected until cancelled: see :meth:`node.peers.Dialer.maintain`."""
        self._check_running()
        await self._dialer.maintain(peer, addresses, on_connected)

    # ------------------------------------------------------------------ links and limits

    def _check_running(self) -> None:
        if self._sock is None or self._closing:
            raise LocalProtocolError("transport is not running", code="transport.not_running")

    def _open_client(self, peer: PeerId, address: Address) -> Connection:
        destination = wire_address(*address, ipv6_socket=self._ipv6)
        reason = self._admission.refusal(plain_ip(address[0]), inbound=False, now=self.loop.time())
        if reason is not None:
            code, _, message = reason.partition(": ")
            raise LimitExceededError(f"cannot dial: {message}", code=code)
        quic = self._new_quic(configuration=self._client_config)
        link = self._add_link(quic, destination)
        self._add_cid(quic.host_cid, link)
        conn = link.start(peer)
        quic.connect(destination, now=self.loop.time())
        link.transmit()
        return conn

    def _new_quic(self, **kwargs: Any) -> _CappedQuicConnection:
        """A QuicConnection whose receive windows stay at the handshake size until the peer is
        authenticated (:meth:`_Link.opened` widens them)."""
        quic = _CappedQuicConnection(**kwargs)
        window = self.config.quic_handshake_window
        quic.set_windows(window, window)
        return quic

    def _add_link(self, quic: _CappedQuicConnection, address: tuple[object, ...]) -> _Link:
        link = _Link(self, quic, address)
        self._links.add(link)
        self._admission.add(link.ip)
        return link

    def _new_connection(
        self, link: _Link, expected: PeerId | None, remote_address: Address
    ) -> Connection:
        conn = Connection(
            link,
            self.identity,
            self.config,
            self,
            expected=expected,
            remote_address=remote_address,
            rng=self._rng,
        )
        conn.set_handler(self._handler)
        conn.set_bulk_handler(self._bulk_handler)
        return conn

    def _add_cid(self, cid: bytes, link: _Link) -> None:
        self._cids[cid] = link
        link.cids.add(cid)

    def _remove_cid(self, cid: bytes) -> None:
        link = self._cids.pop(cid, None)
        if link is not None:
            link.cids.discard(cid)

    def _forget(self, link: _Link) -> None:
        for cid in link.cids:
            self._cids.pop(cid, None)
        link.cids.clear()
        if link in self._links:
            self._links.discard(link)
            self._admission.remove(link.ip)

    def _sendto(self, data: bytes, address: tuple[object, ...]) -> None:
        """Send one datagram; a full socket buffer drops it (QUIC recovers lost packets)."""
        if self._sock is None or self._sock.fileno() < 0:
            return
        try:
            self._sock.sendto(data, address)
        except OSError as exc:  # EAGAIN, unreachable network, ...
            log.debug("datagram to %s not sent: %s", address[0], exc)

    # ------------------------------------------------------------------ inbound datagrams

    def _on_readable(self) -> None:
        """Read up to a batch of datagrams, route them, then transmit once per connection.

        Reading a batch per wake-up (asyncio's datagram transport reads one) saves a loop turn
        per datagram, and lets the ACKs for a burst leave in one packet with any answer.
        """
        sock = self._sock
        if sock is None:
            return
        for _ in range(_READ_BATCH):
            try:
                data, address = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. an ICMP error about an earlier send
                log.debug("UDP receive error: %s", exc)
                continue
            try:  # nothing a datagram contains may raise out of here
                self._route(data, address)
            except Exception:
                self.dropped_datagrams += 1
                log.exception("datagram from %s could not be processed", address[0])
        dirty, self._dirty = self._dirty, set()
        for link in dirty:
            link.transmit_soon()

    def _route(self, data: bytes, address: tuple[object, ...]) -> None:
        if data and not data[0] & 0x80:  # short header: our CID follows the first byte
            link = self._cids.get(data[1 : 1 + _CID_LENGTH])
            if link is not None:
                link.receive(data, address)
                self._dirty.add(link)
            else:
                self.dropped_datagrams += 1
            return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=_CID_LENGTH)
        except ValueError:
            self.dropped_datagrams += 1
            return
        link = self._cids.get(header.destination_cid)
        if link is not None:
            link.receive(data, address)
            self._dirty.add(link)
            return
        if (
            self._closing
            or header.packet_type != QuicPacketType.INITIAL
            or len(data) < SMALLEST_MAX_DATAGRAM_SIZE
            or header.version not in self._server_config.supported_versions
        ):
            self.dropped_datagrams += 1
            return
        self._accept(data, address, header)

    def _accept(self, data: bytes, address: tuple[object, ...], header: QuicHeader) -> None:
        """A new inbound Initial: Retry first, then limits, then a connection."""
        version = header.version
        assert version is not None
        destination_cid, source_cid, token = (
            header.destination_cid,
            header.source_cid,
            header.token,
        )
        now = self.loop.time()
        if not token:
            retry_cid = random_bytes(_CID_LENGTH)
            self._sendto(
                encode_quic_retry(
                    version=version,
                    source_cid=retry_cid,
                    destination_cid=source_cid,
                    original_destination_cid=destination_cid,
                    retry_token=self._retry.create_token(
                        address=address,
                        original_destination_connection_id=destination_cid,
                        retry_source_connection_id=retry_cid,
                        now=now,
                    ),
                ),
                address,
            )
            return
        try:
            original_cid = self._retry.validate_token(
                address=address, destination_cid=destination_cid, token=token, now=now
            )
        except ValueError:
            self.dropped_datagrams += 1
            return
        ip = plain_ip(str(address[0]))
        reason = self._admission.refusal(ip, inbound=True, now=now)
        if reason is not None:
            self._sendto(_refusal(version, destination_cid, source_cid, reason), address)
            return
        quic = self._new_quic(
            configuration=self._server_config,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=destination_cid,
        )
        link = self._add_link(quic, address)
        self._add_cid(destination_cid, link)
        self._add_cid(quic.host_cid, link)
        link.receive(data, address)
        self._dirty.add(link)

    # ------------------------------------------------------------------ Observer

    def connection_authenticated(self, conn: Connection) -> None:
        """Observer: ``conn`` proved its peer; keep it unless we are closing (or it lost)."""
        if self._closing:
            conn.abort(CloseCode.SHUTDOWN, "transport.shutdown: node shutting down")
        else:
            self._peers.add(conn)

    def connection_closed(self, conn: Connection) -> None:
        """Observer: ``conn`` ended."""
        self._peers.remove(conn)
