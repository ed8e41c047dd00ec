"""E2EE state in a real SQLite file: restart reloads it, replays stay refused, erased keys are
gone from the database and WAL bytes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from node import prekeys, session
from node.errors import ReplayError, StorageError
from node.identity import Identity
from node.prekeys import PrekeyState
from node.session import Session
from node.session_store import SessionStore
from node.store import Store

pytestmark = pytest.mark.integration

NOW = 1_700_000_000.0
RNG = random.Random(3).randbytes


def disk_bytes(path: Path) -> bytes:
    """Everything SQLite keeps for this database: main file, WAL and shared memory."""
    return b"".join(
        candidate.read_bytes()
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        if candidate.exists()
    )


class World:
    def __init__(self) -> None:
        self.alice, self.bob = Identity.generate(RNG), Identity.generate(RNG)
        self.bob_prekeys = prekeys.generate(self.bob, now=NOW, rng=RNG)
        bundle = prekeys.make_bundle(self.bob_prekeys, self.bob, now=NOW)
        self.alice_session = session.start(self.alice, bundle, rng=RNG)

    def send(self, text: bytes) -> bytes:
        self.alice_session, data = session.encrypt(self.alice_session, text)
        return data

    def bob_receives(
        self, prekey_state: PrekeyState, bob_session: Session | None, data: bytes
    ) -> session.Received:
        return session.receive(
            self.bob, prekey_state, bob_session, data, sender=self.alice.peer_id, now=NOW, rng=RNG
        )


async def test_restart_reloads_state_and_replays_stay_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    world = World()
    first, second = world.send(b"first"), world.send(b"second")
    async with Store.open(path) as store:
        states = SessionStore(store)
        await states.save(now=NOW, prekeys=world.bob_prekeys)
        got = world.bob_receives(world.bob_prekeys, None, first)
        await states.save(now=NOW, session=got.session, prekeys=got.prekeys)
    async with Store.open(path) as store:  # restart
        states = SessionStore(store)
        bob_session = await states.load_session(world.alice.peer_id)
        bob_prekeys = await states.load_prekeys()
        assert bob_session == got.session and bob_prekeys == got.prekeys
        assert bob_prekeys is not None
        with pytest.raises(ReplayError):
            world.bob_receives(bob_prekeys, bob_session, first)
        with pytest.raises(ReplayError):  # even if the session row were lost
            world.bob_receives(bob_prekeys, None, first)
        assert world.bob_receives(bob_prekeys, bob_session, second).plaintext == b"second"
        assert await states.load_session(world.bob.peer_id) is None


async def test_erased_keys_are_gone_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    world = World()
    m0, m1 = world.send(b"zero"), world.send(b"one")
    pending = world.alice_session.pending_init
    assert pending is not None and pending.one_time_id is not None
    one_time_id = pending.one_time_id
    one_time_secret = world.bob_prekeys.one_time_secret(one_time_id)
    async with Store.open(path) as store:
        states = SessionStore(store)
        await states.save(now=NOW, prekeys=world.bob_prekeys)
        got = world.bob_receives(world.bob_prekeys, None, m1)  # m0's key is now a skipped key
        ((skipped_key, _),) = got.session.ratchet.skipped.values()
        await states.save(now=NOW, session=got.session, prekeys=got.prekeys)
        assert await states.purge()
        assert skipped_key in disk_bytes(path)  # the probe can see a stored key

        again = world.bob_receives(got.prekeys, got.session, m0)  # uses and erases the key
        assert again.plaintext == b"zero"
        await states.save(now=NOW, session=again.session)
        assert await states.purge()
        content = disk_bytes(path)
        assert skipped_key not in content
        assert one_time_secret not in content  # consumed one-time prekey
        root_key = again.session.ratchet.root_key
        assert root_key in content

        assert await states.erase_session(world.alice.peer_id)
        assert root_key not in disk_bytes(path)
        assert await states.load_session(world.alice.peer_id) is None


async def test_damaged_row_is_a_storage_error_without_key_material(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    world = World()
    async with Store.open(path) as store:
        secret = b"\x42" * 40
        await store.write(
            [
                (
                    "INSERT INTO sessions (peer_id, state, updated_at) VALUES (?, ?, ?)",
                    (world.alice.peer_id.key, secret, NOW),
                )
            ]
        )
        with pytest.raises(StorageError) as info:
            await SessionStore(store).load_session(world.alice.peer_id)
        assert info.value.code == "session_store.corrupt"
        assert secret.hex() not in str(info.value) and repr(secret) not in repr(info.value)
