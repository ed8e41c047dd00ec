"""A Kademlia DHT node that only stores and returns values its validator accepts.

We use kademlia's routing table, crawlers and RPC transport but not its ``Server``:
``Server.get`` answers from local storage without asking anyone and keeps the *most common*
value of the first round; ``Server.set`` reports success if anyone answered (even a refusal);
its republish can roll newer values back; ``save_state``/``load_state`` use pickle. Instead:

- :meth:`DhtNode.get` crawls towards the key, asks every node among the ``ksize`` closest,
  validates every answer (and our own copy), and returns the highest valid ``seq``. Nodes that
  answered with an older value are sent the newest one (read repair).
- :meth:`DhtNode.publish` validates first, then stores at the ``ksize`` closest nodes and returns
  how many *accepted* it.
- the refresh loop refreshes lonely buckets and republishes what storage holds; storage only
  holds the newest valid value per key and refuses older ones, so republish cannot roll back.
- node ids are derived from the identity (:func:`node_id_for`); nothing proves them to others.
- the library's loggers are turned down to ``CRITICAL`` (they log every timeout at ERROR).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kademlia.crawling import NodeSpiderCrawl, RPCFindResponse, SpiderCrawl
from kademlia.node import Node

from dht.protocol import NODE_ID_SIZE, HardenedProtocol
from dht.storage import LOCAL_SOURCE, StorageLimits, ValidatedStorage
from dht.values import Accepted, Validator, newer
from node.crypto import blake2b, random_bytes
from node.errors import DiscoveryError, LocalProtocolError, PeerlineError, RemoteProtocolError
from node.identity import PeerId

__all__ = ["DhtConfig", "DhtNode", "node_id_for"]

_NODE_ID_PERSON = b"peerline/dht-nid"
_log = logging.getLogger(__name__)
_LIBRARY_LOGGERS = ("kademlia", "rpcudp")


def node_id_for(peer_id: PeerId) -> bytes:
    """Our DHT node id: a domain-separated hash of the PeerId (stable across restarts)."""
    return blake2b(peer_id.key, size=NODE_ID_SIZE, person=_NODE_ID_PERSON)


@dataclass(frozen=True, slots=True)
class DhtConfig:
    """``port=0`` picks a free port. ``client_only`` nodes ask but never serve or get listed."""

    host: str = "0.0.0.0"  # noqa: S104 - a DHT node serves the network it is configured for
    port: int = 0
    bootstrap: tuple[tuple[str, int], ...] = ()
    client_only: bool = False
    ksize: int = 20
    alpha: int = 3
    rpc_timeout: float = 2.0
    refresh_interval: float = 3600.0
    republish_after: float = 3600.0
    limits: StorageLimits = field(default_factory=StorageLimits)


class _BestValueCrawl(SpiderCrawl):  # type: ignore[misc]
    """Ask every node among the closest for the value; keep the newest valid answer."""

    def __init__(
        self, protocol: HardenedProtocol, node: Node, peers: list[Node], ksize: int, alpha: int
    ) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self.best: Accepted | None = None
        self._seen: dict[bytes, Accepted | None] = {}

    async def find(self) -> Accepted | None:
        best: Accepted | None = await self._find(self.protocol.call_find_value)
        return best

    async def _nodes_found(self, responses: dict[bytes, Any]) -> Accepted | None:
        unreachable = []
        for peer_id, raw in responses.items():
            response = RPCFindResponse(raw)
            if not response.happened():
                unreachable.append(peer_id)
            elif response.has_value():
                self._consider(peer_id, response.get_value())
            else:
                self.nearest.push(response.get_node_list())
        self.nearest.remove(unreachable)
        if self.nearest.have_contacted_all():
            return self.best
        if self.best is not None:
            # The value's neighbourhood is found: ask the rest of the closest in one round.
            self.alpha = self.ksize
        return await self.find()

    def _consider(self, peer_id: bytes, value: bytes) -> None:
        storage: ValidatedStorage = self.protocol.storage
        accepted = storage.check(self.node.id, value)
        self._seen[peer_id] = accepted
        if accepted is not None and newer(accepted, self.best):
            self.best = accepted

    def stale_peers(self) -> list[Node]:
        """Nodes among the closest that answered something older than the best value."""
        best = self.best
        if best is None:
            return []
        return [
            node for node in self.nearest if node.id in self._seen and self._seen[node.id] != best
        ]


class DhtNode:
    """One DHT participant on its own UDP port. Use ``async with`` or call :meth:`aclose`."""

    def __init__(
        self,
        config: DhtConfig,
        validator: Validator,
        *,
        node_id: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if node_id is not None and len(node_id) != NODE_ID_SIZE:
            raise LocalProtocolError("a DHT node id is 20 bytes", code="dht.bad_node_id")
        self.config = config
        self.node = Node(node_id or random_bytes(NODE_ID_SIZE))
        self.storage = ValidatedStorage(validator, config.limits, clock=clock)
        self._protocol: HardenedProtocol | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DhtNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def protocol(self) -> HardenedProtocol:
        if self._protocol is None:
            raise LocalProtocolError("the DHT node is not started", code="dht.not_started")
        return self._protocol

    @property
    def address(self) -> tuple[str, int]:
        """The bound UDP address."""
        sockname = self.protocol.transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1]))

    async def start(self) -> None:
        """Bind the UDP port, bootstrap from the configured addresses, start the refresh loop."""
        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        config = self.config
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: HardenedProtocol(
                    self.node,
                    self.storage,
                    config.ksize,
                    rpc_timeout=config.rpc_timeout,
                    client_only=config.client_only,
                ),
                local_addr=(config.host, config.port),
            )
        except OSError as exc:
            raise DiscoveryError(
                f"DHT cannot bind {config.host}:{config.port}: {exc.strerror}"
            ) from None
        self._protocol = protocol
        if config.bootstrap:
            await self.bootstrap(config.bootstrap)
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def aclose(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None

    async def bootstrap(self, addresses: Sequence[tuple[str, int]]) -> int:
        """Ping the given nodes, then crawl towards our own id. Returns the routing table size."""
        protocol = self.protocol
        ids = await asyncio.gather(*(protocol.ping_address(host, port) for host, port in addresses))
        seeds = [
            Node(node_id, host, port)
            for (host, port), node_id in zip(addresses, ids, strict=True)
            if node_id is not None
        ]
        for seed in seeds:
            protocol.welcome_if_new(seed)
        if seeds:
            await NodeSpiderCrawl(
                protocol, self.node, seeds, self.config.ksize, self.config.alpha
            ).find()
        return sum(len(bucket) for bucket in protocol.router.buckets)

    async def publish(self, key: bytes, value: bytes) -> int:
        """Store ``value`` at the closest nodes; returns how many accepted it (ours included).

        Raises :class:`LocalProtocolError` (``dht.invalid_value``) if our own validator refuses
        it, so a bug never sprays invalid data.
        """
        if self.storage.check(key, value) is None:
            raise LocalProtocolError(
                "refusing to publish an invalid value", code="dht.invalid_value"
            )
        protocol = self.protocol
        target = Node(key)
        nearest = protocol.router.find_neighbors(target)
        nodes = (
            await NodeSpiderCrawl(
                protocol, target, nearest, self.config.ksize, self.config.alpha
            ).find()
            if nearest
            else []
        )
        stored = 0
        farthest = max((n.distance_to(target) for n in nodes), default=None)
        close = farthest is None or self.node.distance_to(target) < farthest
        if close and not self.config.client_only:  # keep a copy only if we are among the closest
            stored += self.storage.offer(key, value, LOCAL_SOURCE)
        answers = await asyncio.gather(*(protocol.call_store(n, key, value) for n in nodes))
        return stored + sum(1 for ok, accepted in answers if ok and accepted is True)

    async def get(self, key: bytes) -> bytes | None:
        """The newest valid value for ``key`` among our copy and the closest nodes' answers."""
        if type(key) is not bytes or len(key) != NODE_ID_SIZE:
            raise LocalProtocolError("a DHT key is 20 bytes", code="dht.bad_key")
        protocol = self.protocol
        target = Node(key)
        best = self.storage.accepted(key)
        nearest = protocol.router.find_neighbors(target)
        if nearest:
            crawl = _BestValueCrawl(protocol, target, nearest, self.config.ksize, self.config.alpha)
            found = await crawl.find()
            if found is not None and newer(found, best):
                best = found
            if best is not None:
                for node in crawl.stale_peers():
                    protocol.spawn(protocol.call_store(node, key, best.value))
        return None if best is None else best.value

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_interval)
            try:
                await self.refresh()
            except (PeerlineError, OSError) as exc:  # keep refreshing next time
                _log.warning("DHT refresh failed: %s", exc)

    async def refresh(self) -> None:
        """Refresh lonely buckets, then republish values not re-confirmed for a while."""
        protocol = self.protocol
        crawls = []
        for node_id in protocol.get_refresh_ids():
            target = Node(node_id)
            nearest = protocol.router.find_neighbors(target, self.config.alpha)
            crawls.append(
                NodeSpiderCrawl(
                    protocol, target, nearest, self.config.ksize, self.config.alpha
                ).find()
            )
        await asyncio.gather(*crawls)
        for key, value in self.storage.iter_older_than(self.config.republish_after):
            try:
                await self.publish(key, value)
            except (LocalProtocolError, RemoteProtocolError):
                continue  # expired since: storage drops it
