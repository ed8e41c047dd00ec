"""The control API of a node: operations, their argument checks, and the unix control socket.

Every CLI command other than ``init``/``id``/``run`` is one *operation* here. An operation is
an ``async`` function of an :class:`Api` (the store-backed contacts and history, plus the
running :class:`~node.node.Node` or ``None``) and validated JSON arguments; it returns a JSON
object. The same function runs in two places:

- inside the daemon, behind the control socket ``HOME/control.sock`` (mode 0600, JSON lines:
  one request ``{"op": NAME, "args": {...}}`` per line, one response line
  ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": CODE, "fault": ..,
  "message": ..}``);
- in the CLI process when no node runs, on the store directly: operations that only read or
  queue work offline (a message sent then waits in the outbox); the ones marked ``network``
  fail with ``node.not_running``.

Bounds: a request line is at most :data:`MAX_LINE` bytes; at most :data:`MAX_CLIENTS`
connections are served at once (more are closed at once); every argument is type- and
range-checked before use. ``events`` turns its connection into a stream of event lines
(bounded queue, see ``Node.subscribe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.contacts import Contacts, Target
from node.crypto import Rng, random_bytes
from node.errors import (
    LocalProtocolError,
    NodeNotRunningError,
    PeerlineError,
    RemoteProtocolError,
    UsageError,
)
from node.history import MAX_PAGE, History, Status
from node.identity import PeerId
from node.messaging import DEFAULT_LIFETIME, check_text, check_ttl, new_message_id
from node.node import Node
from node.store import Store

__all__ = [
    "MAX_CLIENTS",
    "MAX_LINE",
    "OPERATIONS",
    "SOCKET_FILE",
    "Api",
    "ControlServer",
    "call",
    "events",
    "run_offline",
]

SOCKET_FILE = "control.sock"
MAX_LINE = 64 * 1024
MAX_CLIENTS = 32
Args = dict[str, Any]
Result = dict[str, Any]


@dataclass(slots=True)
class Api:
    """What operations work with: ``node`` is ``None`` when running offline on the store."""

    store: Store
    contacts: Contacts
    history: History
    node: Node | None
    clock: Callable[[], float] = time.time
    rng: Rng = random_bytes

    def require_node(self) -> Node:
        if self.node is None:
            raise NodeNotRunningError("node not running (start it with `peerline run`)")
        return self.node


# --------------------------------------------------------------------------- argument checks


def _str(args: Args, key: str, *, max_len: int = 256, optional: bool = False) -> str:
    value = args.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or len(value) > max_len:
        raise UsageError(f"argument {key!r} must be a string", code="control.bad_args")
    return value


def _num(args: Args, key: str, default: float | None) -> float | None:
    value = args.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"argument {key!r} must be a number", code="control.bad_args")
    return float(value)


def _bool(args: Args, key: str) -> bool:
    value = args.get(key)
    if not isinstance(value, bool):
        raise UsageError(f"argument {key!r} must be true or false", code="control.bad_args")
    return value


def _limit(args: Args, default: int = 50) -> int:
    value = _num(args, "limit", default)
    if value is None or value != int(value) or not 1 <= value <= MAX_PAGE:
        raise UsageError(f"--limit must be 1..{MAX_PAGE}", code="usage.bad_limit")
    return int(value)


async def _peer(api: Api, args: Args, key: str = "peer") -> Target:
    return await api.contacts.resolve(_str(args, key, max_len=4096))


# --------------------------------------------------------------------------- operations


async def _send(api: Api, args: Args) -> Result:
    target = await _peer(api, args, "to")
    text = check_text(_str(args, "text", max_len=MAX_LINE))
    ttl = check_ttl(_num(args, "ttl", None))
    if target.invite is not None and target.peer_id != api.contacts.own:
        existing = await api.contacts.get(target.peer_id)
        if existing is None:
            await api.contacts.add(target, alias=None, name=None, now=api.clock())
    if api.node is not None:
        message_id = await api.node.send(target.peer_id, text, ttl=ttl)
    else:
        contact = await api.contacts.get(target.peer_id)
        if contact is not None and contact.blocked:
            raise UsageError("recipient is blocked (unblock first)", code="contact.blocked")
        message_id = new_message_id(api.rng)
        ops = api.history.queue_ops(
            target.peer_id, message_id, text, now=api.clock(), ttl=ttl, lifetime=DEFAULT_LIFETIME
        )
        await api.store.write(ops)
    state = "delivered" if target.peer_id == api.contacts.own else "queued"
    return {"id": message_id.hex(), "state": state}


async def _history(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    before = _str(args, "before", max_len=32, optional=True) or None
    messages, cursor = await api.history.page(target.peer_id, limit=_limit(args), before=before)
    return {"messages": [m.to_json() for m in messages], "next": cursor}


async def _read(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    if api.node is not None:
        return {"read": await api.node.mark_read(target.peer_id)}
    info = await api.history.conversation(target.peer_id)
    if info is None:
        return {"read": 0}
    ids = await api.history.unread(target.peer_id)
    await api.store.write(api.history.read_ops(ids, info))
    return {"read": len(ids)}


async def _search(api: Api, args: Args) -> Result:
    found = await api.history.search(_str(args, "text", max_len=512), limit=_limit(args))
    return {"messages": [m.to_json() for m in found]}


async def _export(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    messages = await api.history.all_messages(target.peer_id)
    return {"peer": target.peer_id.text(), "messages": [m.to_json() for m in messages]}


async def _delete(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    return {"deleted": await api.history.delete(target.peer_id)}


async def _keep_history(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    keep = _bool(args, "keep")
    await api.history.set_keep_history(target.peer_id, keep, api.clock())
    return {"peer": target.peer_id.text(), "keep_history": keep}


async def _read_receipts(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    enabled = _bool(args, "enabled")
    await api.contacts.set_read_receipts(target.peer_id, enabled)
    return {"peer": target.peer_id.text(), "read_receipts": enabled}


async def _contacts_add(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    alias = _str(args, "alias", max_len=64, optional=True) or None
    contact = await api.contacts.add(target, alias=alias, name=None, now=api.clock())
    return contact.to_json()


async def _contacts_list(api: Api, args: Args) -> Result:
    return {"contacts": [c.to_json() for c in await api.contacts.list()]}


async def _contacts_remove(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    await api.contacts.remove(target.peer_id)
    return {"removed": target.peer_id.text()}


async def _block(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    blocked = _bool(args, "blocked")
    await api.contacts.set_blocked(target.peer_id, blocked, now=api.clock())
    if api.node is not None:
        await api.node.refresh_blocked()
    return {"peer": target.peer_id.text(), "blocked": blocked}


async def _policy(api: Api, args: Args) -> Result:
    value = _str(args, "value", max_len=16, optional=True)
    if value:
        await api.contacts.set_policy(value)
    return {"policy": await api.contacts.policy()}


async def _visibility(api: Api, args: Args) -> Result:
    value = _str(args, "value", max_len=16, optional=True)
    if value:
        await api.contacts.set_visibility(value)
    published = await api.node.publish_visibility() if api.node is not None and value else 0
    return {"visibility": await api.contacts.visibility(), "servers_updated": published}


async def _requests_list(api: Api, args: Args) -> Result:
    requests = await api.history.requests()
    return {
        "requests": [
            {
                "peer": r.peer_id.text(),
                "count": r.count,
                "first_text": r.first_text,
                "first_at": r.first_at,
            }
            for r in requests
        ]
    }


async def _request_answer(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    accept = _bool(args, "accept")
    info = await api.history.require(target.peer_id)
    if info.status != "request":
        raise UsageError("no pending request from this peer", code="request.none")
    status: Status = "accepted" if accept else "declined"
    await api.store.write([api.history.status_op(target.peer_id, status)])
    return {"peer": target.peer_id.text(), "status": status}


async def _resolve(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    contact = await api.contacts.get(target.peer_id)
    return {
        "peer_id": target.peer_id.text(),
        "label": await api.contacts.label(target.peer_id),
        "contact": contact is not None,
    }


async def _status(api: Api, args: Args) -> Result:
    return await api.require_node().status()


async def _invite(api: Api, args: Args) -> Result:
    return {"invite": api.require_node().invite()}


async def _typing(api: Api, args: Args) -> Result:
    target = await _peer(api, args)
    return {"sent": await api.require_node().typing(target.peer_id, _bool(args, "active"))}


async def _directory(api: Api, args: Args) -> Result:
    node = api.require_node()
    return {"results": await node.directory_search(_str(args, "text"), _limit(args, 20))}


Operation = Callable[[Api, Args], Awaitable[Result]]
OPERATIONS: dict[str, Operation] = {
    "send": _send,
    "history": _history,
    "read": _read,
    "search": _search,
    "export": _export,
    "delete": _delete,
    "keep_history": _keep_history,
    "read_receipts": _read_receipts,
    "contacts.add": _contacts_add,
    "contacts.list": _contacts_list,
    "contacts.remove": _contacts_remove,
    "contacts.block": _block,
    "policy": _policy,
    "visibility": _visibility,
    "requests.list": _requests_list,
    "requests.answer": _request_answer,
    "resolve": _resolve,
    "status": _status,
    "invite": _invite,
    "typing": _typing,
    "directory.search": _directory,
}


async def dispatch(api: Api, request: object) -> Result:
    """Validate one request object and run its operation."""
    if not isinstance(request, dict):
        raise UsageError("a request is a JSON object", code="control.bad_request")
    op, args = request.get("op"), request.get("args", {})
    if not isinstance(op, str) or op not in OPERATIONS or not isinstance(args, dict):
        raise UsageError(f"unknown operation {str(op)[:40]!r}", code="control.bad_request")
    return await OPERATIONS[op](api, args)


async def run_offline(store: Store, own: PeerId, op: str, args: Args) -> Result:
    """Run an operation on the store of a node that is not running."""
    api = Api(store, Contacts(store, own), History(store, own), None)
    return await dispatch(api, {"op": op, "args": args})


# --------------------------------------------------------------------------- socket server


def _error(err: PeerlineError) -> Result:
    return {"ok": False, **err.to_dict()}


def _line(obj: Result) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


class ControlServer:
    """Serves :data:`OPERATIONS` of a running node on ``HOME/control.sock``."""

    def __init__(self, node: Node, home: Path) -> None:
        self.path = home / SOCKET_FILE
        self._api = Api(node.store, node.contacts, node.history, node, node.clock, node.rng)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a crashed node (the home lock is ours)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_LINE
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_CLIENTS:
            writer.close()
            return
        self._clients.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away or sent an over-long line
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            try:
                request = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                writer.write(_line(_error(UsageError("invalid JSON", code="control.bad_json"))))
                await writer.drain()
                continue
            if isinstance(request, dict) and request.get("op") == "events":
                await self._stream_events(writer)
                return
            try:
                reply = {"ok": True, "result": await dispatch(self._api, request)}
            except PeerlineError as err:
                reply = _error(err)
            finally:
                self._api.require_node().invalidate()
            writer.write(_line(reply))
            await writer.drain()

    async def _stream_events(self, writer: asyncio.StreamWriter) -> None:
        node = self._api.require_node()
        queue = node.subscribe()
        try:
            writer.write(_line({"ok": True, "result": {}}))
            await writer.drain()
            while (event := await queue.get()) is not None:
                writer.write(_line(event))
                await writer.drain()
        finally:
            node.unsubscribe(queue)


# --------------------------------------------------------------------------- client


async def _connect(home: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(str(home / SOCKET_FILE), limit=16 * MAX_LINE)
    except (FileNotFoundError, ConnectionRefusedError):
        raise NodeNotRunningError("node not running (start it with `peerline run`)") from None


async def call(home: Path, op: str, args: Args, *, timeout: float = 30.0) -> Result:
    """Run ``op`` on the running node; raises :class:`NodeNotRunningError` if none answers."""
    reader, writer = await _connect(home)
    try:
        writer.write(_line({"op": op, "args": args}))
        await writer.drain()
        async with asyncio.timeout(timeout):
            line = await reader.readline()
    finally:
        writer.close()
    if not line:
        raise NodeNotRunningError("the node closed the control connection")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise _remote_error(reply)
    result = reply["result"]
    assert isinstance(result, dict)
    return result


def _remote_error(reply: dict[str, Any]) -> PeerlineError:
    """The node's error, rebuilt with its code and fault so the CLI exits the same way."""
    fault = reply.get("fault")
    cls: type[PeerlineError] = LocalProtocolError if fault == "local" else RemoteProtocolError
    if reply.get("error") == "node.not_running":
        cls = NodeNotRunningError
    return cls(str(reply.get("message", "error")), code=str(reply.get("error", "error")))


async def events(home: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open an event stream: returns the reader (one JSON event per line) and the writer."""
    reader, writer = await _connect(home)
    writer.write(_line({"op": "events", "args": {}}))
    await writer.drain()
    line = await reader.readline()
    if not line or not json.loads(line).get("ok"):
        writer.close()
        raise NodeNotRunningError("the node refused the event stream")
    return reader, writer
