"""Replication test simulator: peers (a session plus a dict for the store) over links that drop,
reorder and duplicate frames, shared by the replication unit, property and mesh tests.

Each peer is a session plus a dict standing in for the store; frames go through the real wire
encoding. Time is simulated: the loop jumps to the next delivery or timer, so lossy runs that
need many request timeouts still take milliseconds.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from node import feeds, wire
from node.crypto import SigningKey
from node.feeds import Chunk, FeedState, FeedWriter
from node.identity import Identity
from node.replication import (
    ChunkNeeded,
    ChunkStored,
    Data,
    EquivocationDetected,
    ReplicationConfig,
    ReplicationEvent,
    ReplicationSession,
    RequestBoard,
)

WRITER = Identity(SigningKey(bytes(range(32))))
SECOND = Identity(SigningKey(bytes(range(7, 39))))
FEED = feeds.feed_id(WRITER.peer_id, b"group")
FEED_2 = feeds.feed_id(SECOND.peer_id, b"group")
E = TypeVar("E")


def write(
    count: int, *, per_chunk: int = 8, identity: Identity = WRITER, feed: bytes = FEED
) -> list[Chunk]:
    writer = FeedWriter(identity, feed, max_entries=per_chunk)
    chunks = [c for i in range(count) if (c := writer.append(b"%d" % i)) is not None]
    last = writer.seal()
    return [*chunks, last] if last else chunks


class Peer:
    """A node: sessions (one per connected peer, sharing a request board), states and a store.

    ``pump`` plays the I/O shell: it answers ChunkNeeded from the store, persists ChunkStored
    and announces it on the other sessions, and passes proofs on.
    """

    def __init__(
        self,
        states: list[FeedState],
        store: dict[tuple[bytes, int], Chunk],
        peers: tuple[str, ...] = ("peer",),
    ) -> None:
        self.states = {s.feed: s for s in states}
        self.store = store
        self.events: list[ReplicationEvent] = []
        self.board = RequestBoard()
        self.sessions: dict[str, ReplicationSession] = {}
        self.serve: Callable[[bytes, int], Chunk | None] = lambda f, i: self.store.get((f, i))
        for name in peers:
            self.connect(name, 0.0)

    @classmethod
    def holding(cls, chunks: list[Chunk], *, writer: Identity = WRITER) -> Peer:
        feed = chunks[0].head.feed
        state = FeedState(writer.peer_id, feed)
        store = {}
        for chunk in chunks:
            state.accept(chunk)
            store[(feed, chunk.head.index)] = chunk
        return cls([state], store)

    @property
    def session(self) -> ReplicationSession:
        """The session of a node with one connection."""
        (only,) = self.sessions.values()
        return only

    def connect(self, name: str, now: float, config: ReplicationConfig | None = None) -> None:
        """A (new) connection to ``name``: a fresh session over the same states and store."""
        if name in self.sessions:
            self.sessions[name].close()
        self.sessions[name] = ReplicationSession(self.states.values(), now, config, self.board)

    def restart(self, now: float, config: ReplicationConfig | None = None) -> None:
        for name in list(self.sessions):
            self.connect(name, now, config)

    def pump(self) -> None:
        for session in self.sessions.values():
            while (event := session.next_event()) is not None:
                self.events.append(event)
                self._handle(session, event)

    def _handle(self, session: ReplicationSession, event: ReplicationEvent) -> None:
        others = [s for s in self.sessions.values() if s is not session]
        if isinstance(event, ChunkNeeded):
            chunk = self.serve(event.feed, event.index)
            if chunk is None:
                session.send_missing(event.feed, event.index)
            else:
                session.send_chunk(chunk)
        elif isinstance(event, ChunkStored):
            self.store[(event.feed, event.chunk.head.index)] = event.chunk
            for other in others:
                other.announce(event.feed)
        elif isinstance(event, EquivocationDetected):
            for other in others:
                other.share_proof(event.proof)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


class Link:
    """One direction: drops, duplicates and delays (hence reorders) encoded frames."""

    def __init__(self, rng: random.Random, drop: float, dup: float, jitter: float) -> None:
        self.rng, self.drop, self.dup, self.jitter = rng, drop, dup, jitter
        self.queue: list[tuple[float, int, bytes]] = []
        self.counter = 0
        self.sent: list[wire.Message] = []

    def send(self, frame: wire.Message, now: float) -> None:
        self.sent.append(frame)
        data = wire.encode_frame(frame)[wire.LENGTH_PREFIX.size :]
        copies = 0 if self.rng.random() < self.drop else 1
        copies += 1 if self.rng.random() < self.dup else 0
        for _ in range(copies):
            self.counter += 1
            at = now + 0.001 + self.rng.random() * self.jitter
            heapq.heappush(self.queue, (at, self.counter, data))

    def due(self, now: float) -> list[wire.Message]:
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(wire.decode_frame(heapq.heappop(self.queue)[2]))
        return out

    def next_time(self) -> float | None:
        return self.queue[0][0] if self.queue else None


@dataclass
class Channel:
    """One direction of one connection: ``source``'s session for ``target`` sends over ``link``."""

    source: Peer
    target: Peer
    source_name: str
    target_name: str
    link: Link

    def sender(self) -> ReplicationSession:
        return self.source.sessions[self.target_name]

    def receiver(self) -> ReplicationSession:
        return self.target.sessions[self.source_name]


