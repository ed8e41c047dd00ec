"""1:1 messaging with real node processes driven through the CLI (loopback only).

mDNS runs on 127.0.0.1 only. Bulk sends go through the control socket (the very API the CLI
uses) because starting a Python process per message would dominate the run time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.system.procs import (
    NodeProcess,
    cli,
    cli_json,
    history,
    make_home,
    processes,
    rendezvous,
    wait_for,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

RECEIPT_DEADLINE = 240.0


# --------------------------------------------------------------------------- tests


async def test_two_nodes_find_each_other_by_mdns_and_chat_both_ways(tmp_path: Path) -> None:
    alice_home, bob_home = make_home(tmp_path, "alice"), make_home(tmp_path, "bob")
    lan = ("--listen", "127.0.0.1:0", "--mdns-interface", "127.0.0.1")
    with processes() as started:
        alice, bob = NodeProcess(alice_home, *lan), NodeProcess(bob_home, *lan)
        started += [alice, bob]
        await alice.start()
        await bob.start()
        cli(alice_home, "contacts", "add", bob.peer_id, "--name", "bob")
        cli(bob_home, "contacts", "add", alice.peer_id, "--name", "alice")
        sent = cli_json(alice_home, "send", "bob", "hello bob 👋")
        assert sent["state"] == "queued" and len(sent["id"]) == 32
        reply = cli_json(bob_home, "send", "alice", "hi alice")

        def delivered(home: Path, peer: str, message_id: str) -> bool:
            return any(
                m["id"] == message_id and m["state"] in ("delivered", "read")
                for m in history(home, peer)
            )

        await wait_for(lambda: delivered(alice_home, "bob", sent["id"]), "alice -> bob")
        await wait_for(lambda: delivered(bob_home, "alice", reply["id"]), "bob -> alice")
        texts = [m["text"] for m in history(bob_home, "alice")]
        assert texts == ["hello bob 👋", "hi alice"]
        status = cli_json(alice_home, "status")
        assert bob.peer_id in status["connected"]
        assert any(e["event"] == "discovered" for e in alice.events())
        assert alice.stop() == 0 and bob.stop() == 0


@pytest.mark.timeout(360)
async def test_mailbox_delivers_100_messages_exactly_once_in_order(tmp_path: Path) -> None:
    alice_home, bob_home = make_home(tmp_path, "alice"), make_home(tmp_path, "bob")
    async with rendezvous(tmp_path / "rv") as server:
        flags = ("--listen", "127.0.0.1:0", "--no-mdns", "--rendezvous", server.address)
        with processes() as started:
            bob = NodeProcess(bob_home, *flags)
            alice = NodeProcess(alice_home, *flags)
            started += [alice, bob]
            await bob.start()
            invite = cli_json(bob_home, "invite")["invite"]
            assert bob.stop() == 0
            cli(bob_home, "policy", "allow")  # offline: straight to the store
            await alice.start()
            cli(alice_home, "contacts", "add", invite, "--name", "bob")
            ids = [(await alice.call("send", to="bob", text=f"m{i:03d}"))["id"] for i in range(100)]

            async def all_stored() -> bool:
                page = await alice.call("history", peer="bob", limit=100)
                return all(m["state"] == "stored" for m in page["messages"])

            await wait_for(all_stored, "100 messages in the mailbox")
            await bob.start()

            async def all_delivered() -> bool:
                page = await alice.call("history", peer="bob", limit=100)
                return all(m["state"] == "delivered" for m in page["messages"])

            # Receipts are best effort; a lost one is recovered by the sender's retry, which
            # backs off (up to 5 min): allow several rounds before calling it a stall.
            await wait_for(all_delivered, "100 receipts", RECEIPT_DEADLINE)
            received = history(bob_home, alice.peer_id)
            assert [m["id"] for m in received] == ids
            assert [m["text"] for m in received] == [f"m{i:03d}" for i in range(100)]
            assert alice.stop() == 0 and bob.stop() == 0


async def test_policies_and_block_from_both_sides(tmp_path: Path) -> None:
    homes = {name: make_home(tmp_path, name) for name in ("bob", "carol", "dave", "erin", "frank")}
    flags = ("--listen", "127.0.0.1:0", "--no-mdns")
    with processes() as started:
        nodes = {name: NodeProcess(home, *flags) for name, home in homes.items()}
        started.extend(nodes.values())
        for node in nodes.values():
            await node.start()
        bob = nodes["bob"]
        invite = cli_json(homes["bob"], "invite")["invite"]
        cli(homes["bob"], "contacts", "block", nodes["frank"].peer_id)

        async def state_of(name: str, message_id: str) -> str:
            page = await nodes[name].call("history", peer=bob.peer_id, limit=10)
            return str(next(m["state"] for m in page["messages"] if m["id"] == message_id))

        async def send(name: str, text: str) -> str:
            return str((await nodes[name].call("send", to=invite, text=text))["id"])

        # deny: the stranger is told; nothing is stored at bob.
        cli(homes["bob"], "policy", "deny")
        refused = await send("carol", "let me in")
        await wait_for(lambda: _is(state_of("carol", refused), "failed"), "refusal")
        page = await nodes["carol"].call("history", peer=bob.peer_id)
        assert page["messages"][0].get("reason") == "refused"
        assert cli_json(homes["bob"], "history", nodes["carol"].peer_id)["messages"] == []

        # confirm: a request, nothing shown until accepted.
        cli(homes["bob"], "policy", "confirm")
        first = await send("dave", "hi, it's dave")
        second = await send("dave", "are you there?")
        await wait_for(lambda: _is(state_of("dave", second), "delivered"), "request stored")
        assert await state_of("dave", first) == "delivered"
        requests = cli_json(homes["bob"], "requests", "list")["requests"]
        assert [(r["peer"], r["count"]) for r in requests] == [(nodes["dave"].peer_id, 2)]
        shown = [e for e in bob.events() if e.get("peer") == nodes["dave"].peer_id]
        assert [e["event"] for e in shown if e["event"] in ("request", "message")] == ["request"]
        cli(homes["bob"], "requests", "accept", nodes["dave"].peer_id)
        await send("dave", "thanks")
        await wait_for(
            lambda: any(
                e.get("text") == "thanks" and e["event"] == "message" for e in bob.events()
            ),
            "accepted chat",
        )

        # allow: straight into a chat.
        cli(homes["bob"], "policy", "allow")
        await send("erin", "hello from erin")
        await wait_for(
            lambda: any(e.get("text") == "hello from erin" for e in bob.events()), "allowed chat"
        )

        # block: dropped silently; frank's message never gets a receipt or a refusal.
        blocked = await send("frank", "psst")
        await asyncio.sleep(3.0)
        assert await state_of("frank", blocked) in ("queued", "sent")  # retried, never answered
        assert not [e for e in bob.events() if e.get("peer") == nodes["frank"].peer_id]
        assert cli_json(homes["bob"], "history", nodes["frank"].peer_id)["messages"] == []
        for node in nodes.values():
            assert node.stop() == 0


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


def test_bad_input_is_one_line_nonzero_and_queues_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path, "alice")
    peer = cli_json(make_home(tmp_path, "bob"), "id")["peer_id"]
    cli(home, "contacts", "add", peer, "--name", "bob")
    cli(home, "contacts", "block", "bob")
    for args in [
        ("send", "nobody", "hi"),
        ("send", "bob", "hi"),  # blocked
        ("send", peer, ""),
        ("send", peer, "x" * 9000),
        ("send", "peerline://invite/notaninvite", "hi"),
        ("send", peer[:-1] + ("a" if peer[-1] != "a" else "b"), "hi"),
        ("history", "bob", "--limit", "0"),
    ]:
        done = cli(home, *args, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert cli(home, "status", check=False).returncode == 3
    cli(home, "contacts", "unblock", "bob")
    assert cli_json(home, "history", "bob")["messages"] == []
    queued = cli_json(home, "send", "bob", "queued while offline")
    assert queued["state"] == "queued"
    assert [m["state"] for m in cli_json(home, "history", "bob")["messages"]] == ["queued"]


async def test_dht_discovery_and_prekeys_over_the_connection(tmp_path: Path) -> None:
    """No mDNS, no rendezvous, no invite: the PeerId alone, found through the DHT."""
    alice_home, bob_home = make_home(tmp_path, "alice"), make_home(tmp_path, "bob")
    with processes() as started:
        bob = NodeProcess(bob_home, "--no-mdns", "--dht", "--dht-listen", "127.0.0.1:0")
        started.append(bob)
        await bob.start()
        bob_dht = cli_json(bob_home, "status")["dht"]["listen"]
        alice = NodeProcess(alice_home, "--no-mdns", "--dht", "--bootstrap", bob_dht)
        started.append(alice)
        await alice.start()
        cli(alice_home, "contacts", "add", bob.peer_id, "--name", "bob")
        cli(bob_home, "contacts", "add", alice.peer_id, "--name", "alice")
        sent = cli_json(alice_home, "send", "bob", "found you in the DHT")

        async def delivered() -> bool:
            page = await alice.call("history", peer="bob")
            return bool(page["messages"][0]["state"] == "delivered")

        await wait_for(delivered, "delivery via a DHT-found address")
        assert history(bob_home, "alice")[0]["id"] == sent["id"]
        assert alice.stop() == 0 and bob.stop() == 0
