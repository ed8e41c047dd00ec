"""Feed figures: verifying and applying chunks, and syncing a new member, in the pure core.

What is measured (no QUIC yet; frames still go through the real wire encoding):

- ``verify_apply``: decode a ``Data`` frame and :meth:`FeedState.accept` it (one signature,
  two BLAKE2b per entry, chain and position checks), as entries/s, chunks/s and MB/s.
- ``sync``: two :class:`ReplicationSession` machines over a lossless in-memory link, the source
  loading each chunk from encoded bytes as a store would: a new member catching up a feed.
- ``newest_1000``: seconds until a new member holds the newest 1,000 entries of a feed, for a
  short feed and a long one (1,000,000 entries; 100,000 with ``quick``): the figure must not
  grow with the length.

Ceilings, measured in the same run: raw ``hashlib.blake2b`` and raw libsodium Ed25519 verify.
The per-entry ceiling is the raw cost of the minimum work (two BLAKE2b of the entry's size per
entry, one verify per full chunk). This module imports nacl directly on purpose: it measures
the library, and ``bench/`` is outside the layering rules.
"""

from __future__ import annotations

import hashlib
import time
import typing
from collections.abc import Callable

import nacl.bindings as sodium

from bench.table import Row, ops_per_second
from node import feeds, merkle, wire
from node.crypto import SigningKey
from node.feeds import Chunk, FeedState, FeedWriter
from node.identity import Identity
from node.replication import ChunkNeeded, ChunkStored, Data, FeedSynced, ReplicationSession

ENTRIES_PER_SECOND_TARGET = 16_000.0
"""Issue 8: catching up must beat Hypercore's ~7,900 entries/s on this machine twice over."""
NEWEST_SECONDS_TARGET = 1.0

_WRITER = Identity(SigningKey(bytes(range(32))))
_FEED = feeds.feed_id(_WRITER.peer_id, b"bench")
_MB = 1e6
_ENTRY_OVERHEAD = 45
"""Bytes an encoded entry adds to its payload (seq, prev hash, msgpack headers)."""


class _Feed:
    """A written feed kept as encoded chunks (what a store would hold), plus totals."""

    def __init__(self, entries: int, payload_size: int) -> None:
        writer = FeedWriter(_WRITER, _FEED)
        payload = bytes(payload_size)
        self.blobs: list[bytes] = []
        self.heads: list[feeds.ChunkHead] = []
        for _ in range(entries):
            if (chunk := writer.append(payload)) is not None:
                self._keep(chunk)
        if (last := writer.seal()) is not None:
            self._keep(last)
        self.entries = entries
        self.payload_bytes = entries * payload_size

    def _keep(self, chunk: Chunk) -> None:
        self.blobs.append(wire.encode_message(chunk))
        self.heads.append(chunk.head)

    def load(self, index: int) -> Chunk:
        return wire.decode_message(Chunk, self.blobs[index])

    def source_state(self) -> FeedState:
        """The source's state restored from its heads, as a node does at start (not timed)."""
        return FeedState(_WRITER.peer_id, _FEED, self.heads)


def _verify_apply(feed: _Feed) -> float:
    """Seconds to decode every chunk's Data frame and accept it into an empty state."""
    frames = [
        wire.encode_frame(Data(feed.load(i)))[wire.LENGTH_PREFIX.size :]
        for i in range(len(feed.blobs))
    ]
    state = FeedState(_WRITER.peer_id, _FEED)
    start = time.perf_counter()
    for body in frames:
        frame = wire.decode_frame(body)
        assert isinstance(frame, Data)
        state.accept(frame.chunk)
    spent = time.perf_counter() - start
    assert state.linked_prefix() == len(feed.blobs)
    return spent


def _sync(feed: _Feed, done: Callable[[FeedState], bool]) -> float:
    """Seconds for a new member to reach ``done`` from one source, frames through the wire."""
    source_state = feed.source_state()
    member_state = FeedState(_WRITER.peer_id, _FEED)
    start = time.perf_counter()
    source = ReplicationSession([source_state], 0.0)
    member = ReplicationSession([member_state], 0.0)
    pipes = [(source, member, wire.FrameDecoder()), (member, source, wire.FrameDecoder())]
    for _ in range(10 * len(feed.blobs) + 100):
        for sender, receiver, decoder in pipes:
            data = b"".join(wire.encode_frame(frame) for frame in sender.frames_to_send())
            for frame in decoder.feed(data):
                receiver.receive_frame(frame, 0.0)
        while (event := source.next_event()) is not None:
            if isinstance(event, ChunkNeeded):
                source.send_chunk(feed.load(event.index))
        while (event := member.next_event()) is not None:
            # A store would persist each ChunkStored here; nothing else may happen.
            assert isinstance(event, ChunkStored | FeedSynced), event
        if done(member_state):
            return time.perf_counter() - start
    raise RuntimeError("sync did not finish")


