"""The rendezvous server's own database (``DIR/rendezvous.db``) through :mod:`node.store`.

What is kept on disk, and why (the server should learn as little as possible):

- ``envelopes``: sealed envelopes until the owner acks them or they expire: mailbox id, size,
  expiry, bytes. No sender, no IP address. ``seq`` keeps deposit order.
- ``invites`` (token *hashes*, uses left, expiry), ``access`` (allowed / banned / known peers):
  access control written by the admin command and by the server (invite uses, known peers).
- ``settings``: the address the server last listened on (for ``rendezvous address``), the mode.
- ``access_version``: bumped by every admin change; the running server polls it and reloads
  the access rules, so an admin command run beside a live server takes effect within one poll.

Presence and directory entries live in memory only: they are refreshed by their owners.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from node.errors import UsageError
from node.mailbox import StoredEnvelope
from node.registry import AccessMode, AccessRules, Invite
from node.store import Store, WriteOp

__all__ = [
    "DB_FILE",
    "LOCK_FILE",
    "MIGRATIONS",
    "access_ops",
    "bump_version",
    "delete_envelopes",
    "insert_envelope_op",
    "invite_op",
    "load_access",
    "load_envelopes",
    "open_db",
    "open_db_file",
    "read_envelopes",
    "read_setting",
    "read_version",
    "serve_lock",
    "set_setting",
]

DB_FILE = "rendezvous.db"
LOCK_FILE = "serve.lock"

_V1 = """
CREATE TABLE envelopes (
    seq         INTEGER PRIMARY KEY,
    id          BLOB NOT NULL UNIQUE CHECK (length(id) = 32),
    mailbox     BLOB NOT NULL CHECK (length(mailbox) = 32),
    size        INTEGER NOT NULL,
    expires_at  REAL NOT NULL,
    data        BLOB NOT NULL
);
CREATE INDEX envelopes_by_mailbox ON envelopes (mailbox, seq);

CREATE TABLE invites (
    token_hash  BLOB PRIMARY KEY CHECK (length(token_hash) = 32),
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0),
    expires_at  REAL,
    created_at  REAL NOT NULL
);

CREATE TABLE access (
    peer     BLOB PRIMARY KEY CHECK (length(peer) = 32),
    allowed  INTEGER NOT NULL DEFAULT 0 CHECK (allowed IN (0, 1)),
    banned   INTEGER NOT NULL DEFAULT 0 CHECK (banned IN (0, 1)),
    known    INTEGER NOT NULL DEFAULT 0 CHECK (known IN (0, 1))
);

CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE access_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
INSERT INTO access_version (id, version) VALUES (1, 0);
"""

MIGRATIONS: tuple[str, ...] = (_V1,)
_FLAGS = ("allowed", "banned", "known")


def open_db(directory: Path) -> AbstractAsyncContextManager[Store]:
    """``Store.open`` of the server database in ``directory`` (an async context manager)."""
    return open_db_file(directory / DB_FILE)


def open_db_file(path: Path) -> AbstractAsyncContextManager[Store]:
    return Store.open(path, migrations=MIGRATIONS)


# --------------------------------------------------------------------------- envelopes


async def load_envelopes(store: Store) -> list[StoredEnvelope]:
    """Every stored envelope's metadata in deposit order (to rebuild the mailbox index)."""
    rows = await store.fetch_all("SELECT id, mailbox, size, expires_at FROM envelopes ORDER BY seq")
    return [StoredEnvelope(bytes(r[0]), bytes(r[1]), int(r[2]), float(r[3])) for r in rows]


def insert_envelope_op(entry: StoredEnvelope, data: bytes) -> WriteOp:
    return (
        "INSERT OR IGNORE INTO envelopes (id, mailbox, size, expires_at, data) "
        "VALUES (?, ?, ?, ?, ?)",
        (entry.envelope_id, entry.mailbox_id, entry.size, entry.expires_at, data),
    )


async def read_envelopes(store: Store, mailbox: bytes, ids: Sequence[bytes]) -> dict[bytes, bytes]:
    """Bytes of the given envelopes *of this mailbox* (others are simply absent)."""
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = await store.fetch_all(
        f"SELECT id, data FROM envelopes WHERE mailbox = ? AND id IN ({marks})",  # noqa: S608
        (mailbox, *ids),
    )
    return {bytes(r[0]): bytes(r[1]) for r in rows}


def delete_envelopes(ids: Sequence[bytes]) -> list[WriteOp]:
    return [("DELETE FROM envelopes WHERE id = ?", (envelope_id,)) for envelope_id in ids]


# --------------------------------------------------------------------------- access


async def load_access(store: Store, mode: AccessMode) -> AccessRules:
    rules = AccessRules(mode)
    for peer, allowed, banned, known in await store.fetch_all(
        "SELECT peer, allowed, banned, known FROM access"
    ):
        for flag, target in (
            (allowed, rules.allowed),
            (banned, rules.banned),
            (known, rules.known),
        ):
            if flag:
                target.add(bytes(peer))
    for token_hash, uses, expires in await store.fetch_all(
        "SELECT token_hash, uses_left, expires_at FROM invites"
    ):
        rules.invites[bytes(token_hash)] = Invite(bytes(token_hash), int(uses), expires)
    return rules


def access_ops(peer: bytes, flag: str, value: bool, *, bump: bool = True) -> list[WriteOp]:
    """Set one of ``allowed``/``banned``/``known`` for a peer.

    ``bump`` (admin changes) makes a running server reload its rules; the server's own changes
    (a peer became known through an invite) are already in its memory and do not bump.
    """
    if flag not in _FLAGS:
        raise ValueError(flag)
    ops: list[WriteOp] = [
        ("INSERT OR IGNORE INTO access (peer) VALUES (?)", (peer,)),
        (f"UPDATE access SET {flag} = ? WHERE peer = ?", (int(value), peer)),  # noqa: S608
    ]
    return [*ops, bump_version()] if bump else ops


def invite_op(invite: Invite, now: float) -> WriteOp:
    """Insert or update an invite (its uses left)."""
    return (
        "INSERT INTO invites (token_hash, uses_left, expires_at, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (token_hash) DO UPDATE SET uses_left = excluded.uses_left",
        (invite.token_hash, invite.uses_left, invite.expires_at, now),
    )


def bump_version() -> WriteOp:
    return ("UPDATE access_version SET version = version + 1 WHERE id = 1", ())


async def read_version(store: Store) -> int:
    row = await store.fetch_one("SELECT version FROM access_version WHERE id = 1")
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------- settings


async def read_setting(store: Store, key: str) -> str | None:
    row = await store.fetch_one("SELECT value FROM settings WHERE key = ?", (key,))
    return None if row is None else str(row[0])


def set_setting(key: str, value: str) -> WriteOp:
    return (
        "INSERT INTO settings (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


# --------------------------------------------------------------------------- process lock


@contextlib.contextmanager
def serve_lock(directory: Path) -> Iterator[None]:
    """Hold ``DIR/serve.lock`` (an exclusive ``flock``) while a server runs from ``DIR``.

    Raises :class:`UsageError` (``rendezvous.running``) if another process holds it. The OS
    releases the lock when the process dies, so a ``kill -9`` leaves no stale lock.
    """
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"a rendezvous server is running from {directory}", code="rendezvous.running"
            ) from None
        yield
    finally:
        os.close(fd)
