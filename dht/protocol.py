"""kademlia's RPC protocol, hardened: every byte from the network is checked before use.

Upstream ``rpcudp``/``kademlia`` trust their peers completely: an odd datagram raises inside a
detached task, any STORE is kept, node lists are turned into ``Node`` objects unchecked, and
``welcome_if_new`` hashes stored keys a second time. :class:`HardenedProtocol` overrides:

- datagram intake: oversized datagrams are dropped; decode errors and malformed requests are
  dropped silently (counted in :attr:`HardenedProtocol.dropped`), never raised in a task;
- each ``rpc_*`` handler checks its arguments' types and sizes; ``rpc_store`` stores through
  :meth:`ValidatedStorage.offer` and answers False when it refuses;
- each ``call_*`` checks the answer's shape (node ids 20 bytes, IP literals, ports, at most
  ``ksize`` contacts, values within the size cap); a malformed answer counts as no answer;
- **client-only** mode: we identify ourselves with an empty node id, which honest nodes answer
  without adding us to their routing tables, and we ignore incoming requests;
- all tasks we start are tracked and cancelled by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import umsgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from dht.storage import ValidatedStorage

__all__ = ["NODE_ID_SIZE", "HardenedProtocol", "RpcResult"]

NODE_ID_SIZE = 20
_MSG_ID_SIZE = 20
_MAX_DATAGRAM = 8192 + 64
_CLIENT_ID = b""
_WELCOMED = 4096

RpcResult = tuple[bool, Any]
"""What rpcudp futures resolve to: ``(answered, payload)``."""
_NO_ANSWER: RpcResult = (False, None)


def _is_node_id(value: object) -> bool:
    return type(value) is bytes and len(value) == NODE_ID_SIZE


def _contact(value: object) -> tuple[bytes, str, int] | None:
    """A ``(node_id, ip, port)`` triple from an answer, or None if malformed."""
    if not isinstance(value, list | tuple) or len(value) != 3:
        return None
    node_id, ip, port = value
    if not _is_node_id(node_id) or type(ip) is not str or type(port) is not int:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.is_unspecified or address.is_multicast or not 0 < port < 65536:
        return None
    return (node_id, ip, port)


class HardenedProtocol(KademliaProtocol):  # type: ignore[misc]
    """A :class:`KademliaProtocol` that validates everything; see the module docstring."""

    def __init__(
        self,
        source_node: Node,
        storage: ValidatedStorage,
        ksize: int,
        *,
        rpc_timeout: float,
        client_only: bool,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = rpc_timeout
        self.client_only = client_only
        self.storage: ValidatedStorage = storage
        self._tasks: set[asyncio.Task[Any]] = set()
        self.dropped: Counter[str] = Counter()
        self._welcomed: OrderedDict[bytes, None] = OrderedDict()

    # ------------------------------------------------------------------ lifecycle

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task owned by this protocol (cancelled by :meth:`close`)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Cancel our tasks and every outstanding RPC, and close the socket."""
        for future, timer in list(self._outstanding.values()):
            timer.cancel()
            if not future.done():
                future.set_result(_NO_ANSWER)
        self._outstanding.clear()
        for task in list(self._tasks):
            task.cancel()
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ intake

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > _MAX_DATAGRAM or len(data) < 1 + _MSG_ID_SIZE + 1:
            self.dropped["size"] += 1
            return
        self._handle_datagram(data, addr)

    def _handle_datagram(self, datagram: bytes, address: tuple[str, int]) -> None:
        """Handled synchronously: a flood of datagrams cannot pile up tasks."""
        kind, msg_id = datagram[:1], datagram[1 : 1 + _MSG_ID_SIZE]
        try:
            data = umsgpack.unpackb(datagram[1 + _MSG_ID_SIZE :])
        except Exception:  # umsgpack raises many unrelated types on garbage
            self.dropped["decode"] += 1
            return
        if kind == b"\x01":
            if msg_id in self._outstanding:
                self._accept_response(msg_id, data, address)
            return
        if kind != b"\x00" or self.client_only:
            self.dropped["request"] += 1
            return
        self._handle_request(msg_id, data, address)

    def _handle_request(self, msg_id: bytes, data: object, address: tuple[str, int]) -> None:
        handlers: dict[str, tuple[Callable[..., object], int]] = {
            "ping": (self.rpc_ping, 1),
            "store": (self.rpc_store, 3),
            "find_node": (self.rpc_find_node, 2),
            "find_value": (self.rpc_find_value, 2),
        }
        if not isinstance(data, list) or len(data) != 2 or not isinstance(data[1], list | tuple):
            self.dropped["request"] += 1
            return
        name, args = data
        handler = handlers.get(name) if type(name) is str else None
        if handler is None or len(args) != handler[1]:
            self.dropped["request"] += 1
            return
        response = handler[0](address, *args)
        if response is None:
            self.dropped["request"] += 1
            return
        if self.transport is not None:
            self.transport.sendto(b"\x01" + msg_id + umsgpack.packb(response), address)

    # ------------------------------------------------------------------ handlers

    def _admit(self, sender: tuple[str, int], nodeid: object) -> bool:
        """False if the node id is malformed; a serving sender is welcomed into the table."""
        if nodeid == _CLIENT_ID:
            return True
        if not _is_node_id(nodeid):
            return False
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        return True

    def rpc_ping(self, sender: tuple[str, int], nodeid: object) -> bytes | None:
        return self._wire_id() if self._admit(sender, nodeid) else None

    def rpc_store(
        self, sender: tuple[str, int], nodeid: object, key: object, value: object
    ) -> bool | None:
        if not self._admit(sender, nodeid):
            return None
        return self.storage.offer(key, value, sender[0])

    def rpc_find_node(
        self, sender: tuple[str, int], nodeid: object, key: object
    ) -> list[tuple[bytes, str, int]] | None:
        if not self._admit(sender, nodeid) or not _is_node_id(key):
            return None
        exclude = Node(nodeid, sender[0], sender[1]) if _is_node_id(nodeid) else None
        neighbors = self.router.find_neighbors(Node(key), exclude=exclude)
        return [tuple(n) for n in neighbors]

    def rpc_find_value(
        self, sender: tuple[str, int], nodeid: object, key: object
    ) -> dict[str, bytes] | list[tuple[bytes, str, int]] | None:
        if not _is_node_id(key):
            return None
        value = self.storage.get(key)  # type: ignore[arg-type]
        if value is None:
            return self.rpc_find_node(sender, nodeid, key)
        return {"value": value} if self._admit(sender, nodeid) else None

    def welcome_if_new(self, node: Node) -> None:
        """Add a contact; hand it the values it is now among the closest to (keys hashed once).

        Upstream re-runs this for every message from a contact whose bucket is full (it stays
        "new"), costing a neighbour search per stored key each time: we welcome a node id at
        most once while it is among the last :data:`_WELCOMED` we welcomed.
        """
        if not self.router.is_new_node(node):
            return
        if node.id in self._welcomed:
            self._welcomed.move_to_end(node.id)
            self.router.add_contact(node)
            return
        self._welcomed[node.id] = None
        if len(self._welcomed) > _WELCOMED:
            self._welcomed.popitem(last=False)
        for key, value in self.storage:
            keynode = Node(key)
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                new_node_close = node.distance_to(keynode) < neighbors[-1].distance_to(keynode)
                this_closest = self.source_node.distance_to(keynode) < neighbors[0].distance_to(
                    keynode
                )
            if not neighbors or (new_node_close and this_closest):
                self.spawn(self.call_store(node, key, value))
        self.router.add_contact(node)

    # ------------------------------------------------------------------ calls

    def _wire_id(self) -> bytes:
        return _CLIENT_ID if self.client_only else bytes(self.source_node.id)

    async def _call(self, method: str, node: Node, *args: object) -> Any:
        future = getattr(self, method)((node.ip, node.port), self._wire_id(), *args)
        return await future

    async def ping_address(self, host: str, port: int) -> bytes | None:
        """The node id answering at an address (bootstrap), or None; no routing changes."""
        answered, node_id = await self.ping((host, port), self._wire_id())
        return node_id if answered and _is_node_id(node_id) else None

    def _answered(self, result: RpcResult, node: Node, valid: bool) -> RpcResult:
        """Feed the routing table; a malformed answer counts as no answer."""
        if result[0] and not valid:
            self.dropped["answer"] += 1
            result = _NO_ANSWER
        self.handle_call_response(result, node)
        return result

    def _contacts(self, payload: object) -> list[tuple[bytes, str, int]] | None:
        if not isinstance(payload, list) or len(payload) > self.router.ksize:
            return None
        contacts = [_contact(item) for item in payload]
        return None if None in contacts else [c for c in contacts if c is not None]

    async def call_ping(self, node_to_ask: Node) -> RpcResult:
        result: RpcResult = await self._call("ping", node_to_ask)
        return self._answered(result, node_to_ask, _is_node_id(result[1]))

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> RpcResult:
        result: RpcResult = await self._call("store", node_to_ask, key, value)
        return self._answered(result, node_to_ask, type(result[1]) is bool)

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> RpcResult:
        result: RpcResult = await self._call("find_node", node_to_ask, node_to_find.id)
        contacts = self._contacts(result[1])
        return self._answered((result[0], contacts), node_to_ask, contacts is not None)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> RpcResult:
        result: RpcResult = await self._call("find_value", node_to_ask, node_to_find.id)
        payload = result[1]
        if isinstance(payload, dict):
            value = payload.get("value")
            limit = self.storage.limits.max_value_size
            valid = len(payload) == 1 and isinstance(value, bytes) and len(value) <= limit
            return self._answered(result, node_to_ask, valid)
        contacts = self._contacts(payload)
        return self._answered((result[0], contacts), node_to_ask, contacts is not None)
