"""Feed replication between two peers: a sans-I/O machine, one per connection (pure).

Protocol (frames 0x50..0x54, all about chunk *indexes* of a feed):

- ``Have(feed, bounds)``: "I hold these chunks" as flattened ``[start, end)`` pairs. Additive:
  the receiver's view of the peer is the union of every Have it got. Sent for every shared feed
  at start, whenever :meth:`ReplicationSession.announce` marks a feed changed, and again every
  ``announce_interval`` so a lost frame or a withdrawn request heals.
- ``Want(feed, indexes)``: request chunks. The requester keeps at most ``max_in_flight``
  requests outstanding (so at most that many chunks, each <= 256 KiB, are on their way) and
  asks for the **newest** missing chunks first, round-robin across feeds: a new member can read
  the end of a feed whatever its length while older chunks backfill.
- ``Data(chunk)``: a chunk, requested or pushed; it is verified in full before it is accepted.
- ``Missing(feed, indexes)``: the sender does not hold what was asked.
- ``Conflict(proof)``: an equivocation proof, so every peer flags the writer.

Resuming after a cut needs nothing special: call :meth:`~ReplicationSession.close` on the dead
session, and a new session over the same :class:`FeedState` objects announces what is held
(including chunks accepted out of order) and fetches only the rest. A request that times out
is withdrawn from the peer's Have view until the peer announces again, so a peer that stalls
some requests cannot hold every slot. A node's sessions share one :class:`RequestBoard`, so a
new member connected to several holders fetches different chunks from each, never one twice.

The caller (the I/O shell) owns storage. It answers each :class:`ChunkNeeded` event with
:meth:`~ReplicationSession.send_chunk` or :meth:`~ReplicationSession.send_missing`, persists
each :class:`ChunkStored` chunk and calls ``announce`` on its other sessions. A chunk that
fails verification (tampered, bad signature, broken chain) or any other protocol violation
ends the session with a :class:`PeerFlagged` event: close the connection with its code. An
equivocation is the writer's fault, not the relay's: it yields
:class:`EquivocationDetected` and the session goes on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated

from node import wire
from node.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from node.feeds import (
    MAX_SEQ,
    Chunk,
    EquivocationProof,
    FeedState,
    Hash,
    RangeSet,
)

__all__ = [
    "MAX_HAVE_SPANS",
    "MAX_WANT",
    "ChunkNeeded",
    "ChunkStored",
    "Conflict",
    "Data",
    "EquivocationDetected",
    "FeedSynced",
    "Have",
    "Missing",
    "PeerFlagged",
    "ReplicationConfig",
    "ReplicationEvent",
    "ReplicationSession",
    "RequestBoard",
    "Want",
]

MAX_HAVE_SPANS = 256
MAX_WANT = 64
_Indexes = Annotated[list[int], wire.ListOf(wire.Int(max=MAX_SEQ), max_items=MAX_WANT)]


@wire.frame(0x50)
@dataclass(frozen=True, slots=True)
class Have(wire.Message):
    feed: Hash
    bounds: Annotated[list[int], wire.ListOf(wire.Int(max=MAX_SEQ), max_items=2 * MAX_HAVE_SPANS)]


@wire.frame(0x51)
@dataclass(frozen=True, slots=True)
class Want(wire.Message):
    feed: Hash
    indexes: _Indexes


@wire.frame(0x52)
@dataclass(frozen=True, slots=True)
class Data(wire.Message):
    chunk: Annotated[Chunk, wire.Nested(Chunk)]


@wire.frame(0x53)
@dataclass(frozen=True, slots=True)
class Missing(wire.Message):
    feed: Hash
    indexes: _Indexes


@wire.frame(0x54)
@dataclass(frozen=True, slots=True)
class Conflict(wire.Message):
    proof: Annotated[EquivocationProof, wire.Nested(EquivocationProof)]


@dataclass(frozen=True, slots=True)
class ChunkNeeded:
    """The peer asked for a held chunk: load it and call ``send_chunk`` (or ``send_missing``)."""

    feed: bytes
    index: int


@dataclass(frozen=True, slots=True)
class ChunkStored:
    """A verified chunk was accepted into the feed's state: persist it."""

    feed: bytes
    chunk: Chunk


@dataclass(frozen=True, slots=True)
class EquivocationDetected:
    """The feed's writer signed two incompatible heads; the state keeps ``proof``.

    ``chunk`` is the refused chunk with its entries when it came as data (``None`` when only
    a proof came): keep it beside the proof if the entries themselves should be shown.
    """

    feed: bytes
    proof: EquivocationProof
    chunk: Chunk | None = None


