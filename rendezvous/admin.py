"""Administration of a rendezvous server's access rules, beside a running server or not.

Every command opens the server database in ``DIR`` (SQLite allows a second writer process;
the store waits on the lock) and bumps ``access_version`` with its change; the running
server polls that version and applies the new rules within ``access_poll`` seconds, closing
the connections of peers they refuse. Invite tokens are shown once and stored only as a hash.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from node.crypto import Rng, random_bytes
from node.errors import PeerlineError, StorageError, UsageError
from node.identity import PeerId
from node.registry import Invite, invite_hash
from rendezvous import db
from rendezvous.protocol import invite_token_text

__all__ = [
    "AccessListing",
    "allow",
    "backup",
    "ban",
    "create_invite",
    "deny",
    "listing",
    "restore",
    "unban",
]

_TOKEN_SIZE = 16
_SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_USES = 1_000_000


@dataclass(frozen=True, slots=True)
class AccessListing:
    mode: str | None
    allowed: list[str]
    banned: list[str]
    known: list[str]
    invites: list[dict[str, object]]

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "allowed": self.allowed,
            "banned": self.banned,
            "known": self.known,
            "invites": self.invites,
        }


def _require_db(directory: Path) -> None:
    if not (directory / db.DB_FILE).exists():
        raise UsageError(
            f"{directory} holds no rendezvous server (run 'peerline rendezvous serve' first)",
            code="rendezvous.no_server",
        )


async def create_invite(
    directory: Path, *, uses: int, expires_in: float | None, now: float, rng: Rng = random_bytes
) -> str:
    """Create an invite token usable ``uses`` times, expiring after ``expires_in`` seconds."""
    if not 1 <= uses <= MAX_USES:
        raise UsageError(f"uses must be 1..{MAX_USES}", code="usage.invalid")
    if expires_in is not None and expires_in <= 0:
        raise UsageError("expiry must be in the future", code="usage.invalid")
    _require_db(directory)
    token = rng(_TOKEN_SIZE)
    expires_at = None if expires_in is None else now + expires_in
    invite = Invite(invite_hash(token), uses, expires_at)
    async with db.open_db(directory) as store:
        await store.write([db.invite_op(invite, now), db.bump_version()])
    return invite_token_text(token)


async def _set(directory: Path, peer: PeerId, changes: list[tuple[str, bool]]) -> None:
    _require_db(directory)
    ops = [op for flag, value in changes for op in db.access_ops(peer.key, flag, value)]
    async with db.open_db(directory) as store:
        await store.write(ops)


async def allow(directory: Path, peer: PeerId) -> None:
    """Put ``peer`` on the allowlist (admitted in every mode unless banned)."""
    await _set(directory, peer, [("allowed", True)])


async def deny(directory: Path, peer: PeerId) -> None:
    """Take ``peer`` off the allowlist and forget its invite: it must be invited again."""
    await _set(directory, peer, [("allowed", False), ("known", False)])


async def ban(directory: Path, peer: PeerId) -> None:
    """Refuse ``peer`` in every mode; a running server closes its connections at once."""
    await _set(directory, peer, [("banned", True)])


async def unban(directory: Path, peer: PeerId) -> None:
    await _set(directory, peer, [("banned", False)])


async def listing(directory: Path) -> AccessListing:
    _require_db(directory)
    async with db.open_db(directory) as store:
        mode = await db.read_setting(store, "mode")
        rows = await store.fetch_all(
            "SELECT peer, allowed, banned, known FROM access ORDER BY peer"
        )
        invites = await store.fetch_all(
            "SELECT token_hash, uses_left, expires_at, created_at FROM invites ORDER BY created_at"
        )

    def peers(column: int) -> list[str]:
        return [PeerId(bytes(row[0])).text() for row in rows if row[column]]

    return AccessListing(
        mode,
        peers(1),
        peers(2),
        peers(3),
        [
            {"id": bytes(h).hex()[:12], "uses_left": u, "expires_at": e, "created_at": c}
            for h, u, e, c in invites
        ],
    )


async def backup(directory: Path, destination: Path) -> None:
    """Online backup of the server database into ``destination`` (a new file).

    Safe while the server runs: SQLite's backup API copies a consistent snapshot that holds
    every committed deposit. The identity key is not in it: back up ``DIR/identity.key`` once.
    """
    _require_db(directory)
    async with db.open_db(directory) as store:
        await store.backup(destination)


async def restore(directory: Path, source: Path) -> None:
    """Replace the server database with a backup; the server must be stopped.

    The backup is first opened (and migrated if older) under a temporary name, so a damaged
    or foreign file is refused and the current database is left as it was.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / db.DB_FILE
    temp = directory / f".{db.DB_FILE}.restore"
    with db.serve_lock(directory):
        try:
            with source.open("rb") as file:
                magic = file.read(len(_SQLITE_MAGIC))
            if magic != _SQLITE_MAGIC:
                raise StorageError(
                    f"{source} is not a rendezvous backup (not SQLite)",
                    code="rendezvous.bad_backup",
                )
            shutil.copyfile(source, temp)
        except OSError as exc:
            raise UsageError(
                f"cannot read {source}: {exc.strerror}", code="usage.invalid"
            ) from None
        try:
            async with db.open_db_file(temp) as store:
                await db.read_version(store)
        except PeerlineError as exc:
            _remove(temp)
            raise StorageError(
                f"{source} is not a rendezvous backup ({exc.code})", code="rendezvous.bad_backup"
            ) from None
        for suffix in ("-wal", "-shm"):
            _remove(Path(f"{target}{suffix}"))
            _remove(Path(f"{temp}{suffix}"))
        os.replace(temp, target)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