def _hash_rate(size: int, seconds: float) -> float:
    data = bytes(size)
    return ops_per_second(lambda: hashlib.blake2b(data, digest_size=32).digest(), seconds)


def _ceilings(payload_size: int, per_chunk: float, seconds: float) -> tuple[float, float, float]:
    """Raw entries/s of the minimum work, raw BLAKE2b MB/s, raw Ed25519 verify/s.

    The minimum work per entry is one BLAKE2b of the encoded entry (its leaf), one BLAKE2b of
    64 bytes (its share of the Merkle tree's inner nodes) and ``1/per_chunk`` signature checks.
    """
    public, secret = sodium.crypto_sign_seed_keypair(bytes(32))
    signed = sodium.crypto_sign(bytes(300), secret)
    leaf = _hash_rate(payload_size + _ENTRY_OVERHEAD, seconds)
    inner = _hash_rate(2 * merkle.HASH_SIZE, seconds)
    megabytes = _hash_rate(1 << 20, seconds) * (1 << 20) / _MB
    verifies = ops_per_second(lambda: sodium.crypto_sign_open(signed, public), seconds)
    entries = 1.0 / (1.0 / leaf + 1.0 / inner + 1.0 / (per_chunk * verifies))
    return entries, megabytes, verifies


def _row(name: str, value: float, unit: str, **extra: object) -> Row:
    """A row; ``extra`` may set ceiling, ceiling_name, target (missing ones are None)."""
    row = {"ceiling": None, "ceiling_name": None, "target": None, **extra}
    return typing.cast(Row, {"name": name, "value": value, "unit": unit, **row})


def _catch_up(entries: int, payload_size: int, seconds: float) -> list[Row]:
    """Writing, verify+apply and full-sync figures for one feed shape."""
    start = time.perf_counter()
    feed = _Feed(entries, payload_size)
    writing = time.perf_counter() - start
    per_chunk = entries / len(feed.blobs)
    entry_ceiling, blake_mb, verifies = _ceilings(payload_size, per_chunk, seconds)
    per_entry = {
        "ceiling": entry_ceiling,
        "ceiling_name": f"raw BLAKE2b leaf+node/entry, Ed25519/{per_chunk:.0f} entries",
    }
    per_byte = {"ceiling": blake_mb, "ceiling_name": "raw BLAKE2b MB/s (1 MiB input)"}
    target = {"target": ENTRIES_PER_SECOND_TARGET}
    apply = min(_verify_apply(feed) for _ in range(2))
    sync = min(_sync(feed, lambda s: s.entry_count == entries) for _ in range(2))
    chunks = len(feed.blobs)
    prefix = f"feeds.{entries // 1000}k_x{payload_size}B"
    return [
        _row(f"{prefix}.write", entries / writing, "entries/s", **per_entry),
        _row(f"{prefix}.verify_apply", entries / apply, "entries/s", **per_entry, **target),
        _row(
            f"{prefix}.verify_apply_chunks",
            chunks / apply,
            "chunks/s",
            ceiling=verifies,
            ceiling_name="raw Ed25519 verify/s",
        ),
        _row(f"{prefix}.verify_apply_MB", feed.payload_bytes / apply / _MB, "MB/s", **per_byte),
        _row(f"{prefix}.sync", entries / sync, "entries/s", **per_entry, **target),
        _row(f"{prefix}.sync_MB", feed.payload_bytes / sync / _MB, "MB/s", **per_byte),
    ]


def _newest(entries: int) -> Row:
    feed = _Feed(entries, 64)
    last = len(feed.blobs) - 1

    def newest_held(state: FeedState) -> bool:
        return state.entry_count >= 1000 and state.held.spans()[-1][1] == last + 1

    seconds = min(_sync(feed, newest_held) for _ in range(3))
    row = _row(f"feeds.newest_1000_of_{entries // 1000}k_x64B", seconds, "s")
    row["target"] = NEWEST_SECONDS_TARGET
    row["higher_is_better"] = False
    return row


def run(quick: bool = False) -> list[Row]:
    """Rows for ``make bench``; ``quick`` shrinks the feeds (same shapes, fewer entries)."""
    seconds = 0.2 if quick else 0.5
    scale = 5 if quick else 1
    return [
        *_catch_up(100_000 // scale, 256, seconds),
        *_catch_up(10_000 // scale, 4096, seconds),
        _newest(10_000),
        _newest(1_000_000 // (10 if quick else 1)),
    ]
