"""kill -9 of the sender or of the receiver during a 1,000-message burst loses nothing and
duplicates nothing: after a restart every accepted message is shown exactly once, in order,
and the sender sees every one ``delivered``."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest

from node.errors import PeerlineError
from tests.system.procs import (
    NodeProcess,
    cli,
    cli_json,
    history,
    make_home,
    processes,
    wait_for,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

BURST = 1000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def burst(sender: NodeProcess, to: str, start: int, count: int, ids: list[str]) -> None:
    """Send ``count`` numbered messages until done or the sender dies; record accepted ids."""
    for i in range(start, start + count):
        try:
            ids.append((await sender.call("send", to=to, text=f"n{i:04d}"))["id"])
        except (PeerlineError, OSError):
            return


async def check_all_delivered(alice: NodeProcess, bob_home: Path, accepted: list[str]) -> None:
    async def delivered() -> bool:
        page = await alice.call("history", peer="bob", limit=500)
        done = all(m["state"] == "delivered" for m in page["messages"])
        return done and cli_json(alice.home, "status")["queued"] == 0

    await wait_for(delivered, "every message delivered", timeout=120)
    sent = history(alice.home, "bob", limit=5000)
    received = history(bob_home, alice.peer_id, limit=5000)
    received_ids = [m["id"] for m in received]
    assert len(received_ids) == len(set(received_ids)), "a message was shown twice"
    assert set(accepted) <= set(received_ids) == {m["id"] for m in sent}
    numbers = [int(m["text"][1:]) for m in received]
    assert numbers == sorted(numbers), "shown out of the order they were written"


async def start_pair(tmp_path: Path, started: list[object]) -> tuple[NodeProcess, NodeProcess]:
    alice_home, bob_home = make_home(tmp_path, "alice"), make_home(tmp_path, "bob")
    flags = ("--no-mdns",)
    bob = NodeProcess(bob_home, "--listen", f"127.0.0.1:{free_port()}", *flags)
    alice = NodeProcess(alice_home, "--listen", f"127.0.0.1:{free_port()}", *flags)
    started += [alice, bob]
    await bob.start()
    cli(bob_home, "policy", "allow")
    invite = cli_json(bob_home, "invite")["invite"]
    await alice.start()
    cli(alice_home, "contacts", "add", invite, "--name", "bob")
    return alice, bob


async def test_kill9_sender_mid_burst(tmp_path: Path) -> None:
    with processes() as started:
        alice, bob = await start_pair(tmp_path, started)
        accepted: list[str] = []
        sending = asyncio.create_task(burst(alice, "bob", 0, BURST, accepted))
        await wait_for(lambda: len(accepted) >= BURST // 3, "a third of the burst")
        alice.stop(signal.SIGKILL)
        await sending
        attempted = len(accepted) + 1  # the call in flight may have committed
        await alice.start()
        await burst(alice, "bob", attempted, BURST - attempted, accepted)
        await check_all_delivered(alice, bob.home, accepted)
        assert alice.stop() == 0 and bob.stop() == 0


async def test_kill9_receiver_mid_burst(tmp_path: Path) -> None:
    with processes() as started:
        alice, bob = await start_pair(tmp_path, started)
        accepted: list[str] = []
        sending = asyncio.create_task(burst(alice, "bob", 0, BURST, accepted))
        await wait_for(lambda: len(accepted) >= BURST // 3, "a third of the burst")
        bob.stop(signal.SIGKILL)
        await asyncio.sleep(0.5)
        await bob.start()
        await sending
        assert len(accepted) == BURST
        await check_all_delivered(alice, bob.home, accepted)
        assert alice.stop() == 0 and bob.stop() == 0
