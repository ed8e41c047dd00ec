"""Fuzz targets: one callable per decoder that faces the outside world.

A target takes arbitrary bytes and either returns or raises a :class:`PeerlineError` whose
fault is in the target's ``faults`` (``"remote"`` for bytes from the network; invite links are
user input, so ``"local"`` is expected there too). Anything else — another exception type, a
hang, unbounded memory — is a crash. ``seeds()`` gives valid inputs the mutator starts from.

Importing the protocol modules registers every frame type, so ``wire_frame`` covers the
transport, messaging, rendezvous and replication frames alike.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import node.auth
import node.channel
import node.messaging
import node.replication
import rendezvous.protocol
from node import envelope, feeds, prekeys, records, session, wire
from node.crypto import SigningKey
from node.identity import Identity
from node.invite import format_invite, make_invite, parse_invite

FRAME_MODULES = (node.auth, node.channel, node.messaging, node.replication, rendezvous.protocol)
NOW = 1_800_000_000.0
ALICE = Identity(SigningKey(bytes(range(32))))
BOB = Identity(SigningKey(bytes(range(1, 33))))


def _rng(seed: int) -> Callable[[int], bytes]:
    source = random.Random(seed)
    return source.randbytes


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    seeds: Callable[[], list[bytes]]
    faults: frozenset[str] = field(default=frozenset({"remote"}))


def _wire_seeds() -> list[bytes]:
    return [
        wire.LENGTH_PREFIX.pack(3) + wire.encode([wire.VERSION, 1, []])[:3],
        wire.encode({"a": [1, b"x", None, True, "s", 1.5]}),
        wire.encode_frame(node.auth.AuthChallenge(bytes(32))),
    ]


def _record_seeds() -> list[bytes]:
    record = records.sign_record(
        ALICE, seq=7, expires=int(NOW) + 3600, addresses=[("127.0.0.1", 4433)]
    )
    return [record.encode()]


def _envelope_seeds() -> list[bytes]:
    sealed = envelope.seal(BOB.peer_id, ALICE.peer_id, b"hello", expires=int(NOW), rng=_rng(1))
    return [sealed]


def _bundle_seeds() -> list[bytes]:
    state = prekeys.generate(ALICE, now=NOW, rng=_rng(2))
    return [prekeys.make_bundle(state, ALICE, now=NOW, max_one_time=3).to_bytes()]


def _chunk_seeds() -> list[bytes]:
    writer = feeds.FeedWriter(ALICE, feeds.feed_id(ALICE.peer_id, b"fuzz"))
    for index in range(3):
        writer.append(b"entry %d" % index)
    chunk = writer.seal()
    assert chunk is not None
    return [wire.encode_message(chunk)]


def _chunk(data: bytes) -> object:
    chunk = wire.decode_message(feeds.Chunk, data)
    feed = feeds.feed_id(ALICE.peer_id, b"fuzz")
    feeds.verify_chunk(chunk, ALICE.peer_id.key, feed)
    return chunk


def _invite_seeds() -> list[bytes]:
    invite = make_invite(ALICE, "alice", ["127.0.0.1:4433"])
    return [format_invite(invite).encode()]


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("wire_frame", lambda d: wire.FrameDecoder(max_frame=64 * 1024).feed(d), _wire_seeds),
        Target("wire_value", lambda d: wire.decode(d, max_size=64 * 1024), _wire_seeds),
        Target("peer_record", lambda d: records.validate(d, NOW), _record_seeds),
        Target("envelope_header", envelope.parse_envelope, _envelope_seeds),
        Target("envelope_open", lambda d: envelope.open_envelope(BOB, d), _envelope_seeds),
        Target("session_message", session.parse_message, lambda: []),
        Target("prekey_bundle", lambda d: prekeys.verify_bundle(d, now=NOW), _bundle_seeds),
        Target("feed_chunk", _chunk, _chunk_seeds),
        Target(
            "invite_link",
            lambda d: parse_invite(d.decode("utf-8", "replace")),
            _invite_seeds,
            frozenset({"local", "remote"}),
        ),
    )
}
