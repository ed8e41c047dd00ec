"""Persistence of E2EE state (sessions, prekeys) through the store's single writer.

The pure modules (:mod:`node.session`, :mod:`node.prekeys`) return new immutable states; this
module turns them into write operations so the caller can put them in **one unit** with the
rows they belong to, e.g. the outbox row of a message:

    session, wire_bytes = node.session.encrypt(session, plaintext)
    await store.write([session_op(session, now), outbox_insert])   # persist ...
    transport.send(wire_bytes)                                      # ... before send

so after a ``kill -9`` the reloaded session never reuses a message number and a message the
user saw as queued is in the outbox. Erasure: the store runs with ``secure_delete=ON``, so
overwritten or deleted state is zeroed in the database file; :meth:`SessionStore.erase_session`
and :meth:`SessionStore.purge` also checkpoint the WAL (TRUNCATE) so no old copy of a key
stays in the WAL file either. State bytes never appear in logs or errors: a damaged row
raises ``session_store.corrupt`` naming only the peer.
"""

from __future__ import annotations

from node.errors import RemoteProtocolError, StorageError
from node.identity import PeerId
from node.prekeys import PrekeyState
from node.session import Session
from node.store import Store, WriteOp

__all__ = [
    "SessionStore",
    "delete_session_op",
    "prekeys_op",
    "session_op",
]

_UPSERT_SESSION = (
    "INSERT INTO sessions (peer_id, state, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (peer_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
)
_UPSERT_PREKEYS = (
    "INSERT INTO prekeys (id, state, updated_at) VALUES (1, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
)


def session_op(session: Session, now: float) -> WriteOp:
    """The write that stores ``session`` (insert or replace) for its peer."""
    return (_UPSERT_SESSION, (session.peer.key, session.to_bytes(), now))


def prekeys_op(prekeys: PrekeyState, now: float) -> WriteOp:
    """The write that stores our prekey state (one row)."""
    return (_UPSERT_PREKEYS, (prekeys.to_bytes(), now))


def delete_session_op(peer: PeerId) -> WriteOp:
    return ("DELETE FROM sessions WHERE peer_id = ?", (peer.key,))


class SessionStore:
    """Loads and saves E2EE state in an open :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def load_session(self, peer: PeerId) -> Session | None:
        row = await self._store.fetch_one(
            "SELECT state FROM sessions WHERE peer_id = ?", (peer.key,)
        )
        if row is None:
            return None
        try:
            return Session.from_bytes(bytes(row[0]))
        except RemoteProtocolError:
            raise StorageError(
                f"stored session for {peer.short()} is damaged", code="session_store.corrupt"
            ) from None

    async def load_prekeys(self) -> PrekeyState | None:
        row = await self._store.fetch_one("SELECT state FROM prekeys WHERE id = 1")
        if row is None:
            return None
        try:
            return PrekeyState.from_bytes(bytes(row[0]))
        except RemoteProtocolError:
            raise StorageError("stored prekeys are damaged", code="session_store.corrupt") from None

    async def save(
        self,
        *,
        now: float,
        session: Session | None = None,
        prekeys: PrekeyState | None = None,
        extra: tuple[WriteOp, ...] = (),
    ) -> None:
        """Store the given states and ``extra`` rows in one atomic unit."""
        ops = list(extra)
        if session is not None:
            ops.append(session_op(session, now))
        if prekeys is not None:
            ops.append(prekeys_op(prekeys, now))
        await self._store.write(ops)

    async def erase_session(self, peer: PeerId) -> bool:
        """Delete the session with ``peer`` and checkpoint; returns whether the WAL copy is
        gone too (``False`` if a reader kept the checkpoint from completing: call
        :meth:`purge` later)."""
        await self._store.write([delete_session_op(peer)])
        return await self.purge()

    async def purge(self) -> bool:
        """Checkpoint the WAL (TRUNCATE) so overwritten keys leave the WAL file as well."""
        return await self._store.checkpoint()
