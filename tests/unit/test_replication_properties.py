"""Replication properties: any holdings, any impairment, any window converge, all verified."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import wire
from node.errors import LocalProtocolError, RemoteProtocolError
from node.feeds import EquivocationProof, FeedState
from node.replication import (
    Conflict,
    Data,
    Have,
    Missing,
    PeerFlagged,
    ReplicationConfig,
    ReplicationSession,
    Want,
)
from tests.unit.replication_sim import FEED, FEED_2, SECOND, WRITER, Net, Peer, write

OURS = write(96, per_chunk=4)
THEIRS = write(60, per_chunk=4, identity=SECOND, feed=FEED_2)
FEEDS = ((FEED, OURS), (FEED_2, THEIRS))


@settings(max_examples=60, deadline=None)
@given(
    placement=st.lists(st.integers(0, 3), min_size=len(OURS) + len(THEIRS)),
    drop=st.floats(0.0, 0.5),
    dup=st.floats(0.0, 0.5),
    jitter=st.floats(0.0, 0.2),
    window=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_two_peers_converge_to_the_union(
    placement: list[int], drop: float, dup: float, jitter: float, window: int, seed: int
) -> None:
    """Each chunk sits with A (0), B (1), both (2) or nobody (3); in the end both hold all."""
    config = ReplicationConfig(max_in_flight=window)
    peers = [
        Peer([FeedState(WRITER.peer_id, FEED), FeedState(SECOND.peer_id, FEED_2)], {})
        for _ in range(2)
    ]
    expected: dict[bytes, set[int]] = {FEED: set(), FEED_2: set()}
    where = iter(placement)
    for feed, chunks in FEEDS:
        for chunk in chunks:
            spot = next(where)
            for side in [0, 1] if spot == 2 else [spot] if spot < 2 else []:
                peers[side].states[feed].accept(chunk)
                peers[side].store[(feed, chunk.head.index)] = chunk
            if spot < 3:
                expected[feed].add(chunk.head.index)
    for peer in peers:
        peer.restart(0.0, config)
    net = Net(peers[0], peers[1], seed, drop=drop, dup=dup, jitter=jitter)

    def converged() -> bool:
        return all(
            {i for s, e in p.states[f].held.spans() for i in range(s, e)} == expected[f]
            for p in peers
            for f in expected
        )

    net.run(converged, max_steps=50_000)
    assert net.max_in_flight_seen <= window
    for peer in peers:
        assert not peer.of(PeerFlagged) and not peer.states[FEED].flagged
        for feed, chunks in FEEDS:
            for index in expected[feed]:
                assert peer.store[(feed, index)] == chunks[index]


def test_foreign_frames_are_caller_misuse() -> None:
    session = ReplicationSession([], 0.0)

    class NotOurs(wire.Message):
        pass

    with pytest.raises(LocalProtocolError):
        session.receive_frame(NotOurs(), 0.0)


_HONEST = OURS[:3]
_FRAMES = [
    wire.encode_frame(frame)
    for frame in (
        Have(FEED, [0, 3, 5, 9]),
        Want(FEED, [2, 1]),
        Data(_HONEST[1]),
        Missing(FEED, [4]),
        Conflict(EquivocationProof(_HONEST[1].head, _HONEST[2].head)),
    )
]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_FRAMES), st.data())
def test_mutated_frames_flag_or_pass_never_crash(frame: bytes, data: st.DataObject) -> None:
    """Network bytes in: frames or RemoteProtocolError; a session flags or carries on."""
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] ^= data.draw(st.integers(1, 255))
    peer = Peer.holding(_HONEST)
    try:
        decoded = wire.FrameDecoder().feed(bytes(mutated))
    except RemoteProtocolError:
        return
    for message in decoded:
        try:
            peer.session.receive_frame(message, 0.0)
        except LocalProtocolError:
            assert not isinstance(message, Have | Want | Data | Missing | Conflict)
        peer.pump()
    flagged = peer.of(PeerFlagged)
    assert len(flagged) <= 1 and peer.session.closed == bool(flagged)
    assert peer.states[FEED].held.spans() == [(0, 3)]
