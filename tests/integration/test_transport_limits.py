"""Real QUIC on loopback: garbage, floods and configured limits refuse one peer, serve the rest."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl

import psutil
import pytest
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.packet import pull_quic_header

from node import wire
from node.auth import AuthOk
from node.bulk import BulkStream
from node.channel import INITIAL_CREDIT, CloseCode, Credit
from node.config import TransportConfig
from node.connection import Connection
from node.errors import DialError, LimitExceededError, OperationTimeoutError, PeerlineError
from node.identity import Identity
from node.transport import ALPN, Transport, _CappedQuicConnection
from tests.integration.transport_kit import FAST, Blob, Note, Spy, running

pytestmark = pytest.mark.integration

QUIC_V1 = b"\x00\x00\x00\x01"


def _garbage(rng: random.Random) -> bytes:
    """Random datagrams, half of them shaped like QUIC long-header Initials (>= 1200 B)."""
    if rng.random() < 0.5:
        return rng.randbytes(rng.randrange(1, 1500))
    cids = bytes([8]) + rng.randbytes(8) + bytes([8]) + rng.randbytes(8)
    token = rng.choice([b"\x00", b"\x20" + rng.randbytes(32)])
    return b"\xc0" + QUIC_V1 + cids + token + rng.randbytes(1200)


async def test_garbage_datagrams_are_dropped_and_cost_nothing() -> None:
    rng = random.Random(1)
    async with running() as a, running() as b:
        Spy().watch(b)
        conn = await a.dial(b.peer_id, [b.address])
        rss_before = psutil.Process().memory_info().rss
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            attacker.setblocking(False)
            for round_ in range(20):
                for _ in range(100):
                    with contextlib.suppress(BlockingIOError):
                        attacker.sendto(_garbage(rng), b.address)
                await asyncio.sleep(0.005)
                assert await conn.request(Note(str(round_))) == Note(f"re:{round_}")
        await asyncio.sleep(0.05)
        assert b.dropped_datagrams > 500
        assert len(b._links) == 1 and len(b._cids) <= 16  # no state kept for any of it
        assert psutil.Process().memory_info().rss - rss_before < 32 << 20


def _framed(body: bytes) -> bytes:
    return wire.LENGTH_PREFIX.pack(len(body)) + body


async def _attach(spy: Spy, node: Transport, peer: Transport) -> Connection:
    spy.watch(node)
    return await peer.dial(node.peer_id, [node.address])


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (wire.LENGTH_PREFIX.pack(7) + b"garbage", "wire.malformed"),
        (wire.LENGTH_PREFIX.pack(2**31) + b"x", "wire.too_large"),
        (wire.LENGTH_PREFIX.pack(1) + b"\xc1", "wire.malformed"),  # never-used msgpack byte
        (_framed(wire.encode([wire.VERSION, 0x7BFF, []])), "wire.malformed"),  # unknown type
        (wire.encode_frame(AuthOk()), "channel.protocol"),  # auth frame after auth
        (wire.encode_frame(Credit(10**6)), "channel.protocol"),  # credit on the control stream
    ],
)
async def test_garbage_frames_close_only_the_offending_connection(raw: bytes, code: str) -> None:
    spy = Spy()
    async with running() as b, running() as good, running() as mallory:
        good_conn = await _attach(spy, b, good)
        bad = await mallory.dial(b.peer_id, [b.address])
        bad._link.send(bad._control_out, raw)
        info = await asyncio.wait_for(bad.wait_closed(), 5)
        assert info.by_peer and info.code in (CloseCode.PROTOCOL, CloseCode.LIMIT)
        assert info.reason.startswith(code)
        assert await good_conn.request(Note("ok")) == Note("re:ok")
        assert [c.peer_id for c in b.connections] == [good.peer_id]


async def test_frame_above_the_receivers_limit_closes_the_sender() -> None:
    small = TransportConfig(dial_attempts=1, max_frame_size=1024)
    async with running(small) as b, running() as big:
        Spy().watch(b)
        conn = await big.dial(b.peer_id, [b.address])
        await conn.send(Blob(bytes(4096)))
        info = await asyncio.wait_for(conn.wait_closed(), 5)
        assert info.code == CloseCode.LIMIT and info.reason.startswith("wire.too_large")


async def test_credit_overrun_is_refused_and_memory_stays_within_the_window() -> None:
    window = 2 * INITIAL_CREDIT
    config = TransportConfig(dial_attempts=1, max_frame_size=16 * 1024, control_window=window)
    stuck = asyncio.Event()
    peaks: list[int] = []

    async def never_done(conn: Connection, message: wire.Message) -> None:
        peaks.append(conn._recv_credit.held)
        await stuck.wait()

    async with running(config) as b, running(config) as honest, running(config) as mallory:
        b.set_handler(never_done)
        polite = await honest.dial(b.peer_id, [b.address])
        for _ in range(3):
            await polite.send(Blob(bytes(8000)))
        with pytest.raises(OperationTimeoutError) as waited:
            await _fill_credit(polite)
        assert waited.value.code == "transport.credit_timeout"  # backpressure, no overrun
        conn = await mallory.dial(b.peer_id, [b.address])
        frame = wire.encode_frame(Blob(bytes(8000)))
        for _ in range(4 * window // len(frame)):
            conn._link.send(conn._control_out, frame)  # ignores the credit on purpose
        info = await asyncio.wait_for(conn.wait_closed(), 5)
        assert info.reason.startswith("limit.credit")
        inbound = b.connection(honest.peer_id)
        assert inbound is not None and inbound.is_open
        assert max(peaks) <= window
        stuck.set()


async def _fill_credit(conn: Connection) -> None:
    """Send until the (stuck) peer's window is full: the last send times out."""
    for _ in range(100):
        await conn.send(Blob(bytes(8000)), timeout=0.2)


