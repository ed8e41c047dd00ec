"""Transport figures: peerline's authenticated QUIC beside raw aioquic, same process, same run.

Both sides of every measurement run in **one process on one event loop** (loopback UDP), for
peerline and for the raw baseline alike, so the two figures share the same CPU budget.

- raw: aioquic's own asyncio API (``serve()`` + ``connect()``, ``StreamReader``/``Writer``),
  one long-lived stream, 4-byte length prefix + 300-byte payload, no Retry, no peer logic.
- peerline: :class:`node.transport.Transport` with Retry, key pinning, the identity proof,
  typed msgpack frames, credit flow control and the request/response correlation. It owns its
  socket and reads datagrams in batches, transmitting once per loop turn (aioquic's asyncio
  transport reads one datagram per wake-up): that is why bulk and frames can beat the ceiling.
- Each side's figure is its best over alternating rounds (2 quick, 3 full): the machine is
  shared, and load that hits one round should not decide the ratio.

Targets (from the issue): connect <= 1.5x raw; 300 B frames/s >= 0.8x raw; RTT p50 <= 1.3x
raw. RTT p99 and bulk MB/s are reported beside raw without a target. This module imports
aioquic and cryptography directly on purpose: it measures the library.

Run: ``.venv/bin/python -m bench --only transport`` (``--quick`` for a shorter run).
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import statistics
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from bench.table import Row
from node import wire
from node.bulk import BulkStream
from node.config import TransportConfig
from node.connection import Connection
from node.identity import Identity
from node.transport import Transport

PAYLOAD = 300
_PREFIX = struct.Struct(">I")
_CHUNK = 64 * 1024
_MB = 1_000_000
_ALPN = "bench/1"


@wire.frame(0x7E01)
@dataclass(frozen=True, slots=True)
class Blob(wire.Message):
    """A benchmark payload (test range type id)."""

    data: Annotated[bytes, wire.Bytes(max=1 << 20)]


@dataclass(frozen=True, slots=True)
class _Sizes:
    connects: int
    pings: int
    frames: int
    bulk_bytes: int


def _sizes(quick: bool) -> _Sizes:
    if quick:
        return _Sizes(connects=15, pings=500, frames=20_000, bulk_bytes=4 * _MB)
    return _Sizes(connects=30, pings=2000, frames=60_000, bulk_bytes=16 * _MB)


def _figures(
    rtts: list[float], rtt_cpu: float, frames: float, frames_cpu: float, bulk: float
) -> dict[str, float]:
    """One side's figures of one round, keyed as in :data:`_FIGURES`."""
    return {
        "p50": _ms(rtts, 0.5),
        "p99": _ms(rtts, 0.99),
        "rtt_cpu": rtt_cpu,
        "frames": frames,
        "frames_cpu": frames_cpu,
        "bulk": bulk,
    }


def _ms(seconds: list[float], q: float) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# --------------------------------------------------------------------------- raw aioquic


def _raw_server_config() -> QuicConfiguration:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = time.time()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_utc(now - 3600))
        .not_valid_after(_utc(now + 3600))
        .sign(key, algorithm=None)
    )
    config = QuicConfiguration(is_client=False, alpn_protocols=[_ALPN])
    config.certificate, config.private_key = certificate, key
    return config


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)


class _RawSide:
    """Server-side stream handlers: 'e' echo, 'c' count frames, 'b' count bytes until EOF."""

    def __init__(self) -> None:
        self.done: asyncio.Future[float] | None = None
        self.expected = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = await reader.readexactly(1)
        if mode == b"b":
            while await reader.read(1 << 20):
                pass
            self._finish()
            return
        count = 0
        while True:
            try:
                (size,) = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
                body = await reader.readexactly(size)
            except asyncio.IncompleteReadError:
                return
            if mode == b"e":
                writer.write(_PREFIX.pack(size) + body)
            else:
                count += 1
                if count == self.expected:
                    self._finish()

    def _finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(time.perf_counter())


async def _raw(sizes: _Sizes) -> dict[str, float]:
    side = _RawSide()
    server = await serve(
        "127.0.0.1", 0, configuration=_raw_server_config(), stream_handler=side.handle
    )
    udp = server._transport  # aioquic keeps the bound socket private; the bench may peek
    assert udp is not None
    port = udp.get_extra_info("sockname")[1]
    client_config = QuicConfiguration(
        is_client=True, alpn_protocols=[_ALPN], verify_mode=ssl.CERT_NONE
    )
    connect_times = []
    for _ in range(sizes.connects):
        start = time.perf_counter()
        async with connect("127.0.0.1", port, configuration=client_config) as client:
            connect_times.append(time.perf_counter() - start)
            client.close()
    async with connect("127.0.0.1", port, configuration=client_config) as client:
        figures = await _raw_streams(client, side, sizes)
    server.close()
    figures["connect"] = statistics.median(connect_times) * 1000
    return figures


