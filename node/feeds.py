"""Feeds: chunked, signed, append-only logs with exactly one writer (pure).

A feed is named by a 32-byte id (:func:`feed_id` derives one from the writer's key and a label,
so one device can write many feeds) and written by one device key. Entry ``n`` carries the hash
of entry ``n - 1`` (entry 0 carries the feed's :func:`genesis`). Entries are grouped into chunks
of at most :data:`MAX_CHUNK_ENTRIES` entries and :data:`MAX_CHUNK_BYTES` encoded bytes. A sealed
chunk has a :class:`ChunkHead` signed by the writer (domain :data:`CHUNK_DOMAIN`) holding the
Merkle root of its entries' hashes, the hash of its last entry, the hash of the entry before its
first (``prev_entry``) and the digest of the previous head (``prev_head``). So:

- a receiver checks a whole chunk with one signature check plus two hashes per entry;
- every relation between chunks is a relation between two signed heads, so a chunk can be
  accepted before its predecessor (newest-first sync) and linked when the gap is backfilled;
- two signed heads that cannot both belong to one feed (same index and different contents,
  overlapping positions, or neighbours that do not link) are an :class:`EquivocationProof`
  that anyone can check with :meth:`EquivocationProof.verify`.

The identity of an entry is its Merkle leaf hash (:func:`entry_hash`), unique per feed because
the chain starts at the feed's genesis. Invalid input raises :class:`FeedError` (a
:class:`RemoteProtocolError`: refuse it and flag the sender); an equivocation is not an error
but an outcome (:class:`Accepted` with ``status == "conflict"``): the writer is at fault, not
whoever relayed the chunk.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from node import merkle, wire
from node.crypto import KEY_SIZE, SIGNATURE_SIZE, blake2b, verify
from node.errors import (
    FeedError,
    InvalidKeyError,
    InvalidSignatureError,
    LocalProtocolError,
    MerkleProofError,
)
from node.identity import Identity, PeerId

__all__ = [
    "CHUNK_DOMAIN",
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_ENTRIES",
    "MAX_PAYLOAD",
    "MAX_PROOFS",
    "MAX_SEQ",
    "Accepted",
    "Chunk",
    "ChunkHead",
    "Entry",
    "EntryProof",
    "EquivocationProof",
    "FeedState",
    "FeedWriter",
    "Hash",
    "Position",
    "RangeSet",
    "conflict",
    "entry_hash",
    "feed_id",
    "genesis",
    "verify_chunk",
    "verify_head",
]

CHUNK_DOMAIN = "peerline/chunk/v1"
MAX_CHUNK_ENTRIES = 256
MAX_CHUNK_BYTES = 256 * 1024
MAX_PAYLOAD = 64 * 1024
MAX_SEQ = 2**48
MAX_PROOFS = 8
"""Proofs kept per feed: one suffices to flag the writer; more would let it fill our memory."""

_HASH = merkle.HASH_SIZE
_FEED_ID_PERSON = b"peerline/feed-id"
_GENESIS_PERSON = b"peerline/genesis"
_HEAD_PERSON = b"peerline/head"

Hash = Annotated[bytes, wire.Bytes(size=_HASH)]
"""A 32-byte hash field of a wire message."""
Position = Annotated[int, wire.Int(max=MAX_SEQ)]
"""An entry position or chunk index field of a wire message."""


def feed_id(writer: PeerId, label: bytes) -> bytes:
    """The id of ``writer``'s feed named ``label`` (e.g. a group id): binds the feed to its key."""
    return blake2b(writer.key + label, size=_HASH, person=_FEED_ID_PERSON)


def genesis(feed: bytes) -> bytes:
    """What entry 0 and chunk 0 point back to: feed-specific, so entry hashes never repeat."""
    return blake2b(feed, size=_HASH, person=_GENESIS_PERSON)


@dataclass(frozen=True, slots=True)
class Entry(wire.Message):
    """One payload at position ``seq``, chained to the previous entry by ``prev``."""

    seq: Position
    prev: Hash
    payload: Annotated[bytes, wire.Bytes(max=MAX_PAYLOAD)]


def entry_hash(entry: Entry) -> bytes:
    """An entry's identity: the Merkle leaf hash of its canonical bytes."""
    return merkle.leaf_hash(wire.encode_message(entry))


