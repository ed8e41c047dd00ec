"""The table of authenticated connections: at most one per peer (asyncio, no aioquic).

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
from collections.abc import Callable

from node.channel import CloseCode
from node.connection import Connection
from node.identity import PeerId

__all__ = ["PeerTable"]

log = logging.getLogger(__name__)


class PeerTable:
    """Open authenticated connections by peer, with the duplicate rule and callbacks."""

    def __init__(self, local: PeerId) -> None:
        self._local = local
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
        new_dialer = self._local if new.is_dialer else new.peer_id
        old_dialer = self._local if old.is_dialer else old.peer_id
        assert new_dialer is not None and old_dialer is not None
        if new_dialer == old_dialer:
            return True
        return new_dialer.key < old_dialer.key