async def _raw_streams(
    client: QuicConnectionProtocol, side: _RawSide, sizes: _Sizes
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    frame = _PREFIX.pack(PAYLOAD) + bytes(PAYLOAD)
    reader, writer = await client.create_stream()
    writer.write(b"e")
    rtts = []
    cpu = time.process_time()
    for _ in range(sizes.pings):
        start = time.perf_counter()
        writer.write(frame)
        await reader.readexactly(len(frame))
        rtts.append(time.perf_counter() - start)
    rtt_cpu = (time.process_time() - cpu) / sizes.pings * 1e6
    side.expected, side.done = sizes.frames, loop.create_future()
    _, writer = await client.create_stream()
    writer.write(b"c")
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(sizes.frames):
        writer.write(frame)  # aioquic's drain() never waits: skipping it is the fastest raw path
    frames_rate = sizes.frames / (await side.done - start)
    frames_cpu = sizes.frames / (time.process_time() - cpu)
    side.done = loop.create_future()
    _, writer = await client.create_stream()
    writer.write(b"b")
    chunk = bytes(_CHUNK)
    start = time.perf_counter()
    for _ in range(sizes.bulk_bytes // _CHUNK):
        writer.write(chunk)
    writer.write_eof()
    bulk = sizes.bulk_bytes / (await side.done - start) / _MB
    return _figures(rtts, rtt_cpu, frames_rate, frames_cpu, bulk)


# --------------------------------------------------------------------------- peerline


class _Counter:
    def __init__(self) -> None:
        self.count = 0
        self.expected = 0
        self.done: asyncio.Future[float] | None = None

    async def handle(self, conn: Connection, message: wire.Message) -> wire.Message | None:
        self.count += 1
        if self.count == self.expected and self.done is not None:
            self.done.set_result(time.perf_counter())
        return message

    async def bulk(self, conn: Connection, header: wire.Message, stream: BulkStream) -> None:
        while await stream.read():
            pass
        await stream.close()
        if self.done is not None:
            self.done.set_result(time.perf_counter())


async def _peerline(sizes: _Sizes) -> dict[str, float]:
    config = TransportConfig(dial_attempts=1)
    a, b = Identity.generate(), Identity.generate()
    counter = _Counter()
    async with Transport(a, config) as dialer, Transport(b, config) as listener:
        listener.set_handler(counter.handle)
        listener.set_bulk_handler(counter.bulk)
        connect_times = []
        for _ in range(sizes.connects):
            start = time.perf_counter()
            conn = await dialer.dial(b.peer_id, [listener.address])
            connect_times.append(time.perf_counter() - start)
            await conn.close()
        conn = await dialer.dial(b.peer_id, [listener.address])
        figures = await _peerline_streams(conn, counter, sizes)
    figures["connect"] = statistics.median(connect_times) * 1000
    return figures


async def _timed(operation: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await operation()
    return time.perf_counter() - start


async def _peerline_streams(conn: Connection, counter: _Counter, sizes: _Sizes) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    blob = Blob(bytes(PAYLOAD))
    cpu = time.process_time()
    rtts = [await _timed(lambda: conn.request(blob)) for _ in range(sizes.pings)]
    rtt_cpu = (time.process_time() - cpu) / sizes.pings * 1e6
    counter.count, counter.expected, counter.done = 0, sizes.frames, loop.create_future()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(sizes.frames):
        await conn.send(blob)
    frames_rate = sizes.frames / (await counter.done - start)
    frames_cpu = sizes.frames / (time.process_time() - cpu)
    counter.done = loop.create_future()
    chunk = bytes(_CHUNK)
    start = time.perf_counter()
    stream = await conn.open_bulk(Blob(b""))
    for _ in range(sizes.bulk_bytes // _CHUNK):
        await stream.write(chunk)
    await stream.close()
    bulk = sizes.bulk_bytes / (await counter.done - start) / _MB
    return _figures(rtts, rtt_cpu, frames_rate, frames_cpu, bulk)


# --------------------------------------------------------------------------- rows


def _row(
    name: str, unit: str, ours: float, raw: float, *, factor: float | None, higher: bool
) -> Row:
    return {
        "name": name,
        "value": ours,
        "unit": unit,
        "ceiling": raw,
        "ceiling_name": "raw aioquic",
        "target": None if factor is None else raw * factor,
        "higher_is_better": higher,
    }


_FIGURES = (
    # key, row name, unit, target factor against raw, higher is better
    ("connect", "transport connect, authenticated", "ms", 1.5, False),
    ("p50", "transport RTT p50, 300 B request", "ms", 1.3, False),
    ("p99", "transport RTT p99, 300 B request", "ms", None, False),
    ("rtt_cpu", "transport CPU per 300 B round trip", "us", 1.3, False),
    ("frames", "transport 300 B frames, one connection", "frames/s", 0.8, True),
    ("frames_cpu", "transport 300 B frames per CPU second", "frames/s", 0.8, True),
    ("bulk", "transport bulk, one stream", "MB/s", None, True),
)


def _best(rounds: list[dict[str, float]], key: str, higher: bool) -> float:
    values = [figures[key] for figures in rounds]
    return max(values) if higher else min(values)


async def _measure(quick: bool) -> list[Row]:
    """Alternate raw and peerline rounds and keep each side's best figure.

    The machine is shared (CI, other processes): alternating and keeping the best of each side
    makes the ratio robust against load that hits only part of the run.
    """
    sizes = _sizes(quick)
    raw_rounds: list[dict[str, float]] = []
    our_rounds: list[dict[str, float]] = []
    for _ in range(2 if quick else 3):
        raw_rounds.append(await _raw(sizes))
        our_rounds.append(await _peerline(sizes))
    return [
        _row(
            name,
            unit,
            _best(our_rounds, key, higher),
            _best(raw_rounds, key, higher),
            factor=factor,
            higher=higher,
        )
        for key, name, unit, factor, higher in _FIGURES
    ]


def run(quick: bool = False) -> list[Row]:
    """Measure everything in a fresh event loop (one process, both sides)."""
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    from bench.table import format_table

    print(format_table(run(quick=True)))
