"""Feeds: writing and sealing, full chunk verification, out-of-order acceptance, proofs."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import feeds, merkle, wire
from node.crypto import SigningKey
from node.errors import FeedError, LocalProtocolError, RemoteProtocolError
from node.feeds import Chunk, ChunkHead, Entry, FeedState, FeedWriter
from node.identity import Identity

WRITER = Identity(SigningKey(bytes(range(32))))
OTHER = Identity(SigningKey(bytes(range(1, 33))))
FEED = feeds.feed_id(WRITER.peer_id, b"group-1")


def write(count: int, *, per_chunk: int = 4, writer: FeedWriter | None = None) -> list[Chunk]:
    """``count`` entries with distinct payloads, sealed every ``per_chunk`` and at the end."""
    writer = writer or FeedWriter(WRITER, FEED, max_entries=per_chunk)
    chunks = [c for i in range(count) if (c := writer.append(b"entry %d" % i)) is not None]
    last = writer.seal()
    return [*chunks, last] if last else chunks


def fresh() -> FeedState:
    return FeedState(WRITER.peer_id, FEED)


def resign(head: ChunkHead, identity: Identity = WRITER, **changes: object) -> ChunkHead:
    """What a malicious writer can do: sign any head it likes."""
    head = dataclasses.replace(head, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(head, signature=identity.sign(feeds.CHUNK_DOMAIN, head.body()))


def signed_chunk(entries: list[Entry], head: ChunkHead) -> Chunk:
    """A chunk whose head a malicious writer re-made honestly over ``entries``."""
    leaves = [feeds.entry_hash(e) for e in entries]
    size = sum(len(wire.encode_message(e)) for e in entries)
    new = resign(head, root=merkle.root_of(leaves), last=leaves[-1], size=size)
    return Chunk(new, entries)


# --------------------------------------------------------------------------- writing


def test_writer_seals_at_entry_bound_and_state_links_everything() -> None:
    chunks = write(10, per_chunk=4)
    assert [c.head.count for c in chunks] == [4, 4, 2]
    assert [c.head.first for c in chunks] == [0, 4, 8]
    state = fresh()
    assert [state.accept(c).status for c in chunks] == ["stored"] * 3
    assert state.linked_prefix() == 3
    assert state.entry_count == 10
    assert state.tip() == chunks[-1].head


def test_writer_seals_at_byte_bound_before_overflowing() -> None:
    writer = FeedWriter(WRITER, FEED, max_bytes=1000)
    sealed = [c for _ in range(20) if (c := writer.append(bytes(250))) is not None]
    assert sealed and all(c.head.size <= 1000 for c in sealed)
    assert all(c.head.count == 3 for c in sealed)
    for chunk in sealed:
        feeds.verify_chunk(chunk, WRITER.peer_id.key, FEED)


def test_writer_refuses_bad_payloads_and_bounds() -> None:
    writer = FeedWriter(WRITER, FEED, max_bytes=100)
    with pytest.raises(LocalProtocolError):
        writer.append(bytes(feeds.MAX_PAYLOAD + 1))
    with pytest.raises(LocalProtocolError):
        writer.append(bytes(200))  # fits the protocol, not this writer's chunks
    with pytest.raises(LocalProtocolError):
        writer.append("text")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        FeedWriter(WRITER, FEED, max_entries=feeds.MAX_CHUNK_ENTRIES + 1)
    assert writer.seal() is None and writer.pending == 0


def test_writer_resumes_from_its_tip() -> None:
    first = write(6, per_chunk=4)
    writer = FeedWriter(WRITER, FEED, tip=first[-1].head, max_entries=4)
    assert writer.next_seq == 6
    rest = write(5, writer=writer)
    state = fresh()
    for chunk in [*first, *rest]:
        assert state.accept(chunk).status == "stored"
    assert state.linked_prefix() == 4 and not state.flagged
    with pytest.raises(LocalProtocolError):
        FeedWriter(OTHER, FEED, tip=first[-1].head)


def test_entries_are_unique_per_feed() -> None:
    other_feed = feeds.feed_id(WRITER.peer_id, b"group-2")
    a = write(1)[0].entries[0]
    b = write(1, writer=FeedWriter(WRITER, other_feed))[0].entries[0]
    assert a.payload == b.payload and feeds.entry_hash(a) != feeds.entry_hash(b)


def test_chunk_round_trips_through_the_wire() -> None:
    chunk = write(4)[0]
    assert wire.decode_message(Chunk, wire.encode_message(chunk)) == chunk


# --------------------------------------------------------------------------- refusals


def refused(chunk: Chunk, code: str, state: FeedState | None = None) -> None:
    state = state or fresh()
    with pytest.raises(FeedError) as caught:
        state.accept(chunk)
    assert caught.value.code == code
    assert chunk.head.index not in state.held


def test_tampered_payload_is_refused() -> None:
    chunk = write(4)[0]
    entries = list(chunk.entries)
    entries[3] = dataclasses.replace(entries[3], payload=b"forged")
    refused(Chunk(chunk.head, entries), "feed.broken_chain")
    entries = list(chunk.entries)
    entries[1] = dataclasses.replace(entries[1], payload=b"forged")
    refused(Chunk(chunk.head, entries), "feed.broken_chain")


def test_bad_signature_is_refused() -> None:
    chunk = write(4)[0]
    forged = bytes([chunk.head.signature[0] ^ 1]) + chunk.head.signature[1:]
    refused(
        Chunk(dataclasses.replace(chunk.head, signature=forged), chunk.entries),
        "feed.bad_signature",
    )
    # Signed by someone else, claiming the writer's feed.
    refused(Chunk(resign(chunk.head, OTHER), chunk.entries), "feed.bad_signature")


def test_head_fields_are_covered_by_the_signature() -> None:
    chunk = write(4)[0]
    for change in ({"root": bytes(32)}, {"size": 1}, {"count": 3}, {"last": bytes(32)}):
        head = dataclasses.replace(chunk.head, **change)
        with pytest.raises(FeedError):
            fresh().accept(Chunk(head, chunk.entries))


def test_broken_hash_chain_signed_by_the_writer_is_refused() -> None:
    chunk = write(4)[0]
    entries = list(chunk.entries)
    entries[2] = dataclasses.replace(entries[2], prev=bytes(32))
    refused(signed_chunk(entries, chunk.head), "feed.broken_chain")


def test_wrong_positions_are_refused() -> None:
    chunks = write(8)
    entries = [dataclasses.replace(e, seq=e.seq + 1) for e in chunks[0].entries]
    refused(signed_chunk(entries, chunks[0].head), "feed.bad_position")
    refused(Chunk(resign(chunks[1].head, first=0), chunks[1].entries), "feed.bad_position")
    refused(
        Chunk(resign(chunks[0].head, prev_head=bytes(32)), chunks[0].entries), "feed.bad_position"
    )


def test_wrong_root_and_shape_are_refused() -> None:
    chunk = write(4)[0]
    refused(Chunk(resign(chunk.head, root=bytes(32)), chunk.entries), "feed.bad_root")
    refused(Chunk(resign(chunk.head, size=chunk.head.size + 1), chunk.entries), "feed.bad_shape")
    refused(Chunk(chunk.head, chunk.entries[:3]), "feed.bad_shape")


def test_chunk_of_another_feed_is_refused() -> None:
    chunk = write(4)[0]
    refused(chunk, "feed.wrong_feed", FeedState(OTHER.peer_id, FEED))
    refused(chunk, "feed.wrong_feed", FeedState(WRITER.peer_id, bytes(32)))


# --------------------------------------------------------------------------- ordering


def test_newest_first_then_backfill_links_to_genesis() -> None:
    chunks = write(40, per_chunk=4)
    state = fresh()
    for chunk in reversed(chunks):
        assert state.accept(chunk).status == "stored"
        assert state.linked_prefix() == (10 if chunk is chunks[0] else 0)
    assert state.held.spans() == [(0, 10)]
    assert state.accept(chunks[5]).status == "duplicate"


def test_index_of_finds_the_chunk_of_any_held_entry() -> None:
    writer = FeedWriter(WRITER, FEED, max_entries=5)
    chunks = [
        c
        for i in range(40)
        if (c := writer.append(b"%d" % i) or (writer.seal() if i % 3 == 0 else None))
    ]
    state = fresh()
    for chunk in chunks:
        if chunk.head.index % 4 != 2:  # leave holes
            state.accept(chunk)
    for chunk in chunks:
        held = chunk.head.index in state.held
        for seq in range(chunk.head.first, chunk.head.end):
            assert state.index_of(seq) == (chunk.head.index if held else None)
            if held:
                chunk.proof(seq).verify(WRITER.peer_id.key, FEED)
    assert state.index_of(10_000) is None


def test_state_restores_from_heads_and_proofs() -> None:
    chunks = write(12)
    state = fresh()
    for chunk in chunks:
        state.accept(chunk)
    restored = FeedState(WRITER.peer_id, FEED, [c.head for c in reversed(chunks)])
    assert restored.held.spans() == state.held.spans()
    assert restored.entry_count == 12
    with pytest.raises(FeedError):
        FeedState(OTHER.peer_id, FEED, [chunks[0].head])


# --------------------------------------------------------------------------- equivocation


def forked(at_index: int, per_chunk: int = 4) -> tuple[list[Chunk], list[Chunk]]:
    """Two histories of the writer that share chunks ``0..at_index-1`` and then differ."""
    honest = write(4 * per_chunk, per_chunk=per_chunk)
    tip = honest[at_index - 1].head if at_index else None
    writer = FeedWriter(WRITER, FEED, tip=tip, max_entries=per_chunk)
    other = [c for i in range(8) if (c := writer.append(b"fork %d" % i)) is not None]
    return honest, honest[:at_index] + other


def test_same_index_different_content_is_an_equivocation() -> None:
    honest, fork = forked(1)
    state = fresh()
    for chunk in honest:
        state.accept(chunk)
    outcome = state.accept(fork[1])
    assert outcome.status == "conflict" and outcome.proof is not None
    outcome.proof.verify()
    assert outcome.proof.first == honest[1].head and outcome.proof.second == fork[1].head
    assert state.flagged and state.proofs == [outcome.proof]
    assert state.head(1) == honest[1].head  # the first-seen branch stays
    # Seeing it again keeps one proof; the proof survives the wire and a restore.
    state.accept(fork[1])
    assert len(state.proofs) == 1
    decoded = wire.decode_message(feeds.EquivocationProof, wire.encode_message(outcome.proof))
    restored = FeedState(WRITER.peer_id, FEED, proofs=[decoded])
    assert restored.flagged


def test_fork_seen_across_a_gap_is_an_equivocation() -> None:
    honest, fork = forked(1)
    state = fresh()
    state.accept(honest[0])
    state.accept(fork[2])  # provisional: no neighbour yet
    outcome = state.accept(honest[1])  # does not link to the held chunk 2
    assert outcome.status == "conflict" and state.flagged
    assert outcome.proof is not None
    outcome.proof.verify()


def test_overlapping_positions_are_an_equivocation() -> None:
    chunks = write(16)
    state = fresh()
    state.accept(chunks[0])
    state.accept(chunks[3])  # positions 12..15
    # The writer signs a chunk 2 that also claims positions 12..15, correctly chained inside.
    moved = [dataclasses.replace(e, seq=e.seq + 4) for e in chunks[2].entries]
    entries = _rechain(moved, chunks[2].head.prev_entry)
    outcome = state.accept(signed_chunk(entries, resign(chunks[2].head, first=12)))
    assert outcome.status == "conflict" and state.flagged
    assert 2 not in state.held


def _rechain(entries: list[Entry], prev: bytes) -> list[Entry]:
    out: list[Entry] = []
    for entry in entries:
        linked = dataclasses.replace(entry, prev=prev)
        prev = feeds.entry_hash(linked)
        out.append(linked)
    return out


def test_non_conflicting_or_forged_proofs_are_refused() -> None:
    chunks = write(8)
    state = fresh()
    with pytest.raises(FeedError):
        state.add_proof(feeds.EquivocationProof(chunks[0].head, chunks[1].head))
    honest, fork = forked(1)
    proof = feeds.EquivocationProof(honest[1].head, fork[1].head)
    forged = dataclasses.replace(fork[1].head, signature=bytes(64))
    with pytest.raises(FeedError):
        state.add_proof(feeds.EquivocationProof(honest[1].head, forged))
    with pytest.raises(FeedError):
        FeedState(WRITER.peer_id, bytes(32)).add_proof(proof)
    assert state.add_proof(proof) and not state.add_proof(proof) and state.flagged


# --------------------------------------------------------------------------- entry proofs


def test_every_entry_proves_against_its_signed_head() -> None:
    chunk = write(7, per_chunk=7)[0]
    for entry in chunk.entries:
        proof = chunk.proof(entry.seq)
        proof.verify(WRITER.peer_id.key, FEED)
        again = wire.decode_message(feeds.EntryProof, wire.encode_message(proof))
        again.verify(WRITER.peer_id.key, FEED)
    proof = chunk.proof(3)
    with pytest.raises(FeedError, match="root"):
        dataclasses.replace(proof, entry=chunk.entries[4]).verify(WRITER.peer_id.key, FEED)
    with pytest.raises(FeedError):
        proof.verify(OTHER.peer_id.key, FEED)
    with pytest.raises(LocalProtocolError):
        chunk.proof(7)


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_any_seal_pattern_and_arrival_order_converges(seals: list[bool], rnd: object) -> None:
    writer = FeedWriter(WRITER, FEED, max_entries=5)
    chunks: list[Chunk] = []
    for i, seal_now in enumerate(seals):
        for made in (writer.append(b"%d" % i), writer.seal() if seal_now else None):
            if made is not None:
                chunks.append(made)
    if (last := writer.seal()) is not None:
        chunks.append(last)
    order = list(chunks) * 2
    rnd.shuffle(order)  # type: ignore[attr-defined]
    state = fresh()
    for chunk in order:
        assert state.accept(chunk).status in ("stored", "duplicate")
    assert state.linked_prefix() == len(chunks)
    assert state.entry_count == len(seals) and not state.flagged


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(1, 8)), max_size=12),
    st.lists(st.tuples(st.integers(0, 60), st.integers(1, 8)), max_size=12),
    st.integers(0, 70),
    st.lists(st.integers(0, 70), max_size=6),
)
def test_range_set_matches_a_plain_set(
    ours: list[tuple[int, int]], theirs: list[tuple[int, int]], probe: int, removed: list[int]
) -> None:
    a, b = feeds.RangeSet(), feeds.RangeSet()
    plain_a: set[int] = set()
    plain_b: set[int] = set()
    for start, width in ours:
        a.add_span(start, start + width)
        plain_a.update(range(start, start + width))
    for start, width in theirs:
        b.add_span(start, start + width)
        plain_b.update(range(start, start + width))
    for value in removed:
        a.discard(value)
        plain_a.discard(value)
    assert [i for i in range(80) if i in a] == sorted(plain_a)
    assert a.size() == len(plain_a)
    assert list(a.missing_from(b)) == sorted(plain_a - plain_b, reverse=True)
    spans = a.spans()
    assert all(s < e for s, e in spans)
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(spans))
    lower = [i for i in plain_a if i < probe]
    higher = [i for i in plain_a if i > probe]
    assert a.below(probe) == (max(lower) if lower else None)
    assert a.above(probe) == (min(higher) if higher else None)


CHUNK = write(6, per_chunk=6)[0]
CHUNK_BYTES = wire.encode_message(CHUNK)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(CHUNK_BYTES) - 1), st.integers(1, 255))
def test_any_flipped_byte_is_refused(position: int, flip: int) -> None:
    """Whatever byte of a chunk changes, decoding or verification refuses it."""
    data = bytearray(CHUNK_BYTES)
    data[position] ^= flip
    try:
        chunk = wire.decode_message(Chunk, bytes(data))
    except RemoteProtocolError:
        return
    with pytest.raises(FeedError):
        fresh().accept(chunk)
