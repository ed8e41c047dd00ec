"""The rendezvous server as a real process: kill -9 under deposit load, SIGTERM, logs, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from node import envelope
from node.crypto import random_bytes
from node.errors import PeerlineError, RefusedError
from node.identity import Identity
from node.transport import Transport
from rendezvous.client import RendezvousClient
from rendezvous.protocol import RendezvousAddress, parse_invite_token
from tests.system.procs import REPO, rendezvous

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def sealed(owner: Identity, n: int) -> bytes:
    return envelope.seal(
        owner.peer_id,
        Identity.generate().peer_id,
        b"message %d" % n,
        expires=int(time.time()) + 3600,
        rng=random_bytes,
    )


async def deposit_load(
    address: RendezvousAddress, owner: Identity, receipted: set[bytes], start: int, count: int
) -> None:
    async with Transport(Identity.generate()) as transport:
        client = RendezvousClient(transport, address, timeout=2.0)
        for n in range(start, start + count):
            receipt = await client.deposit(sealed(owner, n))
            receipted.add(receipt.envelope_id)


async def test_kill9_during_deposits_loses_no_receipted_envelope(tmp_path: Path) -> None:
    owner = Identity.generate()
    receipted: set[bytes] = set()
    async with rendezvous(tmp_path / "rv") as first:
        address = RendezvousAddress.parse(first.info["address"])
        load = [
            asyncio.create_task(deposit_load(address, owner, receipted, i * 10_000, 10_000))
            for i in range(8)
        ]
        deadline = time.monotonic() + 30
        while len(receipted) < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert first.proc is not None
        first.proc.kill()  # kill -9 in the middle of the load
        first.proc.wait(timeout=10)
        before_kill = len(receipted)
        for task in load:
            task.cancel()
        results = await asyncio.gather(*load, return_exceptions=True)
        assert all(isinstance(r, PeerlineError | asyncio.CancelledError) for r in results)
    assert before_kill >= 300
    listen = f"{address.host}:{address.port}"
    async with rendezvous(tmp_path / "rv", listen=listen) as second:
        assert second.info["address"] == address.text()
        delivered: Counter[bytes] = Counter()

        async def store(envelope_id: bytes, data: bytes) -> None:
            assert envelope.envelope_id(data) == envelope_id
            envelope.open_envelope(owner, data)
            delivered[envelope_id] += 1

        async with Transport(owner) as transport:
            client = RendezvousClient(transport, address, timeout=10.0)
            await client.drain(store, batch=128)
            assert (await client.pending()).total == 0
        assert receipted <= set(delivered)
        assert max(delivered.values()) == 1
        assert second.stop(signal.SIGTERM) == 0


async def test_sigterm_metrics_and_logs_without_identifiers(tmp_path: Path) -> None:
    owner = Identity.generate()
    async with rendezvous(tmp_path / "rv", "--metrics", "127.0.0.1:0") as process:
        address = RendezvousAddress.parse(process.info["address"])
        async with Transport(Identity.generate()) as transport:
            client = RendezvousClient(transport, address, timeout=5.0)
            await client.deposit(sealed(owner, 1))
            await client.search("")
        url = f"http://{process.info['metrics']}/metrics"
        text = (
            await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        ).decode()
        for name in (
            "peerline_rv_connections",
            "peerline_rv_deposits_total 1.0",
            "peerline_rv_stored_bytes",
            "peerline_rv_registrations",
        ):
            assert name in text
        assert process.stop(signal.SIGTERM) == 0
        logs = process.stderr()
    events = [json.loads(line)["event"] for line in logs.splitlines()]
    assert events[0] == "ready" and events[-1] == "stopping" and "connected" in events
    assert "127.0.0.1" not in logs
    assert transport.peer_id.text() not in logs and address.peer_id.text() not in logs
    assert os.path.exists(tmp_path / "rv" / "identity.key")


def admin_cli(directory: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "--json",
            "rendezvous",
            "admin",
            "--data",
            str(directory),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def test_invite_and_ban_by_admin_processes_beside_a_running_server(tmp_path: Path) -> None:
    data = tmp_path / "rv"
    async with rendezvous(data, "--mode", "invite") as process:
        address = RendezvousAddress.parse(process.info["address"])
        token = str((await asyncio.to_thread(admin_cli, data, "invite", "create"))["invite"])
        alice = Identity.generate()
        async with Transport(alice) as transport:
            client = RendezvousClient(
                transport, address, invite=parse_invite_token(token), timeout=5.0
            )
            for _ in range(100):  # the server polls the access version
                with contextlib.suppress(RefusedError):
                    await client.connect()
                    break
                await asyncio.sleep(0.05)
            conn = await client.connect()
            assert await client.search("") == []
            started = time.monotonic()
            await asyncio.to_thread(admin_cli, data, "ban", alice.peer_id.text())
            await asyncio.wait_for(asyncio.shield(conn.closed), 10)
            assert time.monotonic() - started < 10
            with pytest.raises(RefusedError) as refused:
                await client.search("")
            assert refused.value.code == "access.banned"
        listing = await asyncio.to_thread(admin_cli, data, "list")
        assert listing["banned"] == [alice.peer_id.text()] == listing["known"]
        assert process.stop(signal.SIGTERM) == 0