@dataclass(frozen=True, slots=True)
class FeedSynced:
    """We now hold every chunk of ``feed`` the peer has announced (emitted on each transition)."""

    feed: bytes


@dataclass(frozen=True, slots=True)
class PeerFlagged:
    """The peer broke the protocol; the session is closed. Close the connection with the code."""

    error: RemoteProtocolError


ReplicationEvent = ChunkNeeded | ChunkStored | EquivocationDetected | FeedSynced | PeerFlagged


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """Limits and timers. ``max_serving`` must cover the peer's ``max_in_flight``."""

    max_in_flight: int = 8
    request_timeout: float = 10.0
    announce_interval: float = 30.0
    max_serving: int = 64
    max_peer_spans: int = 4096
    max_conflicts: int = 1024
    max_false_haves: int = 256
    """Announced chunks the peer may then answer Missing for before it is flagged."""


def _malformed(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code="replication.malformed")


def _spans(bounds: list[int]) -> list[tuple[int, int]]:
    """Validate flattened ``[start, end)`` pairs: even count, non-empty, ascending, disjoint."""
    if len(bounds) % 2:
        raise _malformed("Have bounds come in pairs")
    spans = list(zip(bounds[::2], bounds[1::2], strict=True))
    previous_end = -1
    for start, end in spans:
        if not previous_end <= start < end:
            raise _malformed("Have spans must be non-empty, ascending and disjoint")
        previous_end = end
    return spans


class RequestBoard:
    """Which session of a node is fetching which chunk, so sessions never ask twice.

    One board per node, shared by its sessions: a chunk requested from one peer is not
    requested from another until that request is answered, withdrawn or its session closes.
    Without a board each session fetches alone (fine with one peer, wasteful with several).
    """

    def __init__(self) -> None:
        self._owners: dict[tuple[bytes, int], object] = {}

    def taken(self, key: tuple[bytes, int], owner: object) -> bool:
        """Whether another owner is fetching ``key``."""
        holder = self._owners.get(key)
        return holder is not None and holder is not owner

    def claim(self, key: tuple[bytes, int], owner: object) -> None:
        self._owners[key] = owner

    def release(self, key: tuple[bytes, int], owner: object) -> None:
        if self._owners.get(key) is owner:
            del self._owners[key]

    def __len__(self) -> int:
        return len(self._owners)


