"""Peers (asyncio, no aioquic): the table of authenticated connections, at most one per peer,
and the dialing policy (addresses in turn, rounds with backoff, reconnection).

Two connections to the same peer appear when both peers dial each other at once, or when a
peer reconnects while its old connection still looks alive to us. Both sides apply the same
deterministic rule, so they keep the same one without talking about it:

- dialed by different sides (a simultaneous dial): keep the one dialed by the **smaller**
  PeerId (byte order of the keys);
- dialed by the same side twice (e.g. the peer restarted): keep the **newer** one.

The loser is closed with :attr:`~node.channel.CloseCode.DUPLICATE`; a dial that lost the race
gets the winner (:meth:`PeerTable.wait_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from node.backoff import Backoff
from node.channel import CloseCode
from node.config import TransportConfig
from node.connection import Connection
from node.crypto import Rng
from node.errors import (
    AuthenticationError,
    DialError,
    LimitExceededError,
    LocalProtocolError,
    PeerlineError,
)
from node.identity import PeerId

__all__ = ["Address", "Dialer", "PeerTable"]

Address = tuple[str, int]
"""An IP address (text) and UDP port."""

log = logging.getLogger(__name__)


class PeerTable:
    """Open authenticated connections by peer, with the duplicate rule and callbacks."""

    def __init__(self, local: PeerId) -> None:
        self.local = local
        self._by_peer: dict[PeerId, Connection] = {}
        self._waiters: dict[PeerId, list[asyncio.Future[None]]] = {}
        self._callbacks: list[Callable[[Connection], None]] = []

    def on_connection(self, callback: Callable[[Connection], None]) -> None:
        self._callbacks.append(callback)

    def get(self, peer: PeerId) -> Connection | None:
        """The open connection to ``peer``, if any."""
        conn = self._by_peer.get(peer)
        return conn if conn is not None and conn.is_open else None

    def open_connections(self) -> list[Connection]:
        return [conn for conn in self._by_peer.values() if conn.is_open]

    def add(self, conn: Connection) -> bool:
        """Register a newly authenticated connection, closing the loser of a duplicate pair.

        Returns whether ``conn`` was kept (then its ``ready`` is resolved, waiters and
        ``on_connection`` callbacks have run).
        """
        peer = conn.peer_id
        assert peer is not None
        existing = self.get(peer)
        if existing is not None and existing is not conn:
            loser = existing if self._keeps(conn, existing) else conn
            loser.abort(CloseCode.DUPLICATE, "transport.duplicate: one connection per peer")
            if loser is conn:
                return False
        self._by_peer[peer] = conn
        conn.ready.set_result(None)
        for waiter in self._waiters.pop(peer, []):
            if not waiter.done():
                waiter.set_result(None)
        for callback in self._callbacks:
            try:
                callback(conn)
            except Exception:
                log.exception("on_connection callback failed")
        return True

    def remove(self, conn: Connection) -> None:
        if conn.peer_id is not None and self._by_peer.get(conn.peer_id) is conn:
            del self._by_peer[conn.peer_id]

    async def wait_for(self, peer: PeerId, timeout: float) -> Connection | None:
        """The open connection to ``peer``, waiting up to ``timeout`` for one to be added."""
        if self.get(peer) is None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(peer, []).append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        return self.get(peer)

    def _keeps(self, new: Connection, old: Connection) -> bool:
        """Whether ``new`` wins against ``old`` (both to the same peer)."""
        new_dialer = self.local if new.is_dialer else new.peer_id
        old_dialer = self.local if old.is_dialer else old.peer_id
        assert new_dialer is not None and old_dialer is not None
        if new_dialer == old_dialer:
            return True
        return new_dialer.key < old_dialer.key


class Dialer:
    """How a node reaches a peer: shared dial attempts, backoff between rounds, reconnection.

    ``open_client(peer, address)`` starts one QUIC connection (the transport's job) and returns
    its :class:`Connection`, whose ``ready`` resolves once both sides are authenticated.
    """

    def __init__(
        self,
        table: PeerTable,
        open_client: Callable[[PeerId, Address], Connection],
        config: TransportConfig,
        backoff: Backoff,
        rng: Rng,
    ) -> None:
        self._table = table
        self._open_client = open_client
        self._config = config
        self._backoff = backoff
        self._rng = rng
        self._local = table.local
        self._dials: dict[PeerId, asyncio.Task[Connection]] = {}
        self._closing = False

    def close(self) -> list[asyncio.Task[Connection]]:
        """Stop: cancel every dial in progress and return their tasks (to be awaited)."""
        self._closing = True
        tasks = list(self._dials.values())
        for task in tasks:
            task.cancel()
        return tasks

    async def dial(self, peer: PeerId, addresses: Sequence[Address]) -> Connection:
        """An authenticated connection to ``peer`` (the existing one if open).

        Tries each address in turn, up to ``dial_attempts`` rounds with backoff in between.
        Raises :class:`AuthenticationError` at once if an address answers with another key,
        :class:`DialError` (``dial.refused`` / ``dial.timeout`` / ``dial.failed``, the last
        cause chained) when every attempt failed, :class:`LocalProtocolError` for our own peer id.
        Concurrent dials of one peer share a single attempt.
        """
        if peer == self._local:
            raise LocalProtocolError("a node cannot dial itself", code="dial.self")
        existing = self._table.get(peer)
        if existing is not None:
            return existing
        if not addresses:
            raise DialError(f"no address for {peer.short()}", code="dial.no_address")
        task = self._dials.get(peer)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._dial(peer, list(addresses)))
            self._dials[peer] = task
            task.add_done_callback(lambda _: self._dials.pop(peer, None))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            caller_cancelled = current is not None and current.cancelling() > 0
            if task.cancelled() and self._closing and not caller_cancelled:
                raise DialError(
                    "the transport closed during the dial", code="dial.cancelled"
                ) from None
            raise

    async def maintain(
        self,
        peer: PeerId,
        addresses: Callable[[], Sequence[Address]],
        on_connected: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        """Keep a connection to ``peer`` until cancelled or the transport closes.

        Each round calls :meth:`dial` with ``addresses()`` (re-read every round, so a caller can
        refresh them), then ``await on_connected(conn)`` (e.g. to register at a rendezvous),
        then waits for the connection to end. Failed rounds, and connections that ended within
        ``idle_timeout``, back off exponentially with jitter; a connection that lasted resets the
        backoff. An :class:`AuthenticationError` (someone else answers) is not retried: it raises.
        Run it as a task you own and cancel it to stop.
        """
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                conn = await self.dial(peer, addresses())
            except AuthenticationError:
                raise
            except PeerlineError as exc:
                if self._closing:
                    return
                log.info("cannot reach %s (%s), retrying", peer.short(), exc.code)
            else:
                started = loop.time()
                if on_connected is not None:
                    await on_connected(conn)
                await conn.wait_closed()
                if loop.time() - started >= self._config.idle_timeout:
                    attempt = 0
            if not self._closing:
                await asyncio.sleep(self._backoff.delay(attempt, self._rng))
                attempt += 1

    async def _dial(self, peer: PeerId, addresses: list[Address]) -> Connection:
        last: PeerlineError | None = None
        for attempt in range(self._config.dial_attempts):
            if attempt:
                await asyncio.sleep(self._backoff.delay(attempt - 1, self._rng))
            for address in addresses:
                try:
                    return await self._connect_once(peer, address)
                except AuthenticationError:
                    raise
                except PeerlineError as exc:
                    last = exc
                existing = self._table.get(peer)
                if existing is not None:
                    return existing
        assert last is not None
        code = "dial.failed"
        if isinstance(last, LimitExceededError):
            code = "dial.refused"
        elif last.code.endswith("timeout"):
            code = "dial.timeout"
        raise DialError(
            f"cannot reach {peer.short()}: {last.code}: {last.message}", code=code
        ) from last

    async def _connect_once(self, peer: PeerId, address: Address) -> Connection:
        conn = self._open_client(peer, address)
        try:
            await asyncio.shield(conn.ready)
        except PeerlineError:
            info = conn.closed.result() if conn.closed.done() else None
            if info is None or info.code != CloseCode.DUPLICATE or info.transport_error:
                raise
            winner = await self._table.wait_for(peer, self._config.handshake_timeout)
            if winner is None:
                raise DialError(
                    f"lost the dial race to {peer.short()}", code="dial.failed"
                ) from None
            return winner
        return self._table.get(peer) or conn