@dataclass(frozen=True, slots=True)
class ChunkHead(wire.Message):
    """The signed summary of one chunk; ``signature`` covers :meth:`body` (all other fields)."""

    writer: Annotated[bytes, wire.Bytes(size=KEY_SIZE)]
    feed: Hash
    index: Position
    first: Position
    count: Annotated[int, wire.Int(min=1, max=MAX_CHUNK_ENTRIES)]
    size: Annotated[int, wire.Int(min=1, max=MAX_CHUNK_BYTES)]
    root: Hash
    last: Hash
    prev_entry: Hash
    prev_head: Hash
    signature: Annotated[bytes, wire.Bytes(size=SIGNATURE_SIZE)]

    @property
    def end(self) -> int:
        """Position after the chunk's last entry."""
        return self.first + self.count

    def body(self) -> bytes:
        """The signed bytes: the canonical array of every field but the signature."""
        return wire.encode(self.to_wire()[:-1])

    def digest(self) -> bytes:
        """What the next head's ``prev_head`` holds; two heads are the same iff digests are."""
        return blake2b(self.body(), size=_HASH, person=_HEAD_PERSON)


@dataclass(frozen=True, slots=True)
class Chunk(wire.Message):
    """A signed head and the entries it covers, in order."""

    head: Annotated[ChunkHead, wire.Nested(ChunkHead)]
    entries: Annotated[list[Entry], wire.ListOf(wire.Nested(Entry), max_items=MAX_CHUNK_ENTRIES)]

    def proof(self, seq: int) -> EntryProof:
        """An inclusion proof of the entry at ``seq`` against this chunk's signed root."""
        index = seq - self.head.first
        if not 0 <= index < len(self.entries):
            raise LocalProtocolError(f"entry {seq} is not in this chunk", code="feed.not_in_chunk")
        tree = merkle.MerkleTree([entry_hash(entry) for entry in self.entries])
        return EntryProof(self.head, self.entries[index], tree.proof(index))


def _refuse(message: str, code: str) -> FeedError:
    return FeedError(message, code=code)


def _check_shape(head: ChunkHead, writer: bytes, feed: bytes) -> None:
    if head.writer != writer or head.feed != feed:
        raise _refuse("chunk head belongs to another feed", "feed.wrong_feed")
    if head.end > MAX_SEQ:
        raise _refuse("chunk ends beyond the largest position", "feed.bad_position")
    if head.index == 0:
        origin = genesis(feed)
        if head.first != 0 or head.prev_head != origin or head.prev_entry != origin:
            raise _refuse("chunk 0 must start at the feed's genesis", "feed.bad_position")
    elif head.first < head.index:
        raise _refuse("every earlier chunk holds at least one entry", "feed.bad_position")


def _check_signature(head: ChunkHead) -> None:
    try:
        verify(head.writer, CHUNK_DOMAIN, head.body(), head.signature)
    except (InvalidSignatureError, InvalidKeyError):
        raise _refuse("chunk head signature does not verify", "feed.bad_signature") from None


def verify_head(head: ChunkHead, writer: bytes, feed: bytes) -> None:
    """Check a head alone: it belongs to ``writer``'s ``feed``, is well placed and signed."""
    _check_shape(head, writer, feed)
    _check_signature(head)


def verify_chunk(chunk: Chunk, writer: bytes, feed: bytes) -> None:
    """Check a whole chunk: positions, hash chain, size, Merkle root, then the one signature.

    Raises :class:`FeedError` with the code of the first failed check; the cheap structural
    checks run first and the signature last.
    """
    head = chunk.head
    _check_shape(head, writer, feed)
    if len(chunk.entries) != head.count:
        raise _refuse("chunk entry count differs from its head", "feed.bad_shape")
    leaves: list[bytes] = []
    prev, seq, size = head.prev_entry, head.first, 0
    for entry in chunk.entries:
        if entry.seq != seq:
            raise _refuse(f"entry {entry.seq} found at position {seq}", "feed.bad_position")
        if entry.prev != prev:
            raise _refuse(f"entry {seq} does not chain to its predecessor", "feed.broken_chain")
        data = wire.encode_message(entry)
        size += len(data)
        prev = merkle.leaf_hash(data)
        leaves.append(prev)
        seq += 1
    if prev != head.last:
        raise _refuse("last entry differs from the head's", "feed.broken_chain")
    if size != head.size:
        raise _refuse("chunk size differs from its head", "feed.bad_shape")
    if merkle.root_of(leaves) != head.root:
        raise _refuse("entries do not match the head's Merkle root", "feed.bad_root")
    _check_signature(head)