class ReplicationSession:
    """Replicates a set of feeds with one peer. Methods follow aioquic's shape.

    After a :class:`PeerFlagged` event the session is closed: it ignores input and sends
    nothing more. Every queue is bounded: outgoing frames by what the peer may ask for,
    serving by ``max_serving`` (a peer asking for more is flagged), requests by
    ``max_in_flight``.
    """

    def __init__(
        self,
        feeds: Iterable[FeedState],
        now: float,
        config: ReplicationConfig | None = None,
        board: RequestBoard | None = None,
    ) -> None:
        """``board`` is shared by all sessions of one node (see :class:`RequestBoard`)."""
        self.config = config or ReplicationConfig()
        self._board = board if board is not None else RequestBoard()
        self._feeds: dict[bytes, FeedState] = {}
        self._peer_has: dict[bytes, RangeSet] = {}
        self._in_flight: dict[tuple[bytes, int], float] = {}
        self._serving: set[tuple[bytes, int]] = set()
        self._conflicted: set[tuple[bytes, int]] = set()
        self._dirty: dict[bytes, None] = {}
        self._synced: set[bytes] = set()
        self._events: deque[ReplicationEvent] = deque()
        self._outgoing: list[wire.Message] = []
        self._next_announce = now + self.config.announce_interval
        self._rotation = 0
        self._false_haves = 0
        self.closed = False
        for state in feeds:
            self.add_feed(state)

    # ------------------------------------------------------------------ caller API

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet (never above ``max_in_flight``)."""
        return len(self._in_flight)

    def add_feed(self, state: FeedState) -> None:
        """Start replicating ``state``'s feed with this peer (announced on the next send)."""
        self._feeds[state.feed] = state
        self._dirty[state.feed] = None

    def remove_feed(self, feed: bytes) -> None:
        """Stop replicating ``feed`` with this peer (e.g. the peer left the group).

        Its requests are released, pending ChunkNeeded answers are dropped, and Want frames for
        it are answered Missing from now on.
        """
        self._feeds.pop(feed, None)
        self._peer_has.pop(feed, None)
        self._dirty.pop(feed, None)
        self._synced.discard(feed)
        for key in [key for key in self._in_flight if key[0] == feed]:
            self._settle(key)
        self._serving = {key for key in self._serving if key[0] != feed}
        self._outgoing = [
            f for f in self._outgoing if not (isinstance(f, Data) and f.chunk.head.feed == feed)
        ]

    def announce(self, feed: bytes) -> None:
        """Tell the peer what we hold of ``feed`` again (after a local change); coalesced."""
        if feed in self._feeds:
            self._dirty[feed] = None

    def send_chunk(self, chunk: Chunk) -> None:
        """Send a chunk: the answer to a :class:`ChunkNeeded`, or an unasked push.

        Chunks of feeds not (or no longer) replicated with this peer are not sent.
        """
        self._serving.discard((chunk.head.feed, chunk.head.index))
        if not self.closed and chunk.head.feed in self._feeds:
            self._outgoing.append(Data(chunk))

    def send_missing(self, feed: bytes, index: int) -> None:
        """Answer a :class:`ChunkNeeded` when the store no longer has the chunk."""
        self._serving.discard((feed, index))
        if not self.closed:
            self._outgoing.append(Missing(feed, [index]))

    def share_proof(self, proof: EquivocationProof) -> None:
        """Pass on a proof learnt elsewhere (e.g. from another session's event)."""
        if not self.closed and proof.first.feed in self._feeds:
            self._outgoing.append(Conflict(proof))

    def close(self) -> None:
        """The connection is gone: release this session's requests so others may take them."""
        self.closed = True
        for key in self._in_flight:
            self._board.release(key, self)
        self._in_flight.clear()
        self._serving.clear()
        self._outgoing.clear()

    def next_event(self) -> ReplicationEvent | None:
        return self._events.popleft() if self._events else None

    def frames_to_send(self) -> list[wire.Message]:
        """Frames for the peer, in order; the Have of changed feeds come first."""
        if self.closed:
            self._outgoing.clear()
            return []
        frames: list[wire.Message] = [h for feed in self._dirty for h in self._haves(feed)]
        self._dirty.clear()
        frames += self._outgoing
        self._outgoing = []
        return frames

    def get_timer(self) -> float | None:
        if self.closed:
            return None
        return min([self._next_announce, *self._in_flight.values()])

    def handle_timer(self, now: float) -> None:
        """Withdraw timed-out requests from the peer's view; re-announce when it is due."""
        if self.closed:
            return
        for key, deadline in list(self._in_flight.items()):
            if deadline <= now:
                self._settle(key)
                self._peer_has[key[0]].discard(key[1])
        if now >= self._next_announce:
            self._dirty.update(dict.fromkeys(self._feeds))
            self._next_announce = now + self.config.announce_interval
        self._schedule(now, self._peer_has)

    def receive_frame(self, frame: wire.Message, now: float) -> None:
        """Handle one decoded frame from the peer; protocol violations flag the peer."""
        if self.closed:
            return
        try:
            self._dispatch(frame, now)
        except RemoteProtocolError as exc:
            self._flag(exc)

    def _dispatch(self, frame: wire.Message, now: float) -> None:
        match frame:
            case Have():
                self._on_have(frame, now)
            case Want():
                self._on_want(frame)
            case Data():
                self._on_data(frame, now)
            case Missing():
                self._on_missing(frame, now)
            case Conflict():
                self._on_conflict(frame)
            case _:
                raise LocalProtocolError(
                    f"{type(frame).__name__} is not a replication frame", code="replication.misuse"
                )

    # ------------------------------------------------------------------ frame handlers

    def _on_have(self, frame: Have, now: float) -> None:
        if frame.feed not in self._feeds:
            return  # a feed we do not share with this peer: not an error, just not ours
        known = self._peer_has.setdefault(frame.feed, RangeSet())
        for start, end in _spans(frame.bounds):
            known.add_span(start, end)
        if known.span_count > self.config.max_peer_spans:
            raise LimitExceededError("peer announced too many spans", code="replication.limit")
        for feed, index in self._conflicted:
            if feed == frame.feed:
                known.discard(index)
        self._schedule(now, [frame.feed])

    def _on_want(self, frame: Want) -> None:
        state = self._feeds.get(frame.feed)
        missing: list[int] = []
        for index in frame.indexes:
            key = (frame.feed, index)
            if state is None or index not in state.held:
                missing.append(index)
            elif key not in self._serving:
                self._serving.add(key)
                self._events.append(ChunkNeeded(frame.feed, index))
        if len(self._serving) > self.config.max_serving:
            raise LimitExceededError("peer asked for too many chunks", code="replication.limit")
        if missing:
            self._outgoing.append(Missing(frame.feed, missing))

    def _on_data(self, frame: Data, now: float) -> None:
        head = frame.chunk.head
        state = self._feeds.get(head.feed)
        if state is None:
            return  # a push for a feed we do not replicate with this peer
        self._settle((head.feed, head.index))
        outcome = state.accept(frame.chunk)  # FeedError flags the sender
        if outcome.status == "stored":
            self._events.append(ChunkStored(head.feed, frame.chunk))
        elif outcome.proof is not None:
            self._on_equivocation(frame.chunk, outcome.proof)
        self._schedule(now, [head.feed])

    def _on_missing(self, frame: Missing, now: float) -> None:
        """The peer lacks chunks it announced: forget them until it announces them again.

        An honest peer does this rarely (its store lost a chunk); a peer that keeps doing it
        is making us ask in vain, so past ``max_false_haves`` it is flagged.
        """
        known = self._peer_has.get(frame.feed)
        for index in frame.indexes:
            if self._settle((frame.feed, index)) and known is not None:
                known.discard(index)
                self._false_haves += 1
        if self._false_haves > self.config.max_false_haves:
            raise LimitExceededError(
                "peer keeps lacking what it announced", code="replication.limit"
            )
        self._schedule(now, [frame.feed])

    def _on_conflict(self, frame: Conflict) -> None:
        state = self._feeds.get(frame.proof.first.feed)
        if state is not None and state.add_proof(frame.proof):
            self._events.append(EquivocationDetected(state.feed, frame.proof))

    # ------------------------------------------------------------------ internals

    def _on_equivocation(self, chunk: Chunk, proof: EquivocationProof) -> None:
        """Report the proof, send it back, and stop asking this peer for that chunk."""
        feed, index = chunk.head.feed, chunk.head.index
        self._events.append(EquivocationDetected(feed, proof, chunk))
        self._outgoing.append(Conflict(proof))
        if feed in self._peer_has:
            self._peer_has[feed].discard(index)
        if len(self._conflicted) < self.config.max_conflicts:
            self._conflicted.add((feed, index))

    def _flag(self, error: RemoteProtocolError) -> None:
        self.close()
        self._events.append(PeerFlagged(error))

    def _settle(self, key: tuple[bytes, int]) -> bool:
        """Forget a request (answered or withdrawn); ``True`` if it was outstanding."""
        if self._in_flight.pop(key, None) is None:
            return False
        self._board.release(key, self)
        return True

    def _haves(self, feed: bytes) -> list[Have]:
        spans = self._feeds[feed].held.spans()
        pages = [spans[i : i + MAX_HAVE_SPANS] for i in range(0, len(spans), MAX_HAVE_SPANS)]
        return [Have(feed, [n for span in page for n in span]) for page in pages or [[]]]

    def _wanted(self, feed: bytes) -> Iterator[int]:
        """Chunks of ``feed`` the peer has and we lack, not yet requested, newest first."""
        known = self._peer_has.get(feed)
        if known is None:
            return
        for index in known.missing_from(self._feeds[feed].held):
            key = (feed, index)
            if key not in self._in_flight and not self._board.taken(key, self):
                yield index

    def _schedule(self, now: float, touched: Iterable[bytes]) -> None:
        """Fill free request slots round-robin across feeds, newest chunks first.

        ``touched`` are the feeds whose state may have changed: only they are checked for a
        :class:`FeedSynced` transition, so a chunk costs O(1) feeds, not O(all feeds).
        """
        free = self.config.max_in_flight - len(self._in_flight)
        feeds = list(self._peer_has)
        if feeds and free > 0:
            start = self._rotation % len(feeds)
            self._rotation += 1
            sources = {feed: self._wanted(feed) for feed in feeds[start:] + feeds[:start]}
            picked: dict[bytes, list[int]] = {}
            while free > 0 and sources:
                for feed, source in list(sources.items()):
                    if free == 0:
                        break
                    index = next(source, None)
                    if index is None:
                        del sources[feed]
                        continue
                    picked.setdefault(feed, []).append(index)
                    self._in_flight[(feed, index)] = now + self.config.request_timeout
                    self._board.claim((feed, index), self)
                    free -= 1
            for feed, indexes in picked.items():
                for i in range(0, len(indexes), MAX_WANT):
                    self._outgoing.append(Want(feed, indexes[i : i + MAX_WANT]))
        self._report_synced(touched)

    def _report_synced(self, feeds: Iterable[bytes]) -> None:
        """Emit :class:`FeedSynced` when a feed the peer announced becomes complete here."""
        for feed in feeds:
            known = self._peer_has.get(feed)
            if known is None:
                continue  # the peer has not announced this feed: nothing to be synced with
            done = next(known.missing_from(self._feeds[feed].held), None) is None
            if done and feed not in self._synced:
                self._synced.add(feed)
                self._events.append(FeedSynced(feed))
            elif not done:
                self._synced.discard(feed)
