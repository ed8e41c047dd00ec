"""Resolver and dial_any with fake sources and a fake transport (no sockets)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import cast

import pytest

from node.errors import AuthenticationError, DialError, InvalidRecordError
from node.identity import Identity, PeerId
from node.lookup import AddressLookup, Resolver, dial_any
from node.records import PeerRecord, sign_record
from node.transport import Connection, Transport

NOW = 1_800_000_000.0
BOB = Identity.generate()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def rec(seq: int, port: int, ttl: int = 600, identity: Identity = BOB) -> PeerRecord:
    return sign_record(identity, seq=seq, expires=int(NOW) + ttl, addresses=[("10.0.0.2", port)])


class Source:
    def __init__(self, name: str, answer: list[PeerRecord], delay: float = 0.0) -> None:
        self.name, self.answer, self.delay, self.calls = name, answer, delay, 0

    async def lookup(self, peer_id: PeerId) -> list[PeerRecord]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.answer and self.answer[0].peer_id == BOB.peer_id and self.name == "broken":
            raise InvalidRecordError("boom")
        return self.answer


def resolver(*sources: AddressLookup, clock: Clock | None = None) -> Resolver:
    return Resolver(sources, clock=clock or Clock(), timeout=0.2)


async def test_highest_seq_across_sources_and_slow_or_broken_sources_ignored() -> None:
    slow = Source("slow", [rec(9, 9)], delay=5)
    sources = [
        Source("a", [rec(2, 2)]),
        Source("b", [rec(3, 3)]),
        slow,
        Source("broken", [rec(8, 8)]),
    ]
    loop = asyncio.get_running_loop()
    started = loop.time()
    found = await resolver(*sources).resolve(BOB.peer_id)
    assert loop.time() - started < 1
    assert [r.seq for r in found] == [3, 2]


async def test_forged_or_foreign_records_from_a_source_are_refused() -> None:
    good = rec(2, 2)
    body = dataclasses.replace(good.body, seq=50)
    forged = PeerRecord(body, good.signature)
    other = rec(60, 6, identity=Identity.generate())
    expired = rec(70, 7, ttl=-5)
    found = await resolver(Source("x", [forged, other, expired, good])).resolve(BOB.peer_id)
    assert found == [good]


async def test_cache_until_expiry_then_ask_again() -> None:
    clock = Clock()
    source = Source("a", [rec(2, 2, ttl=100)])
    r = resolver(source, clock=clock)
    assert (await r.resolve(BOB.peer_id))[0].seq == 2
    source.answer = [rec(3, 3)]
    assert (await r.resolve(BOB.peer_id))[0].seq == 2
    assert source.calls == 1
    assert (await r.resolve(BOB.peer_id, refresh=True))[0].seq == 3
    source.answer = [rec(2, 2, ttl=100)]
    assert (await r.resolve(BOB.peer_id, refresh=True))[0].seq == 3  # cache never goes back
    clock.now = NOW + 700
    assert r.cached(BOB.peer_id) is None
    assert await r.resolve(BOB.peer_id) == []


DIALED = cast(Connection, object())
LIVE = cast(Connection, object())


class FakeTransport:
    def __init__(
        self, good: set[tuple[str, int]], spoofed: frozenset[tuple[str, int]] = frozenset()
    ) -> None:
        self.good, self.spoofed = good, spoofed
        self.dials: list[list[tuple[str, int]]] = []
        self.live: Connection | None = None

    def connection(self, peer: PeerId) -> Connection | None:
        return self.live

    async def dial(self, peer: PeerId, addresses: Sequence[tuple[str, int]]) -> Connection:
        self.dials.append(list(addresses))
        if self.spoofed & set(addresses):
            raise AuthenticationError("wrong key")
        if self.good & set(addresses):
            return DIALED
        raise DialError("unreachable")


async def test_dial_any_tries_newest_then_refreshes() -> None:
    source = Source("a", [rec(2, 2), rec(1, 1)])
    r = resolver(source)
    fake = FakeTransport(good={("10.0.0.2", 5)}, spoofed=frozenset({("10.0.0.2", 2)}))
    transport = cast(Transport, fake)
    source.answer = [rec(2, 2), rec(1, 1)]
    with pytest.raises(AuthenticationError):
        await dial_any(transport, BOB.peer_id, r)
    assert fake.dials == [[("10.0.0.2", 2), ("10.0.0.2", 1)]]
    source.answer = [rec(5, 5)]  # the peer moved and republished
    fake.dials.clear()
    assert await dial_any(transport, BOB.peer_id, r) is DIALED
    assert fake.dials == [[("10.0.0.2", 2)], [("10.0.0.2", 5)]]
    fake.live = LIVE
    assert await dial_any(transport, BOB.peer_id, r) is LIVE


async def test_dial_any_without_any_address() -> None:
    with pytest.raises(DialError) as info:
        await dial_any(
            cast(Transport, FakeTransport(set())), BOB.peer_id, resolver(Source("a", []))
        )
    assert info.value.code == "dial.no_address"


def test_remember_validates_and_never_goes_back() -> None:
    r = resolver()
    assert r.remember(rec(4, 4)) == rec(4, 4)
    forged = PeerRecord(dataclasses.replace(rec(4, 4).body, seq=99), rec(4, 4).signature)
    assert r.remember(forged) == rec(4, 4)
    assert r.remember(rec(3, 3)) == rec(4, 4)
    assert r.cached(BOB.peer_id) == rec(4, 4)
