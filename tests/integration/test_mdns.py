"""mDNS on loopback only: peers find each other's signed records; spoofs are refused.

The hostile advertisements are built with zeroconf directly (a hostile peer does not use our
code), always on ``interfaces=["127.0.0.1"]``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from node.errors import AuthenticationError
from node.identity import Identity
from node.lookup import Resolver, dial_any
from node.mdns import SERVICE_TYPE, MdnsDiscovery, pack_txt
from node.records import PeerRecord, sign_record, validate
from node.transport import Transport

pytestmark = pytest.mark.integration

LOOPBACK = ["127.0.0.1"]


def signed(identity: Identity, port: int, seq: int = 1) -> bytes:
    return sign_record(
        identity, seq=seq, expires=int(time.time()) + 600, addresses=[("127.0.0.1", port)]
    ).encode()


async def wait_until(predicate: Callable[[], object], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def seen(discovery: MdnsDiscovery, peer: Identity) -> PeerRecord | None:
    """The cached record of ``peer`` (other tests on this host may advertise too)."""
    return next((r for r in discovery.peers() if r.peer_id == peer.peer_id), None)


@pytest.fixture
async def hostile() -> AsyncIterator[AsyncZeroconf]:
    zc = AsyncZeroconf(interfaces=LOOPBACK)
    try:
        yield zc
    finally:
        await zc.async_close()


async def advertise_raw(zc: AsyncZeroconf, name: str, properties: dict[str, bytes]) -> None:
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        f"{name}.{SERVICE_TYPE}",
        port=4999,
        properties=properties,
        server=f"{name}.local.",
        parsed_addresses=["127.0.0.1"],
    )
    await (await zc.async_register_service(info))


async def test_two_nodes_find_each_other_and_updates_win() -> None:
    alice, bob = Identity.generate(), Identity.generate()

    async with (
        MdnsDiscovery(interfaces=LOOPBACK) as a,
        MdnsDiscovery(interfaces=LOOPBACK) as b,
    ):
        await asyncio.gather(
            a.advertise(validate(signed(alice, 4001), time.time()), 4001),
            b.advertise(validate(signed(bob, 4002), time.time()), 4002),
        )
        await wait_until(lambda: seen(a, bob) and seen(b, alice))
        assert seen(a, alice) is None and seen(b, bob) is None  # never ourselves
        # A newer record (new address) replaces the cached one.
        await b.advertise(validate(signed(bob, 4012, seq=2), time.time()), 4012)
        await wait_until(lambda: getattr(seen(a, bob), "seq", 0) == 2)
        assert (await a.lookup(bob.peer_id))[0].addresses == [("127.0.0.1", 4012)]


async def test_spoofed_advertisements_are_refused(hostile: AsyncZeroconf) -> None:
    bob, mallory = Identity.generate(), Identity.generate()
    tag = bob.peer_id.text()[2:10]  # unique names: other tests on this host may be browsing

    async with (
        MdnsDiscovery(interfaces=LOOPBACK) as observer,
        MdnsDiscovery(interfaces=LOOPBACK) as real,
    ):
        genuine = validate(signed(bob, 4002), time.time())
        forged_txt = pack_txt(validate(signed(mallory, 4999), time.time()), 4999)
        forged_txt["id"] = bob.peer_id.text().encode()
        garbage_txt = {"id": b"nonsense", "n": b"99", "r0": b"\xc1"}
        wrong_name = pack_txt(genuine, 4002)
        await asyncio.gather(
            real.advertise(genuine, 4002),
            # Mallory's record with Bob's id, under Bob-ish names: refused.
            advertise_raw(hostile, f"evil-one-{tag}", forged_txt),
            advertise_raw(hostile, mallory.peer_id.text(), wrong_name),
            advertise_raw(hostile, f"evil-three-{tag}", garbage_txt),
        )
        await wait_until(lambda: sum(observer.refused.values()) >= 3 and seen(observer, bob))
        assert seen(observer, mallory) is None
        assert observer.refused["record.wrong_peer"] >= 2
        assert observer.refused["record.malformed"] >= 1
        assert await observer.lookup(bob.peer_id) == [genuine]
        assert await observer.lookup(mallory.peer_id) == []


async def test_lookup_by_direct_query_for_a_peer_not_yet_browsed() -> None:
    bob = Identity.generate()

    record = validate(signed(bob, 4002), time.time())
    async with MdnsDiscovery(interfaces=LOOPBACK) as real:
        await real.advertise(record, 4002)
        async with MdnsDiscovery(interfaces=LOOPBACK) as late:
            assert await late.lookup(bob.peer_id) == [record]


async def test_record_pointing_at_an_impostor_ends_in_a_refused_handshake() -> None:
    alice, bob, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    async with (
        Transport(alice) as alice_t,
        Transport(bob) as bob_t,
        Transport(mallory) as mallory_t,
        MdnsDiscovery(interfaces=LOOPBACK) as alice_mdns,
        MdnsDiscovery(interfaces=LOOPBACK) as bob_mdns,
    ):
        resolver = Resolver([alice_mdns], timeout=2.0)
        # Bob's (stale) record names an address where Mallory now listens.
        stale = validate(signed(bob, mallory_t.address[1]), time.time())
        await bob_mdns.advertise(stale, mallory_t.address[1])
        await wait_until(lambda: seen(alice_mdns, bob))
        with pytest.raises(AuthenticationError):
            await dial_any(alice_t, bob.peer_id, resolver)
        # Bob republishes with his real address: the same lookup now reaches him.
        fresh = validate(signed(bob, bob_t.address[1], seq=2), time.time())
        await bob_mdns.advertise(fresh, bob_t.address[1])
        await wait_until(lambda: getattr(seen(alice_mdns, bob), "seq", 0) == 2)
        conn = await dial_any(alice_t, bob.peer_id, resolver)
        assert conn.peer_id == bob.peer_id
