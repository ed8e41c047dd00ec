"""Discovery figures: the hardened DHT beside raw kademlia, and mDNS time to first peer.

- DHT: ``size`` nodes (100; 30 with ``--quick``) in one process on loopback, joined one after
  another. Bootstrap time per node, publish latency (each node publishes its own signed peer
  record) and resolve latency (a random other node looks each record up) as p50/p99, and the
  resolve success rate. The ceiling of each is raw ``kademlia.Server`` doing the same
  operation with a value of the same size in the same run: no validation, first-answer get.
- mDNS: two nodes in one process on 127.0.0.1 (transport + :class:`node.mdns.MdnsDiscovery`),
  time from start to the first *authenticated* connection; ceiling: raw zeroconf register on
  one side and resolve on the other (registration probing dominates both, about 1.2 s).

This module imports kademlia and zeroconf directly on purpose: it measures the libraries.
Run: ``.venv/bin/python -m bench --only discovery`` (``--quick`` for a shorter run).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial

from kademlia.crawling import ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.utils import digest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from bench.table import Row
from dht.node import DhtConfig
from dht.swarm import LocalSwarm
from dht.values import PeerRecordValidator
from node.identity import Identity
from node.lookup import Resolver, dial_any
from node.mdns import SERVICE_TYPE, MdnsDiscovery
from node.records import discovery_key, sign_record
from node.transport import Transport

LOOPBACK = ["127.0.0.1"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(calls: list[Callable[[], Awaitable[object]]]) -> tuple[list[float], list[object]]:
    seconds, results = [], []
    for call in calls:
        started = time.perf_counter()
        results.append(await call())
        seconds.append(time.perf_counter() - started)
    return seconds, results


async def _ours(size: int, rng: random.Random) -> dict[str, list[float]]:
    identities = [Identity.generate() for _ in range(size)]
    expires = int(time.time()) + 3600
    values = [
        sign_record(i, seq=1, expires=expires, addresses=[("192.0.2.1", 4433)]).encode()
        for i in identities
    ]
    keys = [discovery_key(i.peer_id) for i in identities]
    async with LocalSwarm(size, PeerRecordValidator(), config=DhtConfig(rpc_timeout=1.0)) as swarm:
        nodes = swarm.nodes
        publish, _ = await _timed(
            [partial(n.publish, k, v) for n, k, v in zip(nodes, keys, values, strict=True)]
        )
        askers = [rng.choice([n for n in nodes if n is not owner]) for owner in nodes]
        resolve, found = await _timed(
            [partial(a.get, k) for a, k in zip(askers, keys, strict=True)]
        )
        ok = [value == expected for value, expected in zip(found, values, strict=True)]
        return {
            "join": swarm.join_seconds[1:],
            "publish": publish,
            "resolve": resolve,
            "success": [100.0 * sum(ok) / len(ok)],
            "size": [len(values[0])],
        }


async def _network_get(server: Server, key: str) -> object:
    """``Server.get`` without its local-storage shortcut: the library's own network crawl."""
    target = Node(digest(key))
    nearest = server.protocol.router.find_neighbors(target)
    return await ValueSpiderCrawl(
        server.protocol, target, nearest, server.ksize, server.alpha
    ).find()


async def _raw(size: int, value_size: int, rng: random.Random) -> dict[str, list[float]]:
    servers: list[Server] = []
    join: list[float] = []
    try:
        for _ in range(size):
            started = time.perf_counter()
            server = Server()
            await server.listen(0, interface="127.0.0.1")
            if servers:
                seed = rng.choice(servers).transport.get_extra_info("sockname")
                await server.bootstrap([(seed[0], seed[1])])
                join.append(time.perf_counter() - started)
            servers.append(server)
        keys = [f"key-{i}" for i in range(size)]
        value = b"v" * value_size
        publish, _ = await _timed(
            [partial(s.set, k, value) for s, k in zip(servers, keys, strict=True)]
        )
        askers = [rng.choice([s for s in servers if s is not owner]) for owner in servers]
        resolve, _ = await _timed([partial(a.get, k) for a, k in zip(askers, keys, strict=True)])
        return {"join": join, "publish": publish, "resolve": resolve}
    finally:
        for server in servers:
            server.stop()


