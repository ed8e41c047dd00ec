"""Many DHT nodes in one process on loopback: for tests, benchmarks and demos.

Nodes join one after another, each bootstrapping from one random earlier node (seeded), the
way a real network grows. Only ``127.0.0.1`` is used.
"""

from __future__ import annotations

import random
import time
from contextlib import AsyncExitStack
from dataclasses import replace

from dht.node import DhtConfig, DhtNode
from dht.values import Validator

__all__ = ["LocalSwarm"]


class LocalSwarm:
    """``async with LocalSwarm(n, validator) as swarm``: ``swarm.nodes`` are started and joined.

    ``join_seconds[i]`` is how long node ``i``'s bootstrap took.
    """

    def __init__(
        self,
        size: int,
        validator: Validator,
        *,
        config: DhtConfig | None = None,
        seed: int = 1,
    ) -> None:
        self.size = size
        self.validator = validator
        self.config = replace(config or DhtConfig(), host="127.0.0.1", port=0, bootstrap=())
        self.nodes: list[DhtNode] = []
        self.join_seconds: list[float] = []
        self._rng = random.Random(seed)
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> LocalSwarm:
        try:
            for _ in range(self.size):
                await self.add()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def add(self, config: DhtConfig | None = None) -> DhtNode:
        """Start one more node (``config`` overrides, e.g. client-only) and join it."""
        seeds = (self._rng.choice(self.nodes).address,) if self.nodes else ()
        base = replace(config or self.config, host="127.0.0.1", port=0, bootstrap=seeds)
        node = DhtNode(base, self.validator, node_id=self._rng.randbytes(20))
        started = time.perf_counter()
        await self._stack.enter_async_context(node)
        self.join_seconds.append(time.perf_counter() - started)
        self.nodes.append(node)
        return node
