"""E2EE state in a real SQLite file: restart reloads it, replays stay refused, erased keys are
gone from the database and WAL bytes."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
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


# ------------------------------------------------------------------ kill -9 around sends

SENDER = textwrap.dedent(
    """
    import asyncio, sys
    from node import prekeys, session
    from node.crypto import SigningKey, random_bytes
    from node.identity import Identity, PeerId
    from node.session_store import SessionStore
    from node.store import Store

    DB, SEED, BUNDLE, PEER, COUNT = sys.argv[1:6]
    OUTBOX = "CREATE TABLE IF NOT EXISTS test_outbox (n INTEGER PRIMARY KEY, data BLOB)"

    def transmit(data):
        sys.stdout.write(data.hex() + "\\n")
        sys.stdout.flush()

    async def main():
        me = Identity(SigningKey(bytes.fromhex(SEED)))
        peer = PeerId(bytes.fromhex(PEER))
        async with Store.open(DB) as store:
            await store.write([(OUTBOX, ())])
            states = SessionStore(store)
            for _, data in await store.fetch_all("SELECT n, data FROM test_outbox ORDER BY n"):
                transmit(bytes(data))  # re-send what may not have left before the crash
            await store.write([("DELETE FROM test_outbox", ())])
            current = await states.load_session(peer)
            if current is None:
                bundle = prekeys.verify_bundle(bytes.fromhex(BUNDLE), now=1.7e9, expected=peer)
                current = session.start(me, bundle, rng=random_bytes)
            for _ in range(int(COUNT)):
                number = current.ratchet.ns
                current, data = session.encrypt(current, b"msg %d" % number)
                row = ("INSERT INTO test_outbox (n, data) VALUES (?, ?)", (number, data))
                await states.save(now=1.7e9, session=current, extra=(row,))  # persist ...
                transmit(data)  # ... before send
                await store.write([("DELETE FROM test_outbox WHERE n = ?", (number,))])

    asyncio.run(main())
    """
)


def read_lines(process: subprocess.Popen[bytes], count: int, deadline: float) -> list[bytes]:
    """Up to ``count`` complete lines from the child's stdout, bounded by ``deadline``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer, lines = b"", list[bytes]()
    while len(lines) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines += complete
    return lines


def test_kill_9_never_reuses_a_message_number_nor_loses_a_message(tmp_path: Path) -> None:
    world = World()
    bundle = prekeys.make_bundle(world.bob_prekeys, world.bob, now=NOW)
    args = [
        str(tmp_path / "alice.db"),
        world.alice.signing_key.seed().hex(),
        bundle.to_bytes().hex(),
        world.bob.peer_id.key.hex(),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    deadline = time.monotonic() + 60
    chooser = random.Random(9)
    wire: list[bytes] = []
    for _ in range(4):  # killed at a random point while sending
        child = subprocess.Popen(
            [sys.executable, "-c", SENDER, *args, "100000"], stdout=subprocess.PIPE, env=env
        )
        try:
            wire += read_lines(child, chooser.randrange(5, 40), deadline)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        wire += read_lines(child, 10**6, deadline)  # what it wrote before dying
    done = subprocess.run(
        [sys.executable, "-c", SENDER, *args, "5"],
        capture_output=True,
        timeout=30,
        env=env,
        check=True,
    )
    wire += done.stdout.split()
    by_number: dict[tuple[bytes, int], bytes] = {}
    bob_prekeys, bob_session, delivered = world.bob_prekeys, None, []
    for line in wire:
        data = bytes.fromhex(line.decode())
        header = session.parse_message(data).ratchet_message[:40]
        key = (header[:32], int.from_bytes(header[36:], "big"))
        assert by_number.setdefault(key, data) == data, "a message number was reused"
        try:
            got = world.bob_receives(bob_prekeys, bob_session, data)
        except ReplayError:
            continue  # a re-send from the outbox after a crash
        bob_prekeys, bob_session = got.prekeys, got.session
        delivered.append(int(got.plaintext.split()[1]))
    assert bob_session is not None
    assert sorted(delivered) == list(range(bob_session.ratchet.nr)), "a message was lost"
    assert len(delivered) >= 5
