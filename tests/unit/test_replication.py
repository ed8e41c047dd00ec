"""Replication: pairs of sessions over links that drop, reorder and duplicate frames.

Each peer is a session plus a dict standing in for the store; frames go through the real wire
encoding. Time is simulated: the loop jumps to the next delivery or timer, so lossy runs that
need many request timeouts still take milliseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from node import feeds, merkle, wire
from node.errors import RemoteProtocolError
from node.feeds import Chunk, FeedState, FeedWriter
from node.replication import (
    ChunkStored,
    Conflict,
    Data,
    EquivocationDetected,
    FeedSynced,
    Have,
    Missing,
    PeerFlagged,
    ReplicationConfig,
    Want,
)
from tests.unit.replication_sim import (
    FEED,
    FEED_2,
    SECOND,
    WRITER,
    Net,
    Peer,
    data_indexes,
    holds_all,
    write,
)


def test_new_member_syncs_10000_entries_newest_first_all_verified() -> None:
    chunks = write(10_000, per_chunk=256)
    source = Peer.holding(chunks)
    member = Peer([FeedState(WRITER.peer_id, FEED)], {})
    net = Net(source, member)
    net.run(holds_all(member, FEED, chunks))
    state = member.states[FEED]
    assert state.linked_prefix() == len(chunks) == 40
    assert state.entry_count == 10_000
    stored = [e.chunk.head.index for e in member.of(ChunkStored)]
    assert stored[0] == 39 and sorted(stored) == list(range(40))
    assert stored[:8] == list(range(39, 31, -1))  # the first window is the newest chunks
    for chunk in chunks:  # the member's store equals the writer's, chunk by chunk
        assert member.store[(FEED, chunk.head.index)] == chunk
    assert member.of(FeedSynced) and not member.of(PeerFlagged)
    assert net.max_in_flight_seen <= ReplicationConfig().max_in_flight


@pytest.mark.parametrize("seed", range(6))
def test_lossy_duplicating_reordering_links_converge_both_ways(seed: int) -> None:
    ours, theirs = write(120, per_chunk=4), write(90, per_chunk=4, identity=SECOND, feed=FEED_2)
    a_states = [FeedState(WRITER.peer_id, FEED), FeedState(SECOND.peer_id, FEED_2)]
    b_states = [FeedState(WRITER.peer_id, FEED), FeedState(SECOND.peer_id, FEED_2)]
    a, b = Peer(a_states, {}), Peer(b_states, {})
    # Each holds a part of each feed, with holes, and the other part lives on the other side.
    for i, chunk in enumerate(ours):
        side = a if i % 3 else b
        side.states[FEED].accept(chunk)
        side.store[(FEED, chunk.head.index)] = chunk
    for i, chunk in enumerate(theirs):
        side = b if i % 5 else a
        side.states[FEED_2].accept(chunk)
        side.store[(FEED_2, chunk.head.index)] = chunk
    net = Net(a, b, seed, drop=0.2, dup=0.15, jitter=0.05)
    net.run(
        lambda: all(
            p.states[f].held.size() == len(c)
            for p in (a, b)
            for f, c in ((FEED, ours), (FEED_2, theirs))
        )
    )
    for peer in (a, b):
        assert peer.states[FEED].linked_prefix() == len(ours)
        assert peer.states[FEED_2].linked_prefix() == len(theirs)
        assert not peer.of(PeerFlagged) and not peer.session.closed
    assert net.max_in_flight_seen <= ReplicationConfig().max_in_flight


def test_cut_and_resume_fetches_only_what_is_missing() -> None:
    chunks = write(2_000, per_chunk=16)  # 125 chunks
    source = Peer.holding(chunks)
    member = Peer([FeedState(WRITER.peer_id, FEED)], {})
    net = Net(source, member, jitter=0.01)
    net.run(lambda: member.states[FEED].held.size() >= 60)
    before = set(member.states[FEED].held.spans())
    assert member.states[FEED].held.size() < 125  # cut in the middle
    sent_before = len(data_indexes(net.ab))
    # The connection dies: frames in flight are lost; new sessions over the same state.
    source.restart(net.now)
    member.restart(net.now)
    resumed = Net(source, member, jitter=0.01)
    resumed.now = net.now
    resumed.run(holds_all(member, FEED, chunks))
    again = data_indexes(resumed.ab)
    assert member.states[FEED].linked_prefix() == 125
    assert before and not any(index in member_held(before) for index in again)
    assert sent_before + len(again) <= 125 + ReplicationConfig().max_in_flight


def member_held(spans: set[tuple[int, int]]) -> set[int]:
    return {i for start, end in spans for i in range(start, end)}


def test_live_append_propagates_after_announce() -> None:
    writer = FeedWriter(WRITER, FEED, max_entries=4)
    first = [c for i in range(8) if (c := writer.append(b"%d" % i)) is not None]
    source = Peer.holding(first)
    member = Peer([FeedState(WRITER.peer_id, FEED)], {})
    net = Net(source, member)
    net.run(holds_all(member, FEED, first))
    chunk = writer.append(b"late 1") or writer.seal()
    assert chunk is not None
    source.states[FEED].accept(chunk)
    source.store[(FEED, chunk.head.index)] = chunk
    source.session.announce(FEED)
    net.run(lambda: chunk.head.index in member.states[FEED].held)
    # A push needs no announce round trip at all.
    pushed = writer.append(b"late 2") or writer.seal()
    assert pushed is not None
    source.session.send_chunk(pushed)
    net.run(lambda: pushed.head.index in member.states[FEED].held)


def test_any_member_serves_any_feed_and_a_missing_chunk_heals_later() -> None:
    chunks = write(64, per_chunk=8)
    relay = Peer.holding(chunks)  # not the writer: holds someone else's feed
    missing = chunks[3].head.index
    relay.serve = lambda f, i: None if i == missing else relay.store.get((f, i))
    member = Peer([FeedState(WRITER.peer_id, FEED)], {})
    net = Net(relay, member)
    net.run(lambda: member.states[FEED].held.size() == len(chunks) - 1 and net.now > 1)
    assert missing not in member.states[FEED].held
    assert any(isinstance(f, Missing) for f in net.ab.sent)
    # The relay's store gets the chunk back; its next periodic Have heals the member.
    relay.serve = lambda f, i: relay.store.get((f, i))
    net.run(holds_all(member, FEED, chunks))


def test_unanswered_requests_are_withdrawn_and_retried_at_the_next_announce() -> None:
    chunks = write(16, per_chunk=8)
    relay = Peer.holding(chunks)
    member = Peer([FeedState(WRITER.peer_id, FEED)], {})
    net = Net(relay, member, drop=1.0)  # everything is lost at first
    net.run(lambda: net.now > 12)
    assert member.session.in_flight == 0  # withdrawn after the request timeout
    net.ab.drop = net.ba.drop = 0.0
    net.run(holds_all(member, FEED, chunks))
    assert net.now > ReplicationConfig().announce_interval


# --------------------------------------------------------------------------- refusals


def _tamper_payload(chunk: Chunk) -> Chunk:
    entries = list(chunk.entries)
    entries[0] = dataclasses.replace(entries[0], payload=b"forged")
    return Chunk(chunk.head, entries)


def _tamper_signature(chunk: Chunk) -> Chunk:
    return Chunk(dataclasses.replace(chunk.head, signature=bytes(64)), chunk.entries)


def _break_chain(chunk: Chunk) -> Chunk:
    """A chunk the writer itself signed over entries that do not chain."""
    entries = list(chunk.entries)
    entries[1] = dataclasses.replace(entries[1], prev=bytes(32))
    leaves = [feeds.entry_hash(e) for e in entries]
    head = dataclasses.replace(
        chunk.head,
        root=merkle.root_of(leaves),
        last=leaves[-1],
        size=sum(len(wire.encode_message(e)) for e in entries),
    )
    head = dataclasses.replace(head, signature=WRITER.sign(feeds.CHUNK_DOMAIN, head.body()))
    return Chunk(head, entries)


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (_tamper_payload, "feed.broken_chain"),
        (_tamper_signature, "feed.bad_signature"),
        (_break_chain, "feed.broken_chain"),
    ],
)
def test_bad_chunk_is_refused_and_sender_flagged(
    tamper: Callable[[Chunk], Chunk], code: str
) -> None:
    chunks = write(40, per_chunk=8)
    liar = Peer.holding(chunks)
    bad_index = 2
    liar.serve = lambda f, i: tamper(chunks[i]) if i == bad_index else liar.store.get((f, i))
    member = Peer([FeedState(WRITER.peer_id, FEED)], {})
    net = Net(liar, member)
    net.run(lambda: member.session.closed)
    flagged = member.of(PeerFlagged)
    assert len(flagged) == 1 and flagged[0].error.code == code
    assert bad_index not in member.states[FEED].held
    assert (FEED, bad_index) not in member.store
    assert member.session.frames_to_send() == [] and member.session.get_timer() is None
    # An honest peer then completes the feed over a new session.
    honest = Peer.holding(chunks)
    member.restart(net.now)
    Net(honest, member).run(holds_all(member, FEED, chunks))


def test_equivocation_is_detected_kept_and_passed_on_without_flagging_the_relay() -> None:
    honest = write(32, per_chunk=8)
    fork_writer = FeedWriter(WRITER, FEED, tip=honest[1].head, max_entries=8)
    fork = honest[:2] + [c for i in range(24) if (c := fork_writer.append(b"x%d" % i))]
    member = Peer.holding(honest)  # chunks 0..3
    relay = Peer.holding(fork)  # 0..4 of the writer's other branch, relayed in good faith
    net = Net(relay, member)
    net.run(lambda: bool(member.of(EquivocationDetected)) and bool(relay.of(EquivocationDetected)))
    detected = member.of(EquivocationDetected)[0]
    detected.proof.verify()
    assert detected.chunk == fork[4]  # the refused entries are handed over, not lost
    assert relay.of(EquivocationDetected)[0].chunk is None  # it only got the proof
    assert member.states[FEED].flagged and member.states[FEED].proofs
    assert relay.states[FEED].flagged  # learnt from the Conflict frame
    assert not member.of(PeerFlagged) and not relay.of(PeerFlagged)
    assert member.states[FEED].head(3) == honest[3].head  # nothing silently replaced
    assert 4 not in member.states[FEED].held
    # The conflicting chunk is not asked for again, however often it is announced.
    sent = len(net.ba.sent)
    net.run(lambda: net.now > 100)
    assert any(isinstance(f, Have) for f in net.ab.sent[sent:])
    assert not [f for f in net.ba.sent[sent:] if isinstance(f, Want)]


def test_share_proof_reaches_a_third_peer() -> None:
    honest = write(16, per_chunk=8)
    fork_writer = FeedWriter(WRITER, FEED, tip=honest[0].head, max_entries=8)
    forked = [c for i in range(8) if (c := fork_writer.append(b"y%d" % i))]
    state = FeedState(WRITER.peer_id, FEED)
    for chunk in honest:
        state.accept(chunk)
    outcome = state.accept(forked[0])
    assert outcome.proof is not None
    a = Peer([state], {})
    b = Peer.holding(honest)
    a.session.share_proof(outcome.proof)
    Net(a, b).run(lambda: bool(b.of(EquivocationDetected)))
    assert b.states[FEED].flagged


# --------------------------------------------------------------------------- malformed input


def _flagged_by(frame: wire.Message, code: str) -> None:
    peer = Peer.holding(write(16))
    peer.session.receive_frame(frame, 0.0)
    peer.pump()
    flagged = peer.of(PeerFlagged)
    assert len(flagged) == 1 and flagged[0].error.code == code
    assert isinstance(flagged[0].error, RemoteProtocolError)


def test_bad_have_bounds_and_floods_flag_the_peer() -> None:
    _flagged_by(Have(FEED, [3]), "replication.malformed")
    _flagged_by(Have(FEED, [5, 5]), "replication.malformed")
    _flagged_by(Have(FEED, [5, 9, 8, 12]), "replication.malformed")
    peer = Peer.holding(write(16))
    for n in range(20):  # additive Haves: 20 x 256 separate spans
        bounds = [b for k in range(256) for b in (n * 1024 + 4 * k, n * 1024 + 4 * k + 1)]
        peer.session.receive_frame(Have(FEED, bounds), 0.0)
    peer.pump()
    assert peer.session.closed and peer.of(PeerFlagged)[0].error.code == "replication.limit"


def test_too_many_outstanding_requests_flag_the_peer() -> None:
    chunks = write(8 * 70, per_chunk=8)
    peer = Peer.holding(chunks)
    peer.session.receive_frame(Want(FEED, list(range(64))), 0.0)
    peer.pump()  # all 64 answered: nothing outstanding
    peer.session.receive_frame(Want(FEED, list(range(64, 70))), 0.0)
    assert not peer.session.closed
    peer.session.receive_frame(Want(FEED, list(range(0, 59))), 0.0)  # 65 unanswered
    assert peer.session.closed
    peer.pump()
    assert peer.of(PeerFlagged)[0].error.code == "replication.limit"


def test_a_peer_announcing_what_it_lacks_is_flagged() -> None:
    liar = Peer.holding(write(16))
    liar.serve = lambda f, i: None  # announces chunks, never has them
    member = Peer([FeedState(WRITER.peer_id, FEED)], {})
    member.restart(0.0, ReplicationConfig(max_false_haves=5))
    net = Net(liar, member)
    net.run(lambda: member.session.closed, max_steps=2_000)
    assert member.of(PeerFlagged)[0].error.code == "replication.limit"


def test_a_removed_feed_is_no_longer_fetched_or_served() -> None:
    ours, theirs = write(200, per_chunk=4), write(200, per_chunk=4, identity=SECOND, feed=FEED_2)
    source = Peer([FeedState(WRITER.peer_id, FEED), FeedState(SECOND.peer_id, FEED_2)], {})
    for feed, chunks in ((FEED, ours), (FEED_2, theirs)):
        for chunk in chunks:
            source.states[feed].accept(chunk)
            source.store[(feed, chunk.head.index)] = chunk
    member = Peer([FeedState(WRITER.peer_id, FEED), FeedState(SECOND.peer_id, FEED_2)], {})
    source.restart(0.0)
    net = Net(source, member)
    net.run(lambda: member.states[FEED_2].held.size() >= 5)
    member.session.remove_feed(FEED_2)  # e.g. its writer left the group
    source.session.remove_feed(FEED_2)
    net.run(holds_all(member, FEED, ours))
    assert member.states[FEED_2].held.size() < len(theirs)
    assert len(member.board) == 0
    source.session.receive_frame(Want(FEED_2, [0]), net.now)
    source.session.send_chunk(theirs[1])
    assert source.session.frames_to_send() == [Missing(FEED_2, [0])]


def test_a_push_before_any_have_is_verified_and_stored() -> None:
    chunk = write(8)[0]
    member = Peer([FeedState(WRITER.peer_id, FEED)], {})
    member.session.receive_frame(Data(chunk), 0.0)  # found by the mutation property
    member.pump()
    assert [type(e) for e in member.events] == [ChunkStored]
    assert member.store[(FEED, 0)] == chunk


def test_unknown_feeds_are_ignored_or_answered_missing() -> None:
    stranger = feeds.feed_id(SECOND.peer_id, b"elsewhere")
    peer = Peer.holding(write(16))
    peer.session.frames_to_send()
    peer.session.receive_frame(Have(stranger, [0, 5]), 0.0)
    other = write(8, identity=SECOND, feed=stranger)
    peer.session.receive_frame(Data(other[0]), 0.0)
    peer.session.receive_frame(Want(stranger, [0]), 0.0)
    assert peer.session.frames_to_send() == [Missing(stranger, [0])]
    assert not peer.session.closed and not peer.events


def test_forged_conflict_frame_flags_the_peer() -> None:
    chunks = write(16)
    proof = feeds.EquivocationProof(chunks[0].head, chunks[1].head)  # no conflict at all
    _flagged_by(Conflict(proof), "feed.bad_proof")


def test_replication_frames_survive_the_wire() -> None:
    chunk = write(8)[0]
    for frame in (Have(FEED, [0, 4, 6, 9]), Want(FEED, [3, 2]), Data(chunk), Missing(FEED, [1])):
        decoded = wire.FrameDecoder().feed(wire.encode_frame(frame))
        assert decoded == [frame]
