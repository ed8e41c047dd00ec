"""50 real kademlia nodes on loopback: publish/resolve, refusal of bad records, stale answers."""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import pytest
from kademlia.node import Node

from dht.node import DhtConfig, DhtNode
from dht.swarm import LocalSwarm
from dht.values import PeerRecordValidator
from node import records, wire
from node.errors import DiscoveryError
from node.identity import Identity
from node.lookup import DhtLookup, Resolver
from node.records import RecordPublisher, discovery_key, sign_record

pytestmark = pytest.mark.integration

SIZE = 50
CONFIG = DhtConfig(ksize=8, rpc_timeout=1.0)


def record(identity: Identity, seq: int, ttl: int = 600, **kw: Any) -> bytes:
    addresses = kw.pop("addresses", [("127.0.0.1", 4000 + seq % 1000)])
    return sign_record(
        identity, seq=seq, expires=int(time.time()) + ttl, addresses=addresses, **kw
    ).encode()


async def store_everywhere(swarm: LocalSwarm, key: bytes, value: bytes) -> list[Any]:
    """Send a STORE straight to every node, bypassing our own publish checks."""
    sender = swarm.nodes[0].protocol
    targets = [Node(node.node.id, *node.address) for node in swarm.nodes[1:]]
    return [await sender.call_store(target, key, value) for target in targets]


async def test_publish_resolve_and_refusals() -> None:
    identities = [Identity.generate() for _ in range(SIZE)]
    rng = random.Random(7)
    async with LocalSwarm(SIZE, PeerRecordValidator(), config=CONFIG) as swarm:
        genuine = [record(identity, 10) for identity in identities]
        for identity, node, mine in zip(identities, swarm.nodes, genuine, strict=True):
            accepted = await node.publish(discovery_key(identity.peer_id), mine)
            assert accepted >= CONFIG.ksize // 2
        found = 0
        for identity in identities:
            asker = rng.choice(swarm.nodes)
            value = await asker.get(discovery_key(identity.peer_id))
            found += value is not None and records.validate(value, time.time()).seq == 10
        assert found == SIZE

        victim = identities[0]
        key = discovery_key(victim.peer_id)
        good = records.validate(genuine[0], time.time())
        mallory = Identity.generate()
        body = dataclasses.replace(good.body, seq=99, addresses=[records.Address("10.9.9.9", 1)])
        forged = records.PeerRecord(body, good.signature).encode()
        bad_values = {
            "forged": forged,
            "expired": record(victim, 50, ttl=-1),
            "older": record(victim, 9),
            "oversized": b"\x00" * 4000,
            "wrong_key": record(mallory, 100),
            "not_bytes": "text",
        }
        # Every node holds the genuine seq 10, so "older" is older for everyone.
        assert all(ok and stored for ok, stored in await store_everywhere(swarm, key, genuine[0]))
        for name, bad in bad_values.items():
            answers = await store_everywhere(swarm, key, bad)  # type: ignore[arg-type]
            assert all(ok and stored is False for ok, stored in answers), name
        for node in swarm.nodes[1:]:
            held = node.storage.get(key)
            assert held is not None and records.validate(held, time.time()) == good
        value = await swarm.nodes[5].get(key)
        assert value is not None and records.validate(value, time.time()) == good