async def test_connection_101_is_refused_while_the_first_100_keep_working() -> None:
    config = TransportConfig(
        max_connections=100,
        max_connections_per_ip=1000,
        max_handshakes_per_second_per_ip=10_000,
        handshake_burst=1000,
    )
    patient = TransportConfig(dial_attempts=1, handshake_timeout=20.0)  # CI may be busy
    async with running(config) as b, contextlib.AsyncExitStack() as stack:
        Spy().watch(b)
        dialers = [await stack.enter_async_context(running(patient)) for _ in range(101)]
        conns: list[Connection] = []
        for batch in range(0, 100, 10):  # ten handshakes at a time: bounded CPU bursts
            group = dialers[batch : batch + 10]
            conns += await asyncio.gather(*(d.dial(b.peer_id, [b.address]) for d in group))
        with pytest.raises(DialError) as refused:
            await dialers[100].dial(b.peer_id, [b.address])
        assert refused.value.code == "dial.refused"
        cause = refused.value.__cause__
        assert isinstance(cause, LimitExceededError) and cause.code == "limit.connections"
        replies = await asyncio.gather(*(c.request(Note(str(i))) for i, c in enumerate(conns)))
        assert replies == [Note(f"re:{i}") for i in range(100)]
        assert len(b.connections) == 100


@pytest.mark.parametrize(
    ("config", "code"),
    [
        (TransportConfig(max_connections_per_ip=2), "limit.connections_per_ip"),
        (
            TransportConfig(max_handshakes_per_second_per_ip=0.01, handshake_burst=2),
            "limit.handshake_rate",
        ),
    ],
)
async def test_per_address_limits_refuse_with_their_reason(
    config: TransportConfig, code: str
) -> None:
    async with running(config) as b, running() as d1, running() as d2, running() as d3:
        Spy().watch(b)
        first = await d1.dial(b.peer_id, [b.address])
        await d2.dial(b.peer_id, [b.address])
        with pytest.raises(DialError) as refused:
            await d3.dial(b.peer_id, [b.address])
        assert isinstance(refused.value.__cause__, PeerlineError)
        assert refused.value.__cause__.code == code
        assert await first.request(Note("fine")) == Note("re:fine")


async def test_local_dials_respect_the_connection_limit() -> None:
    limited = TransportConfig(dial_attempts=1, max_connections=1)
    async with running(limited) as a, running() as b, running() as c:
        await a.dial(b.peer_id, [b.address])
        with pytest.raises(DialError) as refused:
            await a.dial(c.peer_id, [c.address])
        assert refused.value.code == "dial.refused"