async def _mdns_first_authenticated() -> float:
    alice, bob = Identity.generate(), Identity.generate()
    started = time.perf_counter()
    async with (
        Transport(alice) as alice_t,
        Transport(bob) as bob_t,
        MdnsDiscovery(interfaces=LOOPBACK) as alice_mdns,
        MdnsDiscovery(interfaces=LOOPBACK) as bob_mdns,
    ):
        expires = int(time.time()) + 600
        await asyncio.gather(
            alice_mdns.advertise(
                sign_record(alice, seq=1, expires=expires, addresses=[alice_t.address]),
                alice_t.address[1],
            ),
            bob_mdns.advertise(
                sign_record(bob, seq=1, expires=expires, addresses=[bob_t.address]),
                bob_t.address[1],
            ),
        )
        resolver = Resolver([alice_mdns])
        while bob.peer_id not in {r.peer_id for r in alice_mdns.peers()}:
            await asyncio.sleep(0.01)
        await dial_any(alice_t, bob.peer_id, resolver)
        return time.perf_counter() - started


async def _zeroconf_register_and_resolve() -> float:
    started = time.perf_counter()
    async with (
        AsyncZeroconf(interfaces=LOOPBACK) as server,
        AsyncZeroconf(interfaces=LOOPBACK) as client,
    ):
        name = f"bench-{random.getrandbits(32):08x}.{SERVICE_TYPE}"
        info = AsyncServiceInfo(
            SERVICE_TYPE, name, port=9, parsed_addresses=["127.0.0.1"], properties={"x": b"y"}
        )
        registering = asyncio.ensure_future(server.async_register_service(info))
        probe = AsyncServiceInfo(SERVICE_TYPE, name)
        while not await probe.async_request(client.zeroconf, 200):
            pass
        await (await registering)
        return time.perf_counter() - started


def _ms(values: list[float], q: float) -> float:
    return 1000 * _percentile(values, q)


async def _run(quick: bool) -> list[Row]:
    size = 30 if quick else 100
    rng = random.Random(5)
    ours = await _ours(size, rng)
    raw = await _raw(size, int(ours["size"][0]), rng)
    mdns = await _mdns_first_authenticated()
    zeroconf = await _zeroconf_register_and_resolve()
    raw_name = f"raw kademlia, {size} nodes"

    def row(name: str, key: str, q: float, target: float) -> Row:
        return Row(
            name=f"dht {name} ({size} nodes)",
            value=_ms(ours[key], q),
            unit="ms",
            ceiling=_ms(raw[key], q),
            ceiling_name=raw_name,
            target=target,
            higher_is_better=False,
        )

    return [
        row("bootstrap per node p50", "join", 0.5, 50.0),
        row("publish p50", "publish", 0.5, 50.0),
        row("publish p99", "publish", 0.99, 200.0),
        row("resolve p50", "resolve", 0.5, 50.0),
        row("resolve p99", "resolve", 0.99, 200.0),
        Row(
            name=f"dht resolve success ({size} nodes)",
            value=ours["success"][0],
            unit="%",
            ceiling=None,
            ceiling_name=None,
            target=100.0,
        ),
        Row(
            name="mdns start to first authenticated peer (loopback)",
            value=mdns,
            unit="s",
            ceiling=zeroconf,
            ceiling_name="raw zeroconf register + resolve",
            target=5.0,
            higher_is_better=False,
        ),
    ]


def run(quick: bool = False) -> list[Row]:
    logging.getLogger("kademlia").setLevel(logging.CRITICAL)
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    return asyncio.run(_run(quick))
