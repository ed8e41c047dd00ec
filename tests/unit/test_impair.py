"""The UDP impairment proxy of the network lab: seeded decisions and real loopback behaviour.

The decision tests drive :class:`Link` directly (no sockets); the proxy tests send datagrams
over 127.0.0.1 only, each bounded by a short timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest

from tests.system.impair import Address, Impairment, ImpairProxy, Link


def plans(link: Link, count: int) -> list[list[float]]:
    return [link.plan() for _ in range(count)]


def test_same_seed_same_decisions_other_seed_others() -> None:
    knobs = Impairment(loss=0.2, delay=0.05, jitter=0.01, reorder=0.1, duplicate=0.1)
    first, again, other = (Link("forward", seed, knobs) for seed in (7, 7, 8))
    assert plans(first, 500) == plans(again, 500)
    assert plans(Link("forward", 7, knobs), 500) != plans(other, 500)
    assert plans(Link("forward", 7, knobs), 500) != plans(Link("backward", 7, knobs), 500)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_loss_rate_within_bounds(seed: int) -> None:
    link = Link("forward", seed, Impairment(loss=0.05))
    dropped = sum(1 for plan in plans(link, 10_000) if not plan)
    assert link.dropped == dropped and link.received == 10_000
    assert 400 <= dropped <= 600  # 5% of 10,000; binomial sd ~22, so this never flakes


def test_delay_jitter_reorder_and_duplicates() -> None:
    link = Link("forward", 5, Impairment(delay=0.05, jitter=0.01, reorder=0.1, duplicate=0.1))
    delays = [d for plan in plans(link, 2_000) for d in plan]
    assert all(0.04 <= d <= 0.06 + link.impairment.reorder_gap for d in delays)
    assert 100 <= sum(1 for d in delays if d > 0.06) <= 300  # held back to be overtaken
    assert link.duplicated == len(delays) - 2_000 and 100 <= link.duplicated <= 300
    assert link.dropped == 0


def test_blackhole_drops_all_and_keeps_the_random_stream_in_step() -> None:
    knobs = Impairment(loss=0.3)
    holed, plain = Link("forward", 9, knobs), Link("forward", 9, Impairment(loss=0.3))
    holed.impairment.blackhole = True
    assert plans(holed, 100) == [[]] * 100
    plans(plain, 100)
    holed.impairment.blackhole = False
    assert plans(holed, 100) == plans(plain, 100)


# --------------------------------------------------------------------------- real proxy


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass in 3.11

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.got.put_nowait((data, time.monotonic()))
        if data.startswith(b"echo") and self.transport is not None:
            self.transport.sendto(b"re:" + data, addr)


async def endpoint(remote: Address | None = None) -> tuple[asyncio.DatagramTransport, _Sink]:
    loop = asyncio.get_running_loop()
    if remote is None:
        return await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    return await loop.create_datagram_endpoint(_Sink, remote_addr=remote)


@pytest.fixture
async def lab() -> AsyncIterator[tuple[ImpairProxy, asyncio.DatagramTransport, _Sink, _Sink]]:
    """A proxy in front of an echoing server, and a client connected to the proxy."""
    server_transport, server = await endpoint()
    proxy = ImpairProxy(server_transport.get_extra_info("sockname")[:2], seed=1)
    client_transport, client = await endpoint(await proxy.start())
    try:
        yield proxy, client_transport, client, server
    finally:
        client_transport.close()
        await proxy.aclose()
        server_transport.close()


async def drain(sink: _Sink, count: int, timeout: float = 2.0) -> list[tuple[bytes, float]]:
    """Exactly ``count`` datagrams (fails on fewer); waits a little for unexpected extras."""
    out = [await asyncio.wait_for(sink.got.get(), timeout) for _ in range(count)]
    await asyncio.sleep(0.05)
    while not sink.got.empty():
        out.append(sink.got.get_nowait())
    return out


Lab = tuple[ImpairProxy, asyncio.DatagramTransport, _Sink, _Sink]


async def test_clean_path_forwards_both_ways_in_order(lab: Lab) -> None:
    proxy, client_transport, client, server = lab
    for i in range(20):
        client_transport.sendto(b"echo%02d" % i)
    assert [d for d, _ in await drain(server, 20)] == [b"echo%02d" % i for i in range(20)]
    assert [d for d, _ in await drain(client, 20)] == [b"re:echo%02d" % i for i in range(20)]
    assert proxy.forward.sent == proxy.backward.sent == 20 and proxy.pending() == 0


async def test_delay_is_applied_per_direction(lab: Lab) -> None:
    proxy, client_transport, client, server = lab
    proxy.forward.impairment.delay = 0.1
    proxy.backward.impairment.delay = 0.05
    start = time.monotonic()
    client_transport.sendto(b"echo")
    ((_, arrived),) = await drain(server, 1)
    ((_, returned),) = await drain(client, 1)
    assert arrived - start >= 0.1 and returned - start >= 0.15
    assert returned - start < 1.0


async def test_partition_drops_all_and_heal_restores(lab: Lab) -> None:
    proxy, client_transport, client, server = lab
    proxy.partition()
    for _ in range(50):
        client_transport.sendto(b"echo")
    await asyncio.sleep(0.2)
    assert server.got.empty() and client.got.empty()
    assert proxy.forward.dropped == 50
    proxy.heal()
    client_transport.sendto(b"echo-after")
    assert [d for d, _ in await drain(client, 1)] == [b"re:echo-after"]


async def test_duplicates_arrive_and_queue_is_bounded(lab: Lab) -> None:
    proxy, client_transport, _client, server = lab
    proxy.forward.impairment = Impairment(duplicate=1.0)
    client_transport.sendto(b"twice")
    assert [d for d, _ in await drain(server, 2)] == [b"twice", b"twice"]
    proxy.forward.impairment = Impairment(delay=10.0)
    proxy.max_queue = 10
    for _ in range(30):
        client_transport.sendto(b"held")
    await asyncio.sleep(0.1)
    assert proxy.pending() == 10 and proxy.forward.overflow == 20


async def test_aclose_cancels_pending_sends_and_is_idempotent() -> None:
    server_transport, server = await endpoint()
    proxy = ImpairProxy(server_transport.get_extra_info("sockname")[:2], seed=3)
    client_transport, _client = await endpoint(await proxy.start())
    proxy.forward.impairment.delay = 0.2
    client_transport.sendto(b"late")
    await asyncio.sleep(0.05)
    assert proxy.pending() == 1
    await proxy.aclose()
    await proxy.aclose()
    assert proxy.pending() == 0
    await asyncio.sleep(0.3)
    assert server.got.empty()
    client_transport.close()
    server_transport.close()