def conflict(a: ChunkHead, b: ChunkHead) -> bool:
    """Whether two heads of one feed cannot both be part of it (an equivocation)."""
    if a.index == b.index:
        return a.digest() != b.digest()
    low, high = (a, b) if a.index < b.index else (b, a)
    gap = high.index - low.index - 1
    if high.first < low.end + gap:
        return True
    if gap:
        return False
    return high.first != low.end or high.prev_entry != low.last or high.prev_head != low.digest()


@dataclass(frozen=True, slots=True)
class EntryProof(wire.Message):
    """One entry, its chunk's signed head and the Merkle path between them."""

    head: Annotated[ChunkHead, wire.Nested(ChunkHead)]
    entry: Annotated[Entry, wire.Nested(Entry)]
    path: Annotated[list[bytes], wire.ListOf(wire.Bytes(size=_HASH), max_items=16)]

    def verify(self, writer: bytes, feed: bytes) -> None:
        """Raise :class:`FeedError` unless ``writer`` signed this entry into ``feed``."""
        verify_head(self.head, writer, feed)
        try:
            merkle.verify_proof(
                entry_hash(self.entry),
                self.entry.seq - self.head.first,
                self.head.count,
                self.path,
                self.head.root,
            )
        except MerkleProofError as exc:
            raise _refuse(exc.message, "feed.bad_proof") from None


@dataclass(frozen=True, slots=True)
class EquivocationProof(wire.Message):
    """Two heads signed by one writer that cannot both belong to its feed.

    ``first`` is the head held before ``second`` arrived. Anyone holding the writer's key can
    check the proof with :meth:`verify`; nothing else is needed.
    """

    first: Annotated[ChunkHead, wire.Nested(ChunkHead)]
    second: Annotated[ChunkHead, wire.Nested(ChunkHead)]

    def verify(self) -> None:
        """Raise :class:`FeedError` (``feed.bad_proof``) unless this proves an equivocation."""
        writer, feed = self.first.writer, self.first.feed
        verify_head(self.first, writer, feed)
        verify_head(self.second, writer, feed)
        if not conflict(self.first, self.second):
            raise _refuse("the two heads do not conflict", "feed.bad_proof")

    def key(self) -> tuple[bytes, bytes]:
        """The pair of head digests, order-free: equal proofs have equal keys."""
        a, b = self.first.digest(), self.second.digest()
        return (a, b) if a < b else (b, a)


