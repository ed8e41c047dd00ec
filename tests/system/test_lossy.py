"""1:1 messaging between two real ``peerline run`` daemons through a lossy, slow link.

Only loopback: both daemons listen on 127.0.0.1 with mDNS off, and the sender knows the
recipient only from an invite whose address hint is the impairment proxy's port. Invites are
signed, so the hint cannot be edited; instead the recipient runs once on a port to mint the
invite, stops, and restarts on a fresh port, and the proxy takes over the advertised one and
forwards to the new one. Every datagram of the connection, both ways, crosses the proxy.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.system.impair import Impairment, ImpairProxy
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

MESSAGES = 1000
LINK = Impairment(loss=0.05, delay=0.05)
FLAGS = ("--listen", "127.0.0.1:0", "--no-mdns")


def port_of(node: NodeProcess) -> int:
    return int(str(node.info["listen"]).rsplit(":", 1)[1])


async def states(node: NodeProcess, peer: str) -> list[str]:
    """Delivery states of the whole conversation, through the running node (pages of 500)."""
    out: list[str] = []
    cursor: str | None = None
    while True:
        extra = {"before": cursor} if cursor else {}
        page = await node.call("history", peer=peer, limit=500, **extra)
        out += [str(m["state"]) for m in page["messages"]]
        cursor = page["next"]
        if cursor is None:
            return out


@pytest.mark.timeout(360)
async def test_messages_survive_5pct_loss_and_50ms_delay_exactly_once_in_order(
    tmp_path: Path,
) -> None:
    alice_home, bob_home = make_home(tmp_path, "alice"), make_home(tmp_path, "bob")
    with processes() as started:
        bob = NodeProcess(bob_home, *FLAGS)
        alice = NodeProcess(alice_home, *FLAGS)
        started += [bob, alice]
        await bob.start()
        advertised = port_of(bob)
        invite = cli_json(bob_home, "invite")["invite"]
        assert bob.stop() == 0
        await bob.start()
        target = ("127.0.0.1", port_of(bob))
        assert target[1] != advertised
        async with ImpairProxy(target, seed=9, listen=("127.0.0.1", advertised)) as proxy:
            proxy.forward.impairment = Impairment(**vars(LINK))
            proxy.backward.impairment = Impairment(**vars(LINK))
            await alice.start()
            cli(alice_home, "contacts", "add", invite, "--name", "bob")
            cli(bob_home, "contacts", "add", alice.peer_id, "--name", "alice")
            started_at = time.monotonic()
            ids = [
                (await alice.call("send", to="bob", text=f"m{i:04d}"))["id"]
                for i in range(MESSAGES)
            ]

            async def all_delivered() -> bool:
                seen = await states(alice, "bob")
                return len(seen) == MESSAGES and set(seen) <= {"delivered", "read"}

            try:
                await wait_for(all_delivered, f"{MESSAGES} receipts through the lossy link", 240)
            except AssertionError as exc:  # say where delivery stopped, not only that it did
                counts = Counter(await states(alice, "bob"))
                raise AssertionError(f"{exc}; sender states: {dict(counts)}") from None
            elapsed = time.monotonic() - started_at
            received = history(bob_home, "alice", limit=MESSAGES)
            assert [m["id"] for m in received] == ids, elapsed  # none lost, none twice, in order
            assert [m["text"] for m in received] == [f"m{i:04d}" for i in range(MESSAGES)]
            assert proxy.forward.dropped > 0 and proxy.backward.dropped > 0  # it was lossy
            assert alice.stop() == 0 and bob.stop() == 0
