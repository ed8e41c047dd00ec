"""Finding a peer's addresses: several sources asked at once, one cache, one dial helper.

- :class:`AddressLookup` is what a source implements (``MdnsDiscovery`` does; :class:`DhtLookup`
  adapts a :class:`dht.node.DhtNode`; a rendezvous client will). Sources return records they
  believe valid; the :class:`Resolver` validates every one again with
  :func:`node.records.validate` (pluggable sources are not trusted) and keeps the
  :func:`node.records.select` winner.
- :class:`Resolver` asks all sources concurrently, each within ``timeout``; a failing or slow
  source costs at most ``timeout`` and never fails the lookup. The best record is cached until
  it expires; ``refresh=True`` asks the sources again (after a failed dial).
- :func:`dial_any`: a live connection if there is one, else dial the newest record's addresses,
  then the addresses of older records other sources still hold; after total failure, one fresh
  resolve in case the peer moved. Only the transport's authenticated handshake decides who
  answered: a record is a hint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from dht.node import DhtNode
from node import records
from node.errors import DialError, PeerlineError
from node.identity import PeerId
from node.records import PeerRecord, discovery_key
from node.transport import Connection, Transport

__all__ = ["AddressLookup", "DhtLookup", "Resolver", "dial_any"]

_log = logging.getLogger(__name__)


class AddressLookup(Protocol):
    """A source of peer records (mDNS cache, DHT, rendezvous)."""

    name: str

    async def lookup(self, peer_id: PeerId) -> list[PeerRecord]:
        """Records this source holds for ``peer_id`` (possibly none). May raise PeerlineError."""
        ...


class DhtLookup:
    """Peer records in the DHT under their discovery key."""

    name = "dht"

    def __init__(self, dht: DhtNode, *, clock: Callable[[], float] = time.time) -> None:
        self._dht = dht
        self._clock = clock

    async def lookup(self, peer_id: PeerId) -> list[PeerRecord]:
        value = await self._dht.get(discovery_key(peer_id))
        return [] if value is None else [records.validate(value, self._clock(), peer_id=peer_id)]

    async def publish(self, record: PeerRecord) -> int:
        """Store our record at the closest nodes; returns how many accepted it."""
        return await self._dht.publish(discovery_key(record.peer_id), record.encode())


class Resolver:
    """Ask every source concurrently; cache the newest valid record until it expires."""

    def __init__(
        self,
        sources: Sequence[AddressLookup],
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 3.0,
        max_cache: int = 4096,
    ) -> None:
        self.sources = list(sources)
        self._clock = clock
        self._timeout = timeout
        self._max_cache = max_cache
        self._cache: dict[PeerId, PeerRecord] = {}

    def cached(self, peer_id: PeerId) -> PeerRecord | None:
        record = self._cache.get(peer_id)
        if record is not None and record.expires <= self._clock():
            del self._cache[peer_id]
            return None
        return record

    def remember(self, record: PeerRecord) -> PeerRecord | None:
        """Validate and cache a record learnt elsewhere (e.g. an invite); returns the winner."""
        try:
            valid = records.validate(record.encode(), self._clock(), peer_id=record.peer_id)
        except PeerlineError:
            return self.cached(record.peer_id)
        best = records.select(self.cached(record.peer_id), valid)
        if best is not None and (record.peer_id in self._cache or self._room()):
            self._cache[record.peer_id] = best
        return best

    def _room(self) -> bool:
        if len(self._cache) >= self._max_cache:
            now = self._clock()
            for peer in [p for p, r in self._cache.items() if r.expires <= now]:
                del self._cache[peer]
        return len(self._cache) < self._max_cache

    async def resolve(self, peer_id: PeerId, *, refresh: bool = False) -> list[PeerRecord]:
        """Valid records for ``peer_id``, newest first, distinct (empty if nobody knows it).

        Without ``refresh`` a cached record answers at once.
        """
        cached = self.cached(peer_id)
        if cached is not None and not refresh:
            return [cached]
        answers = await asyncio.gather(*(self._ask(s, peer_id) for s in self.sources))
        found: dict[bytes, PeerRecord] = {} if cached is None else {cached.encode(): cached}
        for record in (r for answer in answers for r in answer):
            try:
                data = record.encode()
                found[data] = records.validate(data, self._clock(), peer_id=peer_id)
            except PeerlineError as exc:
                _log.info("refused a record for %s: %s", peer_id.short(), exc.code)
        ordered = sorted(found.values(), key=lambda r: (r.seq, r.encode()), reverse=True)
        if ordered:
            self.remember(ordered[0])
        return ordered

    async def _ask(self, source: AddressLookup, peer_id: PeerId) -> list[PeerRecord]:
        try:
            return await asyncio.wait_for(source.lookup(peer_id), self._timeout)
        except (PeerlineError, TimeoutError, OSError) as exc:
            _log.info("lookup of %s via %s failed: %s", peer_id.short(), source.name, exc)
            return []


def _addresses(found: Sequence[PeerRecord]) -> list[tuple[str, int]]:
    """Every address, newest record first, without repeats."""
    return list(dict.fromkeys(address for record in found for address in record.addresses))


async def dial_any(transport: Transport, peer_id: PeerId, resolver: Resolver) -> Connection:
    """An authenticated connection to ``peer_id``: live one, else dial what the sources know.

    Raises :class:`DialError` (``dial.no_address`` if nobody knows the peer) or whatever the
    transport raised for the last attempt (``AuthenticationError`` if an address answered
    with another key, which a spoofed record leads to).
    """
    live = transport.connection(peer_id)
    if live is not None:
        return live
    tried: list[tuple[str, int]] = []
    last: PeerlineError | None = None
    for refresh in (False, True):
        known = _addresses(await resolver.resolve(peer_id, refresh=refresh))
        fresh = [address for address in known if address not in tried]
        if not fresh:
            continue
        tried.extend(fresh)
        try:
            return await transport.dial(peer_id, fresh)
        except PeerlineError as exc:  # DialError, AuthenticationError, timeouts
            last = exc
    if last is not None:
        raise last
    raise DialError(f"no known address for {peer_id.short()}", code="dial.no_address")