class Sim:
    """Peers joined by channels; ``run`` steps simulated time until ``done`` or a bound."""

    def __init__(self, channels: list[Channel]) -> None:
        self.channels = channels
        self.peers = list({id(p): p for c in channels for p in (c.source, c.target)}.values())
        self.now = 0.0
        self.max_in_flight_seen = 0

    def run(self, done: Callable[[], bool], max_steps: int = 20_000) -> int:
        for step in range(max_steps):
            self._flush()
            if done():
                return step
            times = [t for c in self.channels if (t := c.link.next_time()) is not None]
            if not times and not self._timers():
                return step
            self.now = max(self.now, min(times + self._timers()))
            for channel in self.channels:
                for frame in channel.link.due(self.now):
                    channel.receiver().receive_frame(frame, self.now)
                    channel.target.pump()
            for peer in self.peers:
                for session in peer.sessions.values():
                    timer = session.get_timer()
                    if timer is not None and timer <= self.now:
                        session.handle_timer(self.now)
                peer.pump()
        raise AssertionError(f"no convergence in {max_steps} steps")

    def _timers(self) -> list[float]:
        sessions = [s for p in self.peers for s in p.sessions.values()]
        return [t for s in sessions if (t := s.get_timer()) is not None]

    def _flush(self) -> None:
        for channel in self.channels:
            channel.source.pump()
            sender = channel.sender()
            for frame in sender.frames_to_send():
                channel.link.send(frame, self.now)
            self.max_in_flight_seen = max(self.max_in_flight_seen, sender.in_flight)


class Net(Sim):
    """Two peers with one connection (their sessions named ``"peer"``)."""

    def __init__(self, a: Peer, b: Peer, seed: int = 0, **impair: float) -> None:
        rng = random.Random(seed)
        params = {"drop": 0.0, "dup": 0.0, "jitter": 0.0} | impair
        self.a, self.b = a, b
        self.ab, self.ba = Link(rng, **params), Link(rng, **params)
        super().__init__(
            [Channel(a, b, "peer", "peer", self.ab), Channel(b, a, "peer", "peer", self.ba)]
        )


def holds_all(peer: Peer, feed: bytes, chunks: list[Chunk]) -> Callable[[], bool]:
    return lambda: peer.states[feed].held.size() == len(chunks)


def data_indexes(link: Link) -> list[int]:
    return [f.chunk.head.index for f in link.sent if isinstance(f, Data)]


# --------------------------------------------------------------------------- syncing
