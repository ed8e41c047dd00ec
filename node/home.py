"""The node's home directory: where it is, what is in it, and the identity files (I/O).

Resolution order: an explicit ``--home`` > ``$PEERLINE_HOME`` > ``platformdirs.user_data_dir``.
Layout (the directory is mode 0700)::

    HOME/identity.key   the secret key file, mode 0600, plain or passphrase-sealed
    HOME/peerline.db    the SQLite store (public identity row, contacts, messages, outbox)
    HOME/config.toml    configuration (later)

The public part of the identity (peer id, name) is also kept in the database so that it can be
shown without the passphrase. ``create_identity`` is all-or-nothing: on any failure it removes
what it created and leaves the disk as it found it.

``PEERLINE_ARGON2=fast`` selects :data:`Argon2Params.FAST_FOR_TESTS` for *new* key files.
It is for tests only: such a key file is cheap to brute-force. Existing files carry their own
parameters, so the variable never affects reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from node.crypto import Argon2Params
from node.errors import IdentityExistsError, StorageError, UsageError
from node.identity import Identity, PeerId, decode_key_file, encode_key_file, key_file_is_sealed
from node.store import Store

__all__ = [
    "ARGON2_ENV",
    "CONFIG_FILE",
    "DB_FILE",
    "HOME_ENV",
    "KEY_FILE",
    "MAX_NAME_LENGTH",
    "PublicIdentity",
    "argon2_params",
    "create_identity",
    "key_is_sealed",
    "load_identity",
    "read_public_identity",
    "resolve_home",
]

HOME_ENV = "PEERLINE_HOME"
ARGON2_ENV = "PEERLINE_ARGON2"
KEY_FILE = "identity.key"
DB_FILE = "peerline.db"
CONFIG_FILE = "config.toml"
MAX_NAME_LENGTH = 64
_DB_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """What anyone may know about our identity: no secret here."""

    peer_id: PeerId
    name: str
    created_at: float


def resolve_home(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str] = os.environ
) -> Path:
    """The home directory to use, always absolute (it may not exist yet).

    Absolute because SQLite URIs and the control socket need it, and because a daemon must not
    depend on the directory it was started from.
    """
    if explicit:
        return Path(explicit).expanduser().absolute()
    if env.get(HOME_ENV):
        return Path(env[HOME_ENV]).expanduser().absolute()
    return Path(platformdirs.user_data_dir("peerline")).absolute()


def argon2_params(env: Mapping[str, str] = os.environ) -> Argon2Params:
    """Argon2 costs for new key files: MODERATE, or FAST_FOR_TESTS when the env says ``fast``."""
    return Argon2Params.FAST_FOR_TESTS if env.get(ARGON2_ENV) == "fast" else Argon2Params.MODERATE


def _check_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise UsageError("the name must not be empty", code="identity.bad_name")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise UsageError(
            f"the name is longer than {MAX_NAME_LENGTH} characters", code="identity.bad_name"
        )
    if any(unicodedata.category(char).startswith("C") for char in cleaned):
        raise UsageError("the name contains control characters", code="identity.bad_name")
    return cleaned


def _no_identity(home: Path) -> UsageError:
    return UsageError(
        f"no identity in {home}: run `peerline init --name NAME` first", code="home.no_identity"
    )


def _io_error(action: str, path: Path, exc: OSError) -> StorageError:
    return StorageError(f"cannot {action} {path}: {exc.strerror or exc}", code="home.io")


async def create_identity(
    home: Path, name: str, passphrase: bytes | None, *, now: float | None = None
) -> PublicIdentity:
    """Create a new identity in ``home``; all-or-nothing.

    Raises :class:`IdentityExistsError` if ``home`` already holds a key file or an identity row,
    :class:`UsageError` (``identity.bad_name``) for a bad name, :class:`StorageError` on I/O.
    """
    name = _check_name(name)
    if passphrase is not None and not passphrase:
        raise UsageError("the passphrase must not be empty", code="identity.bad_passphrase")
    key_path, db_path = home / KEY_FILE, home / DB_FILE
    if key_path.exists():
        raise IdentityExistsError(f"{key_path} already exists: refusing to overwrite it")
    identity = Identity.generate()
    key_bytes = await asyncio.to_thread(
        encode_key_file, identity, passphrase, params=argon2_params()
    )
    public = PublicIdentity(identity.peer_id, name, time.time() if now is None else now)
    created: list[Path] = []
    row_inserted = False
    try:
        _make_home(home, created)
        if not db_path.exists():
            created.extend(db_path.with_name(db_path.name + s) for s in ("", *_DB_SIDE_FILES))
        await _insert_identity_row(db_path, public)
        row_inserted = True
        _write_new_file(key_path, key_bytes)
    except BaseException:
        await _undo(db_path, created, row_inserted)
        raise
    return public


def _make_home(home: Path, created: list[Path]) -> None:
    """Create ``home`` (and missing parents) with mode 0700, recording what was made."""
    missing = [p for p in (home, *home.parents) if not p.exists()]
    try:
        for path in reversed(missing):
            path.mkdir(mode=0o700)
            created.append(path)
    except OSError as exc:
        raise _io_error("create", home, exc) from None


async def _insert_identity_row(db_path: Path, public: PublicIdentity) -> None:
    async with Store.open(db_path) as store:
        if await store.fetch_one("SELECT 1 FROM identity") is not None:
            raise IdentityExistsError(
                f"{db_path} already holds an identity: refusing to replace it"
            )
        await store.write(
            [
                (
                    "INSERT INTO identity (id, peer_id, name, created_at) VALUES (1, ?, ?, ?)",
                    (public.peer_id.key, public.name, public.created_at),
                )
            ]
        )


def _write_new_file(path: Path, data: bytes) -> None:
    """Atomically publish ``path`` (0600) with ``data``; never replaces an existing file.

    Temp file + fsync, then ``link`` (fails if the target exists, unlike ``rename``), then
    fsync of the directory so the new name survives a crash.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, path)
        _fsync_dir(path.parent)
    except FileExistsError:
        raise IdentityExistsError(f"{path} already exists: refusing to overwrite it") from None
    except OSError as exc:
        raise _io_error("write", path, exc) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _undo(db_path: Path, created: list[Path], row_inserted: bool) -> None:
    """Remove what a failed ``create_identity`` made (files first, then directories)."""
    if row_inserted and db_path not in created:
        with contextlib.suppress(Exception):
            async with Store.open(db_path) as store:
                await store.write([("DELETE FROM identity", ())])
    for path in reversed(created):
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()


