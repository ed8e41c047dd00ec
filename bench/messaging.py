"""1:1 messaging figures: two nodes on loopback beside raw aioquic, and a 1M-message store.

- throughput: ``Node.send`` of 300-byte texts (durable outbox, E2EE, signed batched receipts)
  until the sender's outbox is empty, i.e. every message is ``delivered``; ceiling: raw
  aioquic 300-byte frames on one stream, same process, same run.
- latency: one message at a time, ``send`` to the ``delivered`` state event; ceiling: raw
  aioquic ping-pong RTT.
- history page: p99 of a 50-message page at random cursors in a conversation holding
  1,000,000 messages (``--quick``: 100,000).
- send at 1M: queueing rate (message row + outbox row, one unit each, concurrent writers)
  with 1M messages stored, beside the same on an empty store.

The sender is a node in this process; the receiver is a ``peerline run`` daemon process. The
raw aioquic baseline runs both ends in this process.
Run: ``.venv/bin/python -m bench --only messaging``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench.table import Row
from bench.transport import _raw, _Sizes
from node import control
from node.history import History
from node.home import DB_FILE, create_identity, load_identity
from node.identity import Identity, PeerId
from node.node import Node, NodeConfig
from node.store import Store

__all__ = ["run"]

TEXT = "x" * 300
_CONFIG = NodeConfig(mdns=False)


@contextlib.asynccontextmanager
async def _pair(root: Path) -> AsyncIterator[tuple[Node, PeerId]]:
    """Alice is a node in this process (so the bench can call ``send`` directly); bob is a
    real ``peerline run`` daemon in another process, as a user would run it."""
    for name in ("alice", "bob"):
        await create_identity(root / name, name, None)
    log = root / "bob.log"
    with open(log, "wb") as out:
        bob = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
            [sys.executable, "-m", "cli", "--home", str(root / "bob"), "--json", "run",
             "--no-mdns"],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while not log.read_bytes():
                await asyncio.sleep(0.05)
        await control.call(root / "bob", "policy", {"value": "allow"})
        invite = (await control.call(root / "bob", "invite", {}))["invite"]
        identity = await load_identity(root / "alice", None)
        async with Node.open(root / "alice", identity, _CONFIG, "alice") as alice:
            target = await alice.contacts.resolve(invite)
            await alice.contacts.add(target, alias="bob", name=None, now=time.time())
            await alice.send(target.peer_id, "warm-up")
            await _drained(alice)
            yield alice, target.peer_id
    finally:
        bob.send_signal(signal.SIGTERM)
        bob.wait(timeout=30)


async def _drained(node: Node, timeout: float = 120.0) -> None:
    async with asyncio.timeout(timeout):
        while (await node.status())["queued"]:
            await asyncio.sleep(0.005)


async def _throughput(alice: Node, bob: PeerId, count: int) -> float:
    start = time.perf_counter()
    for first in range(0, count, 500):
        await asyncio.gather(
            *(alice.send(bob, TEXT) for _ in range(first, min(count, first + 500)))
        )
    await _drained(alice)
    return count / (time.perf_counter() - start)


async def _latency(alice: Node, bob: PeerId, count: int) -> list[float]:
    events = alice.subscribe()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        wanted = (await alice.send(bob, TEXT)).hex()
        while True:
            event = await asyncio.wait_for(events.get(), 10)
            assert event is not None
            if event.get("id") == wanted and event.get("state") == "delivered":
                break
        samples.append(time.perf_counter() - start)
    alice.unsubscribe(events)
    return samples


def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _fill(store: Store, own: Identity, peer: Identity, count: int) -> None:
    history = History(store, own.peer_id)
    await store.write([history.ensure_conversation_op(peer.peer_id, "accepted", 0.0)])
    row = await store.fetch_one("SELECT id FROM conversations")
    assert row is not None
    rng = random.Random(1)
    batch = 20_000
    for first in range(0, count, batch):
        rows = [
            (rng.randbytes(16), row[0], own.peer_id.key, f"{TEXT[:250]} {i}", float(i), i + 1)
            for i in range(first, min(count, first + batch))
        ]
        await store.write_many(
            "INSERT INTO messages (id, conversation_id, sender, direction, body, sent_at, state,"
            " sender_seq) VALUES (?, ?, ?, 'out', ?, ?, 'delivered', ?)",
            rows,
        )


async def _queue_rate(store: Store, own: Identity, peer: Identity, count: int) -> float:
    history = History(store, own.peer_id)
    rng = random.Random(2)

    async def one() -> None:
        ops = history.queue_ops(
            peer.peer_id, rng.randbytes(16), TEXT, now=time.time(), ttl=None, lifetime=60.0
        )
        await store.write(ops)

    start = time.perf_counter()
    for first in range(0, count, 500):
        await asyncio.gather(*(one() for _ in range(first, min(count, first + 500))))
    return count / (time.perf_counter() - start)


async def _page_p99(store: Store, own: Identity, peer: Identity, total: int) -> float:
    history = History(store, own.peer_id)
    rng = random.Random(3)
    samples = []
    for _ in range(300):
        cursor = str(rng.randrange(100, total))
        start = time.perf_counter()
        page, _ = await history.page(peer.peer_id, limit=50, before=cursor)
        samples.append(time.perf_counter() - start)
        assert len(page) == 50
    return _ms(samples, 0.99)


async def _big_store(root: Path, total: int, sends: int) -> dict[str, float]:
    own, peer = Identity.generate(), Identity.generate()
    figures = {}
    async with Store.open(root / "empty" / DB_FILE) as store:
        figures["send_empty"] = await _queue_rate(store, own, peer, sends)
    async with Store.open(root / "full" / DB_FILE) as store:
        await _fill(store, own, peer, total)
        figures["page_p99"] = await _page_p99(store, own, peer, total)
        figures["send_full"] = await _queue_rate(store, own, peer, sends)
    return figures


async def _measure(quick: bool) -> list[Row]:
    count, pings, total = (2000, 200, 100_000) if quick else (10_000, 1000, 1_000_000)
    raw = await _raw(_Sizes(connects=3, pings=pings, frames=count * 4, bulk_bytes=1 << 20))
    with tempfile.TemporaryDirectory(prefix="bench-messaging-") as tmp:
        root = Path(tmp)
        (root / "empty").mkdir()
        (root / "full").mkdir()
        async with _pair(root) as (alice, bob):
            rate = await _throughput(alice, bob, count)
            samples = await _latency(alice, bob, pings)
        big = await _big_store(root, total, 5000 if not quick else 2000)
    label = f"{total // 1000}k" if total < 1_000_000 else "1M"
    return [
        _row("1:1 messages delivered/s (300 B, E2EE, durable)", rate, "msg/s",
             ceiling=(raw["frames"], "raw aioquic 300 B frames/s"), target=10_000),
        _row("send->delivered p50", _ms(samples, 0.5), "ms",
             ceiling=(raw["p50"], "raw aioquic RTT p50"), target=1.5, higher=False),
        _row("send->delivered p99", _ms(samples, 0.99), "ms",
             ceiling=(raw["p99"], "raw aioquic RTT p99"), target=5.0, higher=False),
        _row(f"history page p99 at {label} messages", big["page_p99"], "ms",
             ceiling=None, target=10.0, higher=False),
        _row(f"queue rate at {label} messages", big["send_full"], "msg/s",
             ceiling=(big["send_empty"], "queue rate, empty store"),
             target=0.9 * big["send_empty"]),
    ]  # fmt: skip


def _row(
    name: str,
    value: float,
    unit: str,
    *,
    ceiling: tuple[float, str] | None,
    target: float,
    higher: bool = True,
) -> Row:
    row = Row(
        name=name,
        value=value,
        unit=unit,
        ceiling=None if ceiling is None else ceiling[0],
        ceiling_name=None if ceiling is None else ceiling[1],
        target=target,
    )
    if not higher:
        row["higher_is_better"] = False
    return row


def run(quick: bool = False) -> list[Row]:
    return asyncio.run(_measure(quick))