class RangeSet:
    """A set of non-negative integers kept as sorted, disjoint, non-touching ``[start, end)``."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in spans:
            self.add_span(start, end)

    def add(self, value: int) -> None:
        self.add_span(value, value + 1)

    def add_span(self, start: int, end: int) -> None:
        """Add ``start..end-1``, merging with every span it overlaps or touches."""
        if not 0 <= start < end:
            raise LocalProtocolError(f"bad span {start}..{end}", code="feed.bad_span")
        low = bisect.bisect_left(self._ends, start)
        high = bisect.bisect_right(self._starts, end)
        if low < high:
            start, end = min(start, self._starts[low]), max(end, self._ends[high - 1])
        self._starts[low:high] = [start]
        self._ends[low:high] = [end]

    def discard(self, value: int) -> None:
        """Remove ``value`` if present, splitting its span."""
        i = bisect.bisect_right(self._starts, value) - 1
        if i < 0 or value >= self._ends[i]:
            return
        start, end = self._starts[i], self._ends[i]
        pieces = [(s, e) for s, e in ((start, value), (value + 1, end)) if s < e]
        self._starts[i : i + 1] = [s for s, _ in pieces]
        self._ends[i : i + 1] = [e for _, e in pieces]

    def __contains__(self, value: object) -> bool:
        if type(value) is not int:
            return False
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._ends[i]

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    @property
    def span_count(self) -> int:
        return len(self._starts)

    def size(self) -> int:
        """How many integers the set holds."""
        return sum(self._ends) - sum(self._starts)

    def below(self, value: int) -> int | None:
        """The greatest member smaller than ``value``."""
        i = bisect.bisect_left(self._starts, value) - 1
        return None if i < 0 else min(self._ends[i], value) - 1

    def above(self, value: int) -> int | None:
        """The smallest member greater than ``value``."""
        nxt = value + 1
        i = bisect.bisect_right(self._starts, nxt) - 1
        if i >= 0 and nxt < self._ends[i]:
            return nxt
        return self._starts[i + 1] if i + 1 < len(self._starts) else None

    def missing_from(self, other: RangeSet) -> Iterator[int]:
        """Members of this set that ``other`` lacks, largest first, lazily."""
        for start, end in zip(reversed(self._starts), reversed(self._ends), strict=True):
            high = end
            k = bisect.bisect_left(other._starts, end) - 1
            while high > start:
                if k >= 0 and other._ends[k] > start:
                    if other._ends[k] < high:
                        yield from range(high - 1, other._ends[k] - 1, -1)
                    high = min(high, other._starts[k])
                    k -= 1
                else:
                    yield from range(high - 1, start - 1, -1)
                    high = start


@dataclass(frozen=True, slots=True)
class Accepted:
    """What :meth:`FeedState.accept` did with a valid chunk.

    ``stored``: new, consistent with every held head (the caller persists the chunk).
    ``duplicate``: this head was held already (nothing to do).
    ``conflict``: the writer equivocated; the chunk is not stored, ``proof`` is kept.
    """

    status: Literal["stored", "duplicate", "conflict"]
    head: ChunkHead
    proof: EquivocationProof | None = None


class FeedState:
    """What a node holds of one feed: its verified heads, by chunk index, and any proofs.

    Entries themselves live in the store; this object decides what to accept and what to ask
    for. Every pair of index-adjacent held heads links, and held heads never overlap, so the
    chunks ``0..linked_prefix()-1`` are chained to the genesis and the rest wait, verified by
    their signatures, for their gaps to be backfilled. After an equivocation the head seen
    first at each index stays; the other is only kept inside the proof, so two nodes may hold
    different branches of a flagged feed past the fork.
    """

    def __init__(
        self,
        writer: PeerId,
        feed: bytes,
        heads: Iterable[ChunkHead] = (),
        proofs: Iterable[EquivocationProof] = (),
    ) -> None:
        """``heads`` and ``proofs`` restore a state from the store; they are checked again."""
        self.writer = writer
        self.feed = feed
        self._heads: dict[int, ChunkHead] = {}
        self._held = RangeSet()
        self._entries = 0
        self._proofs: dict[tuple[bytes, bytes], EquivocationProof] = {}
        for proof in proofs:
            self.add_proof(proof)
        for head in heads:
            verify_head(head, writer.key, feed)
            self._place(head)

    # ------------------------------------------------------------------ queries

    @property
    def held(self) -> RangeSet:
        """Indexes of the chunks held (do not mutate)."""
        return self._held

    @property
    def entry_count(self) -> int:
        return self._entries

    @property
    def flagged(self) -> bool:
        """Whether the writer has been caught equivocating."""
        return bool(self._proofs)

    @property
    def proofs(self) -> list[EquivocationProof]:
        return list(self._proofs.values())

    def head(self, index: int) -> ChunkHead | None:
        return self._heads.get(index)

    def tip(self) -> ChunkHead | None:
        """The held head with the largest index."""
        spans = self._held.spans()
        return self._heads[spans[-1][1] - 1] if spans else None

    def index_of(self, seq: int) -> int | None:
        """The index of the held chunk holding entry ``seq`` (to load it or prove the entry)."""
        for start, end in self._held.spans():
            if self._heads[start].first <= seq < self._heads[end - 1].end:
                low, high = start, end - 1
                while low < high:  # heads' positions grow with their index
                    middle = (low + high + 1) // 2
                    low, high = (
                        (middle, high) if self._heads[middle].first <= seq else (low, middle - 1)
                    )
                return low
        return None

    def linked_prefix(self) -> int:
        """How many chunks from index 0 on are held without a gap (chained to the genesis)."""
        spans = self._held.spans()
        return spans[0][1] if spans and spans[0][0] == 0 else 0

    # ------------------------------------------------------------------ changes

    def accept(self, chunk: Chunk) -> Accepted:
        """Verify ``chunk`` fully, then place its head. Raises :class:`FeedError` if invalid."""
        verify_chunk(chunk, self.writer.key, self.feed)
        return self._place(chunk.head)

    def add_proof(self, proof: EquivocationProof) -> bool:
        """Keep a proof learnt from a peer after checking it; ``True`` if it was new."""
        proof.verify()
        if proof.first.writer != self.writer.key or proof.first.feed != self.feed:
            raise _refuse("proof is about another feed", "feed.wrong_feed")
        return self._keep(proof)

    def _keep(self, proof: EquivocationProof) -> bool:
        key = proof.key()
        if key in self._proofs or len(self._proofs) >= MAX_PROOFS:
            return False
        self._proofs[key] = proof
        return True

    def _place(self, head: ChunkHead) -> Accepted:
        held = self._heads.get(head.index)
        if held is not None and held.digest() == head.digest():
            return Accepted("duplicate", head)
        for index in (head.index, self._held.below(head.index), self._held.above(head.index)):
            other = self._heads.get(index) if index is not None else None
            if other is not None and conflict(other, head):
                proof = EquivocationProof(other, head)
                self._keep(proof)
                return Accepted("conflict", head, proof)
        self._heads[head.index] = head
        self._held.add(head.index)
        self._entries += head.count
        return Accepted("stored", head)


class FeedWriter:
    """Appends entries to the local device's feed and seals them into signed chunks.

    A chunk is sealed when it reaches ``max_entries``, when the next entry would take it past
    ``max_bytes``, or when :meth:`seal` is called (e.g. to publish promptly). Contract for the
    caller: persist each sealed chunk *before* publishing it, and restart from the last
    persisted head (``tip``); restarting from an older head makes the writer sign a second
    chunk at a held index, which every peer will rightly record as an equivocation.
    """

    def __init__(
        self,
        identity: Identity,
        feed: bytes,
        *,
        tip: ChunkHead | None = None,
        max_entries: int = MAX_CHUNK_ENTRIES,
        max_bytes: int = MAX_CHUNK_BYTES,
    ) -> None:
        if not 1 <= max_entries <= MAX_CHUNK_ENTRIES or not 1 <= max_bytes <= MAX_CHUNK_BYTES:
            raise LocalProtocolError("chunk bounds out of range", code="feed.bad_bounds")
        self._identity = identity
        self.feed = feed
        self._max_entries, self._max_bytes = max_entries, max_bytes
        if tip is None:
            origin = genesis(feed)
            self._index, self._seq, self._last, self._prev_head = 0, 0, origin, origin
        else:
            if tip.writer != identity.peer_id.key or tip.feed != feed:
                raise LocalProtocolError("tip is not this writer's feed", code="feed.wrong_tip")
            self._index, self._seq, self._last = tip.index + 1, tip.end, tip.last
            self._prev_head = tip.digest()
        self._chunk_prev = self._last
        self._entries: list[Entry] = []
        self._leaves: list[bytes] = []
        self._size = 0

    @property
    def next_seq(self) -> int:
        """Position the next appended entry gets."""
        return self._seq

    @property
    def pending(self) -> int:
        """Entries appended but not sealed yet."""
        return len(self._entries)

    def append(self, payload: bytes) -> Chunk | None:
        """Add one entry; returns the chunk this call sealed, if any (at most one)."""
        if type(payload) is not bytes or len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError(
                f"an entry payload is bytes of at most {MAX_PAYLOAD}", code="feed.bad_payload"
            )
        if self._seq >= MAX_SEQ:
            raise LocalProtocolError("the feed is full", code="feed.full")
        entry = Entry(self._seq, self._last, payload)
        data = wire.encode_message(entry)
        if len(data) > self._max_bytes:
            raise LocalProtocolError("entry larger than a chunk", code="feed.bad_payload")
        sealed = self.seal() if self._size + len(data) > self._max_bytes else None
        self._last = merkle.leaf_hash(data)
        self._entries.append(entry)
        self._leaves.append(self._last)
        self._size += len(data)
        self._seq += 1
        # With max_entries > 1 a chunk sealed above leaves one entry open, so at most one seals.
        return self.seal() if len(self._entries) >= self._max_entries else sealed

    def seal(self) -> Chunk | None:
        """Seal and sign the open entries as the next chunk; ``None`` if there are none."""
        if not self._entries:
            return None
        unsigned = ChunkHead(
            writer=self._identity.peer_id.key,
            feed=self.feed,
            index=self._index,
            first=self._entries[0].seq,
            count=len(self._entries),
            size=self._size,
            root=merkle.root_of(self._leaves),
            last=self._last,
            prev_entry=self._chunk_prev,
            prev_head=self._prev_head,
            signature=b"",
        )
        head = dataclasses.replace(
            unsigned, signature=self._identity.sign(CHUNK_DOMAIN, unsigned.body())
        )
        chunk = Chunk(head, self._entries)
        self._index += 1
        self._prev_head = head.digest()
        self._chunk_prev = self._last
        self._entries, self._leaves, self._size = [], [], 0
        return chunk