def _read_key_file(home: Path) -> bytes:
    key_path = home / KEY_FILE
    try:
        return key_path.read_bytes()
    except FileNotFoundError:
        raise _no_identity(home) from None
    except OSError as exc:
        raise _io_error("read", key_path, exc) from None


def key_is_sealed(home: Path) -> bool:
    """Whether the key file in ``home`` needs a passphrase. Raises ``home.no_identity``."""
    return key_file_is_sealed(_read_key_file(home))


async def load_identity(home: Path, passphrase: bytes | None) -> Identity:
    """Open the secret identity. Raises ``home.no_identity`` or :class:`WrongPassphraseError`."""
    data = _read_key_file(home)
    return await asyncio.to_thread(decode_key_file, data, passphrase)


async def read_public_identity(home: Path) -> PublicIdentity:
    """Peer id, name and creation time from the database: no passphrase needed.

    Checks the key file and database exist *before* opening anything, so a missing identity
    creates no file.
    """
    db_path = home / DB_FILE
    if not (home / KEY_FILE).exists():
        raise _no_identity(home)
    if not db_path.exists():
        raise StorageError(
            f"{db_path} is missing: the identity's database is gone", code="home.no_db"
        )
    async with Store.open(db_path) as store:
        row = await store.fetch_one("SELECT peer_id, name, created_at FROM identity")
    if row is None:
        raise _no_identity(home)
    return PublicIdentity(PeerId(row[0]), row[1], row[2])
