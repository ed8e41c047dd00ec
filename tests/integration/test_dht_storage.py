"""ValidatedStorage quotas and expiry; republish never rolls a newer value back."""

from __future__ import annotations

import time

from dht.node import DhtConfig, node_id_for
from dht.storage import LOCAL_SOURCE, StorageLimits, ValidatedStorage
from dht.swarm import LocalSwarm
from dht.values import Accepted, PeerRecordValidator
from node.errors import RemoteProtocolError
from node.identity import Identity
from node.records import discovery_key, sign_record


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class ToyValidator:
    """Values are b"<seq>:<expires>:<padding>" filed under any 20-byte key."""

    def check(self, key: bytes, value: bytes, now: float) -> Accepted:
        try:
            seq, expires, _ = value.split(b":", 2)
            accepted = Accepted(value, int(seq), float(expires))
        except ValueError:
            raise RemoteProtocolError("toy value malformed") from None
        if accepted.expires <= now:
            raise RemoteProtocolError("expired", code="record.expired")
        return accepted


def toy(seq: int, expires: int = 2_000, pad: int = 0) -> bytes:
    return b"%d:%d:" % (seq, expires) + b"x" * pad


def key(i: int) -> bytes:
    return i.to_bytes(20, "big")


def make(limits: StorageLimits | None = None) -> tuple[ValidatedStorage, Clock]:
    clock = Clock()
    storage = ValidatedStorage(
        ToyValidator(), limits or StorageLimits(), clock=clock, monotonic=clock
    )
    return storage, clock


def test_newer_replaces_older_never_the_reverse() -> None:
    storage, _ = make()
    assert storage.offer(key(1), toy(2), "10.0.0.1")
    assert not storage.offer(key(1), toy(1), "10.0.0.2")
    storage[key(1)] = toy(1)  # the library's path is validated the same way
    assert storage[key(1)] == toy(2)
    assert storage.offer(key(1), toy(2), "10.0.0.3")  # same value: re-confirmed
    assert storage.offer(key(1), toy(3), "10.0.0.3")
    assert storage.get(key(1)) == toy(3)
    assert storage.refused["stale"] == 2


def test_invalid_values_and_keys_are_refused() -> None:
    storage, _ = make(StorageLimits(max_value_size=64))
    assert not storage.offer(key(1), b"garbage", "a")
    assert not storage.offer(b"short", toy(1), "a")
    assert not storage.offer(key(1), toy(1, pad=100), "a")
    assert not storage.offer(key(1), "text", "a")
    assert len(storage) == 0
    assert set(storage.refused) == {"remote.malformed", "bad_key", "too_large"}


def test_expiry_is_honoured_everywhere() -> None:
    storage, clock = make()
    storage.offer(key(1), toy(1, expires=1_100), "a")
    storage.offer(key(2), toy(1, expires=5_000), "a")
    clock.now = 1_100
    assert storage.get(key(1)) is None
    assert [k for k, _ in storage] == [key(2)]
    assert [k for k, _ in storage.iter_older_than(0)] == [key(2)]
    assert storage.source_count("a") == 1


def test_per_source_total_and_byte_quotas() -> None:
    limits = StorageLimits(max_entries=5, max_bytes=100, max_per_source=2, max_value_size=100)
    storage, clock = make(limits)
    assert storage.offer(key(1), toy(1, expires=1_500), "a")
    assert storage.offer(key(2), toy(1), "a")
    assert not storage.offer(key(3), toy(1), "a")
    assert storage.refused["quota_source"] == 1
    assert storage.offer(key(1), toy(2, expires=1_500), "a")  # updating its own key is not growth
    assert storage.offer(key(3), toy(1), LOCAL_SOURCE)  # our own writes are exempt
    assert storage.offer(key(4), toy(1), "b")
    assert storage.offer(key(5), toy(1), "c")
    assert not storage.offer(key(6), toy(1), "d")
    assert storage.refused["quota_entries"] == 1
    assert not storage.offer(key(5), toy(2, pad=85), "c")
    assert storage.refused["quota_bytes"] == 1
    clock.now = 1_500  # key 1 expires: room again
    assert storage.offer(key(6), toy(1), "d")
    assert storage.total_bytes == sum(len(v) for _, v in storage)


async def test_republish_of_an_old_value_never_rolls_back() -> None:
    identity = Identity.generate()
    dkey = discovery_key(identity.peer_id)
    expires = int(time.time()) + 600
    old = sign_record(identity, seq=1, expires=expires, addresses=[("127.0.0.1", 1)]).encode()
    new = sign_record(identity, seq=2, expires=expires, addresses=[("127.0.0.1", 2)]).encode()
    config = DhtConfig(ksize=6, rpc_timeout=1.0, republish_after=0.0)
    async with LocalSwarm(10, PeerRecordValidator(), config=config) as swarm:
        laggard = swarm.nodes[0]
        assert await laggard.publish(dkey, old) >= 6
        laggard.storage[dkey] = old  # it holds a copy (as one of the closest would)
        # The laggard misses the update (as if it were offline for a while)...
        laggard.protocol.rpc_store = lambda *args: False  # type: ignore[method-assign]
        assert await swarm.nodes[1].publish(dkey, new) >= 5
        del laggard.protocol.rpc_store
        assert laggard.storage.get(dkey) == old
        # ...then its hourly republish pushes the old value around: every holder refuses it.
        had_new = [n for n in swarm.nodes if n.storage.get(dkey) == new]
        assert len(had_new) >= 5
        await laggard.refresh()
        assert all(n.storage.get(dkey) == new for n in had_new)
        # And a lookup by the laggard returns the newest, then repairs its own copy.
        assert await laggard.get(dkey) == new


def test_node_id_is_derived_from_the_identity_not_the_raw_key() -> None:
    identity = Identity.generate()
    node_id = node_id_for(identity.peer_id)
    assert len(node_id) == 20 and node_id == node_id_for(identity.peer_id)
    assert node_id not in identity.peer_id.key
    assert node_id != discovery_key(identity.peer_id)[:20]
