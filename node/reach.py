"""Reaching a peer: its live connection, a dial to every address we know, or its mailbox.

Addresses come from the contact's invite hints, the discovery sources of the moment (mDNS, the
DHT) and the rendezvous servers; each source is bounded by :data:`NETWORK_TIMEOUT`, so one dead
source delays a dial but never hangs it. A failed dial is not retried for ``retry_after``
seconds unless the peer is seen again (:meth:`Reach.peer_seen`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from node import envelope, wire
from node.connection import Connection
from node.contacts import Contacts
from node.crypto import Rng
from node.errors import PeerlineError
from node.identity import PeerId
from node.lookup import AddressLookup
from node.messaging import parse_hostport
from node.transport import Transport

__all__ = ["NETWORK_TIMEOUT", "Mailboxes", "Reach"]

log = logging.getLogger(__name__)

NETWORK_TIMEOUT = 5.0
"""Bound on one network step (a send, a request, a deposit, one lookup source)."""
_DIAL_TIMEOUT = 3.0


class Mailboxes(Protocol):
    """What reaching a peer needs from a rendezvous client: deposits and address lookups."""

    async def deposit(self, envelope: bytes) -> object: ...

    async def addresses(self, peer: PeerId) -> list[tuple[str, int]]: ...


class Reach:
    """Connections and mailbox deposits towards peers, for one node (``peer_id``).

    ``lookups()`` gives the discovery sources of the moment (they start after the node is
    built); sealed envelopes live ``lifetime`` seconds.
    """

    def __init__(
        self,
        peer_id: PeerId,
        transport: Transport,
        clients: Sequence[Mailboxes],
        contacts: Contacts,
        *,
        lookups: Callable[[], list[AddressLookup]],
        retry_after: float,
        lifetime: float,
        clock: Callable[[], float],
        rng: Rng,
    ) -> None:
        self.peer_id = peer_id
        self.transport = transport
        self.clients = clients
        self.contacts = contacts
        self._lookups = lookups
        self._retry_after = retry_after
        self._lifetime = lifetime
        self.clock = clock
        self.rng = rng
        self._dial_failed: dict[PeerId, float] = {}

    def peer_seen(self, peer: PeerId) -> None:
        """``peer`` was just discovered or connected: the next :meth:`connect` dials again."""
        self._dial_failed.pop(peer, None)

    async def connect(self, peer: PeerId) -> Connection | None:
        """The live connection to ``peer``, dialing its known addresses; ``None`` if offline."""
        conn = self.transport.connection(peer)
        if conn is not None:
            return conn
        failed = self._dial_failed.get(peer)
        if failed is not None and self.clock() - failed < self._retry_after:
            return None
        addresses = await self.addresses(peer)
        try:
            async with asyncio.timeout(_DIAL_TIMEOUT):
                return await self.transport.dial(peer, addresses)
        except (PeerlineError, OSError, TimeoutError):
            self._dial_failed[peer] = self.clock()
            return None

    async def addresses(self, peer: PeerId) -> list[tuple[str, int]]:
        """Every address known for ``peer``: its contact hints, discovery, rendezvous servers."""
        found: list[tuple[str, int]] = []
        contact = await self.contacts.get(peer)
        if contact is not None:
            found += [parse_hostport(text) for text in contact.addresses]
        for source in self._lookups():
            with contextlib.suppress(PeerlineError, OSError, TimeoutError):
                async with asyncio.timeout(NETWORK_TIMEOUT):
                    for record in await source.lookup(peer):
                        found += record.addresses
        for client in self.clients:
            with contextlib.suppress(PeerlineError, OSError, TimeoutError):
                async with asyncio.timeout(NETWORK_TIMEOUT):
                    found += await client.addresses(peer)
        return list(dict.fromkeys(found))

    async def deposit(self, sealed: bytes) -> bool:
        """Leave a sealed envelope on the first rendezvous server that takes it."""
        for client in self.clients:
            try:
                async with asyncio.timeout(NETWORK_TIMEOUT):
                    await client.deposit(sealed)
                return True
            except (PeerlineError, OSError, TimeoutError) as exc:
                log.info("deposit failed: %s", exc)
        return False

    async def send_frame(self, peer: PeerId, frame: wire.Message) -> None:
        """Best effort: the live (or a fresh) connection, else the peer's mailbox."""
        conn = await self.connect(peer)
        if conn is not None:
            with contextlib.suppress(PeerlineError, OSError):
                await conn.send(frame, timeout=NETWORK_TIMEOUT)
                return
        expires = int(self.clock() + self._lifetime)
        sealed = envelope.seal(
            peer, self.peer_id, wire.encode_frame(frame), expires=expires, rng=self.rng
        )
        await self.deposit(sealed)