async def test_streams_beyond_the_limit_are_reset_and_the_rest_work() -> None:
    config = TransportConfig(dial_attempts=1, max_streams_per_connection=2)
    release = asyncio.Event()

    async def echo_then_wait(conn: Connection, header: wire.Message, stream: BulkStream) -> None:
        await stream.write(await stream.read())
        await release.wait()
        await stream.close()

    async with running(config) as b, running(config) as a:
        b.set_bulk_handler(echo_then_wait)
        conn = await a.dial(b.peer_id, [b.address])
        streams = [await conn.open_bulk(Note(str(i))) for i in range(3)]
        for i, stream in enumerate(streams):
            await stream.write(f"data {i}".encode())
        assert await streams[0].read() == b"data 0"
        assert await streams[1].read() == b"data 1"
        with pytest.raises(PeerlineError) as reset:
            await asyncio.wait_for(streams[2].read(), 5)
        assert reset.value.code == "bulk.reset"
        release.set()
        for stream in streams[:2]:
            await stream.close()
            assert await stream.read() == b""
        late = await conn.open_bulk(Note("late"))  # slots freed: accepted again
        await late.write(b"again")
        assert await late.read() == b"again"
        assert conn.is_open


async def test_pending_requests_are_capped_locally() -> None:
    config = TransportConfig(dial_attempts=1, max_pending_requests=2)
    async with running(config) as a, running(FAST) as b:
        hold = asyncio.Event()

        async def slow(conn: Connection, message: wire.Message) -> wire.Message:
            await hold.wait()
            return message

        b.set_handler(slow)
        conn = await a.dial(b.peer_id, [b.address])
        pending = [asyncio.ensure_future(conn.request(Note(str(i)))) for i in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(LimitExceededError) as full:
            await conn.request(Note("third"))
        assert full.value.code == "limit.pending_requests"
        hold.set()
        assert await asyncio.gather(*pending) == [Note("0"), Note("1")]


# --------------------------------------------------------------------------- QUIC windows
# A canary on aioquic 1.7.2 internals (pinned): its receive limits double from the highest
# offset received, holes included. Sans-I/O pair; the client loses every other datagram.

STREAM_WINDOW, CONNECTION_WINDOW = 256 << 10, 512 << 10


def _window_attack(capped: bool, lossy: bool = True) -> tuple[int, int, int, int]:
    """Push 16 MiB through a lossy path; return the listener's connection limit, stream
    limit, bytes delivered in order and the stream's highest offset received."""
    config = TransportConfig(
        quic_handshake_window=64 << 10,
        quic_stream_window=STREAM_WINDOW,
        quic_connection_window=CONNECTION_WINDOW,
    )
    listener = Transport(Identity.generate(), config)
    client = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE, max_data=1 << 30
        )
    )
    address, now = ("192.0.2.1", 4433), 0.0
    client.connect(address, now=now)
    in_flight = [data for data, _ in client.datagrams_to_send(now=now)]
    original_cid = pull_quic_header(Buffer(data=in_flight[0]), host_cid_length=8).destination_cid
    server_class = _CappedQuicConnection if capped else QuicConnection
    server = server_class(
        configuration=listener._server_config, original_destination_connection_id=original_cid
    )
    if isinstance(server, _CappedQuicConnection):
        server.set_windows(STREAM_WINDOW, CONNECTION_WINDOW)
    sent = datagrams = delivered = 0
    for _ in range(400):
        for data in in_flight:
            server.receive_datagram(data, address, now=now)
        while (event := server.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                delivered += len(event.data)
        if isinstance(server, _CappedQuicConnection):
            server.delivered = delivered  # what the link does in node/transport.py
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, address, now=now)
        if server._handshake_complete and sent < 16 << 20:
            client.send_stream_data(0, bytes(64 << 10))
            sent += 64 << 10
        out = [data for data, _ in client.datagrams_to_send(now=now)]
        keep_all = not (lossy and server._handshake_complete)
        in_flight = [data for i, data in enumerate(out, datagrams) if keep_all or i % 2]
        datagrams += len(out)
        now += 0.01
        for side in (client, server):
            timer = side.get_timer()
            if timer is not None and timer <= now:
                side.handle_timer(now)
    stream = server._streams[0]
    limits = server._local_max_data.value, stream.max_stream_data_local
    return (*limits, delivered, stream.receiver.highest_offset)


def test_quic_receive_windows_slide_and_bound_what_a_peer_makes_us_buffer() -> None:
    connection_limit, stream_limit, delivered, highest = _window_attack(capped=True)
    assert stream_limit - delivered <= STREAM_WINDOW
    assert connection_limit - delivered <= CONNECTION_WINDOW
    assert highest - delivered <= STREAM_WINDOW  # holes included
    _, plain_limit, plain_delivered, _ = _window_attack(capped=False)
    assert plain_limit - plain_delivered > STREAM_WINDOW  # plain aioquic's limit runs away
    _, _, lossless_delivered, _ = _window_attack(capped=True, lossy=False)
    assert lossless_delivered > 4 * CONNECTION_WINDOW  # the windows slide: no stall
