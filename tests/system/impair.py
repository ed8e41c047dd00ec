"""A seeded userspace UDP impairment proxy for loopback network labs.

``ImpairProxy(target)`` listens on a local UDP port; every client that sends to it gets its own
upstream socket towards ``target``, so replies find their way back to the right client. Each
direction (``proxy.forward``: client -> target, ``proxy.backward``: target -> client) is a
:class:`Link` with its own :class:`Impairment` (loss, delay, jitter, reordering, duplication,
blackhole) that a test may change at any time; ``partition()`` blackholes both directions and
``heal()`` lifts that again.

Contracts:

* deterministic: a link's decisions come from ``random.Random`` seeded with ``(seed, name)``,
  so the same seed and the same packet sequence give the same drops, copies and delays
  (wall-clock scheduling of the sends is of course the event loop's);
* bounded: at most ``max_queue`` datagrams wait per direction and at most ``max_clients``
  clients are served; anything beyond is dropped and counted (``Link.overflow``), like a full
  router queue;
* ``aclose()`` cancels every pending send and closes every socket; it is idempotent.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

__all__ = ["Address", "ImpairProxy", "Impairment", "Link"]

Address = tuple[str, int]


@dataclass
class Impairment:
    """What one direction does to each datagram (probabilities in [0, 1], times in seconds).

    ``reorder`` is the probability that a datagram is held back ``reorder_gap`` seconds more
    than the others, so later ones overtake it; ``duplicate`` sends a second copy (with its own
    delay); ``blackhole`` drops everything.
    """

    loss: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    reorder: float = 0.0
    reorder_gap: float = 0.02
    duplicate: float = 0.0
    blackhole: bool = False


@dataclass
class Link:
    """One direction's impairment, its seeded decisions and its counters."""

    name: str
    seed: int
    impairment: Impairment = field(default_factory=Impairment)
    received: int = 0
    dropped: int = 0
    duplicated: int = 0
    overflow: int = 0
    sent: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(f"{self.seed}/{self.name}")

    def plan(self) -> list[float]:
        """Delays (seconds) of the copies to send for the next datagram; ``[]`` = dropped.

        Always draws the same number of random values per datagram, so changing one knob does
        not shift the decisions made for the others.
        """
        imp = self.impairment
        lost, dup, reordered, jitter_a, jitter_b = (self._rng.random() for _ in range(5))
        self.received += 1
        if imp.blackhole or lost < imp.loss:
            self.dropped += 1
            return []
        delays = [self._delay(jitter_a, reordered < imp.reorder)]
        if dup < imp.duplicate:
            self.duplicated += 1
            delays.append(self._delay(jitter_b, False))
        return delays

    def _delay(self, draw: float, reordered: bool) -> float:
        imp = self.impairment
        delay = imp.delay + imp.jitter * (2.0 * draw - 1.0)
        return max(0.0, delay + (imp.reorder_gap if reordered else 0.0))


class _Endpoint(asyncio.DatagramProtocol):
    """A socket that hands every datagram (and its source) to ``on_datagram``.

    ``send`` before the socket exists (an upstream socket is still being created) keeps the
    datagrams, in order, and sends them once it does.
    """

    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass in 3.11
        for data in self._early:
            self.transport.sendto(data)
        self._early.clear()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self._early.append(data)
        elif not self.transport.is_closing():
            self.transport.sendto(data)

    def send_to(self, data: bytes, addr: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.on_datagram(data, addr[:2])

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (e.g. port unreachable while the target restarts) are just loss."""


class ImpairProxy:
    """``async with ImpairProxy(target, seed=1) as proxy:``; clients send to ``proxy.address``."""

    def __init__(
        self,
        target: Address,
        *,
        seed: int,
        listen: Address = ("127.0.0.1", 0),
        max_queue: int = 4096,
        max_clients: int = 16,
    ) -> None:
        self.target = target
        self.listen = listen
        self.forward = Link("forward", seed)
        self.backward = Link("backward", seed)
        self.max_queue = max_queue
        self.max_clients = max_clients
        self.address: Address = listen
        self._front: _Endpoint | None = None
        self._upstream: dict[Address, _Endpoint] = {}
        self._connecting: dict[Address, asyncio.Task[None]] = {}
        self._pending: dict[str, dict[int, asyncio.TimerHandle]] = {"forward": {}, "backward": {}}
        self._sequence = 0
        self._closed = False

    async def start(self) -> Address:
        """Bind the listening socket; returns (and stores in ``address``) where it listens."""
        loop = asyncio.get_running_loop()
        transport, front = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self._from_client), local_addr=self.listen
        )
        self._front = front
        self.address = transport.get_extra_info("sockname")[:2]
        return self.address

    async def __aenter__(self) -> ImpairProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def partition(self) -> None:
        """Drop everything in both directions until :meth:`heal`."""
        self.forward.impairment.blackhole = self.backward.impairment.blackhole = True

    def heal(self) -> None:
        self.forward.impairment.blackhole = self.backward.impairment.blackhole = False

    def pending(self) -> int:
        """Datagrams scheduled but not yet sent, both directions."""
        return sum(len(handles) for handles in self._pending.values())

    async def aclose(self) -> None:
        self._closed = True
        for handles in self._pending.values():
            for handle in handles.values():
                handle.cancel()
            handles.clear()
        for task in self._connecting.values():
            task.cancel()
        await asyncio.gather(*self._connecting.values(), return_exceptions=True)
        self._connecting.clear()
        endpoints = [*self._upstream.values(), *([self._front] if self._front else [])]
        self._upstream.clear()
        self._front = None
        for endpoint in endpoints:
            if endpoint.transport is not None:
                endpoint.transport.close()
        await asyncio.sleep(0)  # let the transports run their connection_lost callbacks

    # ------------------------------------------------------------------ plumbing

    def _from_client(self, data: bytes, client: Address) -> None:
        if client not in self._upstream:
            if len(self._upstream) >= self.max_clients:
                self.forward.overflow += 1
                return
            upstream = _Endpoint(lambda data, _src: self._from_target(data, client))
            self._upstream[client] = upstream
            self._connecting[client] = asyncio.get_running_loop().create_task(
                self._connect(upstream)
            )
        self._schedule(self.forward, data, lambda payload: self._send_up(client, payload))

    async def _connect(self, upstream: _Endpoint) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: upstream, remote_addr=self.target)

    def _from_target(self, data: bytes, client: Address) -> None:
        self._schedule(self.backward, data, lambda payload: self._send_to_client(client, payload))

    def _schedule(self, link: Link, data: bytes, send: Callable[[bytes], None]) -> None:
        if self._closed:
            return
        handles = self._pending[link.name]
        loop = asyncio.get_running_loop()
        for delay in link.plan():
            if len(handles) >= self.max_queue:
                link.overflow += 1
                continue
            self._sequence += 1
            handles[self._sequence] = loop.call_later(
                delay, self._fire, link, self._sequence, data, send
            )

    def _fire(self, link: Link, key: int, data: bytes, send: Callable[[bytes], None]) -> None:
        del self._pending[link.name][key]
        link.sent += 1
        send(data)

    def _send_up(self, client: Address, data: bytes) -> None:
        upstream = self._upstream.get(client)
        if upstream is not None:
            upstream.send(data)

    def _send_to_client(self, client: Address, data: bytes) -> None:
        if self._front is not None:
            self._front.send_to(data, client)
