"""Rendezvous server figures: deposits/s, drained messages/s, connected nodes and RSS per node.

The server runs in its own process (``python -m bench.rendezvous serve|echo DIR``) so its CPU
and memory are its own; the clients run here. Ceilings, measured in the same run:

- deposits: the same 100 clients sending the same ``Deposit`` frames to an *echo* server (our
  transport with a handler that answers at once): transport + codec, no mailbox rules, no
  SQLite, no signature;
- drain: the echo server answering every ``Fetch`` with a prebuilt batch of the same size;
- nodes: RSS per node = (server RSS with N connected, registered nodes - RSS before) / N,
  beside the same for N nodes connected to the echo server (what the transport alone costs).

Targets (issue 6): >= 5,000 deposits/s, >= 10,000 drained messages/s, 5,000 connected and
registered nodes at <= 50 KB RSS each. The server's rate limits and quotas are raised for the
run (they are per-sender policy, not capacity).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.table import Row
from node import envelope, records, wire
from node.config import TransportConfig
from node.connection import Connection
from node.crypto import random_bytes
from node.identity import Identity, PeerId
from node.mailbox import MailboxLimits
from node.transport import Transport
from rendezvous import protocol as p
from rendezvous.client import RendezvousClient
from rendezvous.process import ServeOptions, serve
from rendezvous.server import ServiceConfig

CLIENTS = 100
BATCH = 16
"""Envelopes per Deposit request in the batched row (a node flushing its outbox)."""
DRAINERS = 10
ROUNDS = 3
"""Deposit and drain figures are the best of this many rounds, alternating with the ceiling
(a shared 2-core machine is noisy)."""
NODE_TARGET = 5_000
_BENCH_TRANSPORT = TransportConfig(
    max_connections=NODE_TARGET * 2,
    max_connections_per_ip=NODE_TARGET * 2,
    max_handshakes_per_second_per_ip=1e6,
    handshake_burst=1_000_000,
    idle_timeout=120.0,
)
_CLIENT_TRANSPORT = TransportConfig(idle_timeout=120.0)
_LIMITS = MailboxLimits(
    max_count=1_000_000, max_bytes=1 << 34, sender_rate=1e9, sender_burst=1_000_000_000
)
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class _Sizes:
    deposits_per_client: int
    drain_per_owner: int
    nodes: int


def _sizes(quick: bool) -> _Sizes:
    return _Sizes(20, 500, 200) if quick else _Sizes(100, 3_000, NODE_TARGET)


# --------------------------------------------------------------------------- server process


async def _echo(directory: Path) -> None:
    """A transport-only server: answers Deposit with a canned receipt, Fetch with a full batch."""
    identity = Identity.generate()
    item = p.EnvelopeItem(bytes(32), 1, bytes(envelope.BUCKETS[0]))
    cache: dict[int, p.Envelopes] = {}

    async def handle(conn: Connection, message: wire.Message) -> wire.Message | None:
        if isinstance(message, p.Fetch):
            reply = cache.get(message.limit)
            if reply is None:
                reply = cache[message.limit] = p.Envelopes([item] * message.limit, 0, 0)
            return p.Envelopes(reply.items, 0, len(message.ack))
        if isinstance(message, p.Ack):
            return p.Acked(len(message.ids), 0)
        if isinstance(message, p.Deposit):  # the real ids: clients check them
            items = [
                p.StoredItem(bytes(32), envelope.envelope_id(data), 1) for data in message.envelopes
            ]
            body = p.ReceiptBody(identity.peer_id.key, items)
            return p.Deposited(p.sign_receipt(identity, body), [])
        return p.Welcome("open", time.time())

    async with Transport(identity, _BENCH_TRANSPORT) as transport:
        transport.set_handler(handle)
        host, port = transport.address
        address = p.RendezvousAddress(identity.peer_id, host, port)
        print(json.dumps({"address": address.text()}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _serve(directory: Path) -> None:
    stop = asyncio.Event()
    options = ServeOptions(
        directory,
        ("127.0.0.1", 0),
        service=ServiceConfig(mailbox=_LIMITS),
        transport=_BENCH_TRANSPORT,
    )

    def ready(info: dict[str, object]) -> None:
        print(json.dumps(info), flush=True)

    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    stdin_closed.add_done_callback(lambda _: stop.set())
    await serve(options, ready, stop)


@contextlib.asynccontextmanager
async def _server(kind: str) -> AsyncIterator[tuple[p.RendezvousAddress, psutil.Process]]:
    """Run the server process; closing its stdin stops it."""
    with tempfile.TemporaryDirectory(prefix="peerline-bench-rv-") as tmp:
        proc = subprocess.Popen(  # noqa: S603 (our own module, fixed arguments)
            [sys.executable, "-m", "bench.rendezvous", kind, tmp],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
            address = p.RendezvousAddress.parse(json.loads(line)["address"])
            yield address, psutil.Process(proc.pid)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


# --------------------------------------------------------------------------- clients


@contextlib.asynccontextmanager
async def _clients(
    address: p.RendezvousAddress, identities: list[Identity]
) -> AsyncIterator[list[RendezvousClient]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for identity in identities:
            transport = await stack.enter_async_context(Transport(identity, _CLIENT_TRANSPORT))
            clients.append(RendezvousClient(transport, address, timeout=60.0))
        await _gather_bounded([c.connect for c in clients], 50)
        yield clients


async def _gather_bounded(calls: list[Callable[[], Awaitable[object]]], width: int) -> None:
    semaphore = asyncio.Semaphore(width)

    async def one(call: Callable[[], Awaitable[object]]) -> None:
        async with semaphore:
            await call()

    await asyncio.gather(*(one(call) for call in calls))


def _envelopes(recipients: list[PeerId], count: int) -> list[bytes]:
    sender = Identity.generate().peer_id
    expires = int(time.time()) + 3600
    return [
        envelope.seal(
            recipients[i % len(recipients)], sender, b"%d" % i, expires=expires, rng=random_bytes
        )
        for i in range(count)
    ]


async def _deposit_rate(
    address: p.RendezvousAddress, batches: list[list[bytes]], per_request: int
) -> float:
    """Envelopes/s stored by one client per batch, ``per_request`` envelopes per request."""
    async with _clients(address, [Identity.generate() for _ in batches]) as clients:

        async def load(client: RendezvousClient, batch: list[bytes]) -> None:
            for first in range(0, len(batch), per_request):
                outcomes = await client.deposit_many(batch[first : first + per_request])
                if any(isinstance(o, Exception) for o in outcomes):
                    raise RuntimeError("a deposit was refused")

        start = time.perf_counter()
        await asyncio.gather(*(load(c, b) for c, b in zip(clients, batches, strict=True)))
        elapsed = time.perf_counter() - start
    return sum(len(b) for b in batches) / elapsed


async def _drain_rate(
    address: p.RendezvousAddress, owners: list[Identity], per_owner: int
) -> float:
    async with _clients(address, owners) as clients:
        counts = [0] * len(clients)

        async def drain(index: int, client: RendezvousClient) -> None:
            async def store(envelope_id: bytes, data: bytes) -> None:
                counts[index] += 1

            while counts[index] < per_owner:
                await client.drain(store, batch=p.MAX_BATCH)

        start = time.perf_counter()
        await asyncio.gather(*(drain(i, c) for i, c in enumerate(clients)))
        elapsed = time.perf_counter() - start
    return sum(counts) / elapsed


async def _nodes(
    address: p.RendezvousAddress, server: psutil.Process, count: int, *, register_too: bool
) -> tuple[int, float]:
    """Connect (and register) ``count`` nodes; returns (connected, server RSS KB per node)."""
    before = server.memory_info().rss
    identities = [Identity.generate() for _ in range(count)]
    expires = int(time.time()) + 3600
    async with _clients(address, identities) as clients:

        async def register(client: RendezvousClient, identity: Identity) -> None:
            if not register_too:
                return
            record = records.sign_record(
                identity, seq=1, expires=expires, addresses=[("10.0.0.1", 1)]
            )
            await client.register(record)

        calls: list[Callable[[], Awaitable[object]]] = [
            functools.partial(register, c, i) for c, i in zip(clients, identities, strict=True)
        ]
        await _gather_bounded(calls, 50)
        await asyncio.sleep(1.0)
        after = server.memory_info().rss
        connected = sum(1 for c in clients if c._conn is not None and c._conn.is_open)
    return connected, (after - before) / 1024 / count


# --------------------------------------------------------------------------- rows


async def _measure(quick: bool) -> list[Row]:
    sizes = _sizes(quick)
    sinks = [Identity.generate().peer_id for _ in range(DRAINERS)]
    ceilings: dict[str, float] = {}
    figures: dict[str, float] = {}

    def best(table: dict[str, float], key: str, value: float) -> None:
        table[key] = max(table.get(key, 0.0), value)

    async with _server("echo") as (echo_address, echo), _server("serve") as (address, server):
        for _ in range(1 if quick else ROUNDS):  # alternate sides; keep each side's best
            for n in (1, BATCH):
                load = [_envelopes(sinks, sizes.deposits_per_client) for _ in range(CLIENTS)]
                best(ceilings, f"deposit{n}", await _deposit_rate(echo_address, load, n))
                best(figures, f"deposit{n}", await _deposit_rate(address, load, n))
            owners = [Identity.generate() for _ in range(DRAINERS)]
            fill = [_envelopes([o.peer_id], sizes.drain_per_owner) for o in owners]
            await _deposit_rate(address, fill, p.MAX_DEPOSIT_BATCH)
            best(ceilings, "drain", await _drain_rate(echo_address, owners, sizes.drain_per_owner))
            best(figures, "drain", await _drain_rate(address, owners, sizes.drain_per_owner))
        _, ceilings["rss"] = await _nodes(echo_address, echo, sizes.nodes, register_too=False)
        connected, kb_per_node = await _nodes(address, server, sizes.nodes, register_too=True)
    deposit_rows: list[Row] = [
        {
            "name": f"rendezvous.deposits_{CLIENTS}_clients_{n}_per_request",
            "value": figures[f"deposit{n}"],
            "unit": "deposits/s",
            "ceiling": ceilings[f"deposit{n}"],
            "ceiling_name": "same requests to an echo server (transport only)",
            "target": 5_000.0,
        }
        for n in (1, BATCH)
    ]
    return [
        *deposit_rows,
        {
            "name": f"rendezvous.drain_{DRAINERS}_owners_fetch_ack_{p.MAX_BATCH}",
            "value": figures["drain"],
            "unit": "msg/s",
            "ceiling": ceilings["drain"],
            "ceiling_name": "same fetch/ack batches from an echo server",
            "target": 10_000.0,
        },
        {
            "name": "rendezvous.connected_registered_nodes",
            "value": float(connected),
            "unit": "nodes",
            "ceiling": None,
            "ceiling_name": None,
            "target": float(sizes.nodes),
        },
        {
            "name": "rendezvous.server_rss_per_node",
            "value": kb_per_node,
            "unit": "KB/node",
            "ceiling": ceilings["rss"],
            "ceiling_name": "echo server RSS per connected node (transport only)",
            "target": 50.0,
            "higher_is_better": False,
        },
    ]


def run(quick: bool = False) -> list[Row]:
    """The rendezvous rows (see the module doc); ``quick`` uses small counts."""
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    _kind, _directory = sys.argv[1], Path(sys.argv[2])
    asyncio.run(_serve(_directory) if _kind == "serve" else _echo(_directory))
