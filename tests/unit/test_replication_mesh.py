"""Replication among several nodes: relaying, parallel fetching without duplicates, forks."""

from __future__ import annotations

import random

from node.feeds import Chunk, FeedState, FeedWriter
from node.replication import Data, EquivocationDetected, PeerFlagged
from tests.unit.replication_sim import FEED, WRITER, Channel, Link, Peer, Sim, write


def mesh(
    peers: dict[str, Peer], edges: list[tuple[str, str]], seed: int = 0, **impair: float
) -> Sim:
    """Connect the named peers along ``edges`` (sessions are named after the other end)."""
    rng = random.Random(seed)
    params = {"drop": 0.0, "dup": 0.0, "jitter": 0.01} | impair
    channels = []
    for a, b in edges:
        peers[a].connect(b, 0.0)
        peers[b].connect(a, 0.0)
        channels.append(Channel(peers[a], peers[b], a, b, Link(rng, **params)))
        channels.append(Channel(peers[b], peers[a], b, a, Link(rng, **params)))
    return Sim(channels)


def empty() -> Peer:
    return Peer([FeedState(WRITER.peer_id, FEED)], {}, peers=())


def holder(chunks: list[Chunk]) -> Peer:
    peer = Peer.holding(chunks)
    peer.sessions.clear()
    return peer


def received(sim: Sim, name: str) -> list[int]:
    """Indexes of every Data frame that reached ``name`` (duplicates included)."""
    return [
        f.chunk.head.index
        for c in sim.channels
        if c.target_name == name
        for f in c.link.sent
        if isinstance(f, Data)
    ]


def test_chunks_flow_through_a_relay_while_it_syncs() -> None:
    chunks = write(1_200, per_chunk=16)  # 75 chunks
    peers = {"writer": holder(chunks), "relay": empty(), "far": empty()}
    sim = mesh(peers, [("writer", "relay"), ("relay", "far")], drop=0.1, dup=0.1)
    far, relay = peers["far"].states[FEED], peers["relay"].states[FEED]
    sim.run(lambda: far.held.size() > 0)
    assert relay.held.size() < len(chunks)  # the relay serves what it has as it arrives
    sim.run(lambda: far.held.size() == len(chunks))
    assert far.linked_prefix() == 75
    assert not any(p.of(PeerFlagged) for p in peers.values())


def test_a_new_member_fetches_from_three_holders_in_parallel_without_duplicates() -> None:
    chunks = write(2_400, per_chunk=16)  # 150 chunks
    peers = {"a": holder(chunks), "b": holder(chunks), "c": holder(chunks), "new": empty()}
    sim = mesh(peers, [("a", "new"), ("b", "new"), ("c", "new")])
    sim.run(lambda: peers["new"].states[FEED].held.size() == len(chunks))
    got = received(sim, "new")
    assert sorted(got) == list(range(150))  # every chunk exactly once
    per_source = {
        c.source_name: sum(isinstance(f, Data) for f in c.link.sent)
        for c in sim.channels
        if c.target_name == "new"
    }
    assert all(count > 0 for count in per_source.values()), per_source
    assert len(peers["new"].board) == 0


def test_closing_a_session_hands_its_requests_to_the_others() -> None:
    chunks = write(800, per_chunk=16)  # 50 chunks
    peers = {"a": holder(chunks), "b": holder(chunks), "new": empty()}
    sim = mesh(peers, [("a", "new"), ("b", "new")])
    sim.run(lambda: peers["new"].states[FEED].held.size() >= 10)
    # "a" vanishes mid-transfer: its link stops delivering, its requests are released.
    sim.channels = [c for c in sim.channels if "a" not in (c.source_name, c.target_name)]
    peers["new"].sessions.pop("a").close()
    sim.run(lambda: peers["new"].states[FEED].held.size() == len(chunks), max_steps=5_000)
    assert sim.now < 5.0  # no request timeout was needed


def test_a_fork_relayed_from_elsewhere_flags_the_writer_everywhere() -> None:
    honest = write(64, per_chunk=8)
    fork_writer = FeedWriter(WRITER, FEED, tip=honest[3].head, max_entries=8)
    fork = honest[:4] + [c for i in range(48) if (c := fork_writer.append(b"f%d" % i))]
    peers = {"h": holder(honest), "f": holder(fork), "x": empty(), "y": empty()}
    sim = mesh(peers, [("h", "x"), ("f", "y"), ("x", "y")])
    sim.run(
        lambda: all(p.states[FEED].flagged for p in peers.values()),
        max_steps=20_000,
    )
    for peer in peers.values():
        assert not peer.of(PeerFlagged)
        for proof in peer.states[FEED].proofs:
            proof.verify()
    assert any(p.of(EquivocationDetected) for p in peers.values())