async def test_newest_record_wins_against_stale_answers() -> None:
    identities = [Identity.generate() for _ in range(SIZE)]
    async with LocalSwarm(SIZE, PeerRecordValidator(), config=CONFIG, seed=3) as swarm:
        old = {discovery_key(i.peer_id): record(i, 1) for i in identities}
        for identity, node in zip(identities, swarm.nodes, strict=True):
            await node.publish(
                discovery_key(identity.peer_id), old[discovery_key(identity.peer_id)]
            )
        for identity, node in zip(identities, swarm.nodes, strict=True):
            await node.publish(discovery_key(identity.peer_id), record(identity, 2))
        stale = swarm.nodes[: SIZE // 5]
        for node in stale:
            # A stale (or malicious) node that keeps answering the old record for every key.
            node.protocol.rpc_find_value = (  # type: ignore[method-assign]
                lambda sender, nodeid, key: {"value": old[key]} if key in old else None
            )
        honest = swarm.nodes[SIZE // 5 :]
        rng = random.Random(11)
        lookups = newest = 0
        for identity in identities:
            for asker in rng.sample(honest, 2):
                value = await asker.get(discovery_key(identity.peer_id))
                lookups += 1
                newest += value is not None and records.validate(value, time.time()).seq == 2
        assert newest >= 0.99 * lookups


async def test_client_only_node_resolves_but_is_never_listed() -> None:
    identity = Identity.generate()
    key = discovery_key(identity.peer_id)
    async with LocalSwarm(12, PeerRecordValidator(), config=CONFIG) as swarm:
        client = await swarm.add(dataclasses.replace(CONFIG, client_only=True))
        assert await client.publish(key, record(identity, 3)) >= 1
        assert client.storage.get(key) is None
        assert await swarm.nodes[3].get(key) == record(identity, 3)
        assert await client.get(key) == record(identity, 3)
        for node in swarm.nodes:
            contacts = [n for bucket in node.protocol.router.buckets for n in bucket.get_nodes()]
            assert client.node.id not in {n.id for n in contacts}


async def test_garbage_datagrams_are_dropped_and_node_keeps_serving() -> None:
    identity = Identity.generate()
    key = discovery_key(identity.peer_id)
    async with LocalSwarm(3, PeerRecordValidator(), config=CONFIG) as swarm:
        target = swarm.nodes[1]
        sock = swarm.nodes[0].protocol.transport
        msg_id = b"\x07" * 20
        garbage = [
            b"",
            b"\x00" * 5,
            b"\x00" + msg_id + b"\xc1",
            b"\x00" + msg_id + wire.encode(["store", [b"x", b"y"]]),
            b"\x00" + msg_id + wire.encode(["store", [b"\x01" * 20, key, 5]]),
            b"\x00" + msg_id + wire.encode(["find_node", [b"short", key]]),
            b"\x00" + msg_id + wire.encode(["nope", []]),
            b"\x00" + msg_id + wire.encode(["ping"]),
            b"\x01" + msg_id + wire.encode([1, 2]),
            b"\x02" + msg_id + b"\x90",
            b"\x00" + msg_id + b"\x00" * 9000,
        ]
        for datagram in garbage:
            sock.sendto(datagram, target.address)
        assert await swarm.nodes[0].publish(key, record(identity, 4)) >= 1
        assert await swarm.nodes[2].get(key) == record(identity, 4)
        assert sum(target.protocol.dropped.values()) >= 7
        assert target.storage.refused["too_large"] >= 1  # the STORE of an int value


async def test_dead_bootstrap_address_does_not_block_start() -> None:
    config = dataclasses.replace(
        CONFIG, host="127.0.0.1", bootstrap=(("127.0.0.1", 9),), rpc_timeout=0.2
    )
    async with DhtNode(config, PeerRecordValidator()) as node:
        assert node.address[0] == "127.0.0.1"
        assert await node.get(b"\x00" * 20) is None


async def test_port_in_use_is_a_discovery_error() -> None:
    async with DhtNode(dataclasses.replace(CONFIG, host="127.0.0.1"), PeerRecordValidator()) as a:
        taken = dataclasses.replace(CONFIG, host="127.0.0.1", port=a.address[1])
        with pytest.raises(DiscoveryError):
            await DhtNode(taken, PeerRecordValidator()).start()


async def test_resolver_over_the_dht_publishes_and_resolves_peer_records() -> None:
    alice = Identity.generate()
    publisher = RecordPublisher(alice, addresses=[("127.0.0.1", 4433)])
    async with LocalSwarm(8, PeerRecordValidator(), config=CONFIG) as swarm:
        first = publisher.handle_timer(time.time())
        assert first is not None
        assert await DhtLookup(swarm.nodes[0]).publish(first) >= 4
        resolver = Resolver([DhtLookup(swarm.nodes[5])])
        assert await resolver.resolve(alice.peer_id) == [first]
        publisher.update(addresses=[("127.0.0.1", 4434)])
        second = publisher.handle_timer(time.time())
        assert second is not None
        assert await DhtLookup(swarm.nodes[1]).publish(second) >= 4
        assert await resolver.resolve(alice.peer_id) == [first]  # cached until it expires
        assert (await resolver.resolve(alice.peer_id, refresh=True))[0] == second
        assert await resolver.resolve(Identity.generate().peer_id) == []
