"""A rendezvous server and its clients over real QUIC on loopback, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dht.node import DhtConfig, DhtNode
from dht.values import PeerRecordValidator
from node import envelope, records
from node.auth import AuthOk
from node.backoff import Backoff
from node.crypto import random_bytes
from node.errors import RefusedError, RemoteProtocolError
from node.identity import Identity, PeerId
from node.registry import AccessMode
from node.transport import Transport
from rendezvous import admin
from rendezvous.client import RendezvousClient
from rendezvous.process import ServeOptions, read_address, serve
from rendezvous.protocol import (
    Deposit,
    Deposited,
    Refusal,
    RendezvousAddress,
    Wake,
    parse_invite_token,
)
from rendezvous.server import ServiceConfig


@dataclass
class Running:
    address: RendezvousAddress
    info: dict[str, object]
    directory: Path
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 20)


@contextlib.asynccontextmanager
async def running_server(
    directory: Path,
    mode: AccessMode = AccessMode.OPEN,
    listen: tuple[str, int] = ("127.0.0.1", 0),
) -> AsyncIterator[Running]:
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
    options = ServeOptions(directory, listen, service=ServiceConfig(mode=mode, access_poll=0.02))
    task = asyncio.create_task(serve(options, ready.set_result, stop))
    try:
        info = await asyncio.wait_for(asyncio.shield(ready), 20)
        address = RendezvousAddress.parse(str(info["address"]))
        yield Running(address, info, directory, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def client(
    server: Running, identity: Identity | None = None, invite: bytes | None = None
) -> AsyncIterator[RendezvousClient]:
    async with Transport(identity or Identity.generate()) as transport:
        yield RendezvousClient(transport, server.address, invite=invite, timeout=5.0)


def sealed(owner: PeerId, body: bytes) -> bytes:
    sender = Identity.generate().peer_id
    return envelope.seal(owner, sender, body, expires=int(time.time()) + 3600, rng=random_bytes)


async def test_register_lookup_deposit_and_drain_on_wake(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        assert await read_address(tmp_path) == server.address
        alice = Identity.generate()
        record = records.sign_record(
            alice, seq=1, expires=int(time.time()) + 600, addresses=[("10.1.2.3", 7000)]
        )
        inbox: dict[bytes, bytes] = {}
        got = asyncio.Event()

        async def store(envelope_id: bytes, data: bytes) -> None:
            inbox[envelope_id] = data
            if len(inbox) == 3:
                got.set()

        async with client(server, alice) as a, client(server) as b:
            runner = asyncio.create_task(a.run(lambda: record, store))
            try:
                for _ in range(100):
                    found = await b.lookup(alice.peer_id)
                    if found.record is not None:
                        break
                    await asyncio.sleep(0.02)
                assert found.record == record and found.observed is not None
                assert found.observed[0] == "127.0.0.1"
                addresses = await b.addresses(alice.peer_id)
                assert addresses[0] == found.observed and ("10.1.2.3", 7000) in addresses
                envelopes = [sealed(alice.peer_id, b"hello %d" % i) for i in range(3)]
                receipts = [await b.deposit(e) for e in envelopes]
                assert [r.envelope_id for r in receipts] == [
                    envelope.envelope_id(e) for e in envelopes
                ]
                await asyncio.wait_for(got.wait(), 10)
                assert sorted(inbox.values()) == sorted(envelopes)
                for _ in range(100):
                    if (await a.pending()).total == 0:
                        break
                    await asyncio.sleep(0.02)
                assert (await a.pending()).total == 0
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)


async def test_drain_acks_only_what_was_stored(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        alice = Identity.generate()
        async with client(server, alice) as a, client(server) as b:
            for i in range(5):
                await b.deposit(sealed(alice.peer_id, b"m%d" % i))
            seen: list[bytes] = []

            async def flaky(envelope_id: bytes, data: bytes) -> None:
                if len(seen) == 2:
                    raise OSError("disk full")
                seen.append(envelope_id)

            with pytest.raises(OSError):
                await a.drain(flaky)
            assert (await a.pending()).total == 3
            kept: list[bytes] = []

            async def good(envelope_id: bytes, data: bytes) -> None:
                kept.append(envelope_id)

            assert await a.drain(good, batch=2) == 3
            assert set(kept).isdisjoint(seen) and len(kept) == 3


async def test_invite_mode_and_ban_over_quic(tmp_path: Path) -> None:
    async with running_server(tmp_path, AccessMode.INVITE) as server:
        alice = Identity.generate()
        async with client(server, alice) as stranger:
            with pytest.raises(RefusedError) as refused:
                await stranger.search("")
            assert refused.value.code == "access.invite_required"
        token = await admin.create_invite(tmp_path, uses=2, expires_in=60, now=time.time())
        await asyncio.sleep(0.1)
        async with client(server, alice, parse_invite_token(token)) as invited:
            assert await invited.search("") == []
            conn = await invited.connect()
            await admin.ban(tmp_path, alice.peer_id)
            await asyncio.wait_for(asyncio.shield(conn.closed), 5)
            with pytest.raises(RefusedError) as banned:
                await invited.search("")
            assert banned.value.code == "access.banned"
        async with client(server) as other:
            with pytest.raises(RefusedError) as refused:
                await other.search("")
            assert refused.value.code == "access.invite_required"


async def test_unexpected_frames_are_refused_and_the_server_keeps_serving(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path) as server,
        client(server) as evil,
        client(server) as good,
    ):
        conn = await evil.connect()
        # A rendezvous message that is not a request: refused with a reason code.
        reply = await conn.request(Wake(1))
        assert isinstance(reply, Refusal) and reply.code == "request.unexpected"
        reply = await conn.request(Deposit([b"\x01" * 300]))
        assert isinstance(reply, Deposited) and reply.receipt is None
        assert reply.refused[0].refusal.code.startswith("envelope.")
        # A frame that is illegal on the control stream: that connection is closed with a
        # reason, everyone else is served, and the offender may reconnect.
        with pytest.raises(RemoteProtocolError, match=r"channel\.protocol"):
            await conn.request(AuthOk())
        assert await good.search("") == []
        assert await evil.search("") == []


async def test_dht_bootstrap_from_the_server(tmp_path: Path) -> None:
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
    options = ServeOptions(tmp_path, ("127.0.0.1", 0), dht_listen=("127.0.0.1", 0))
    task = asyncio.create_task(serve(options, ready.set_result, stop))
    try:
        info = await asyncio.wait_for(asyncio.shield(ready), 20)
        host, _, port = str(info["dht"]).rpartition(":")
        alice = Identity.generate()
        record = records.sign_record(alice, seq=3, expires=int(time.time()) + 600)
        key = records.discovery_key(alice.peer_id)
        configs = [DhtConfig(host="127.0.0.1", bootstrap=((host, int(port)),)) for _ in range(2)]
        async with DhtNode(configs[0], PeerRecordValidator()) as a:
            assert await a.publish(key, record.encode()) >= 1  # at least the server accepted it
            async with DhtNode(configs[1], PeerRecordValidator()) as b:
                assert await b.get(key) == record.encode()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_client_run_registers_again_after_a_server_restart(tmp_path: Path) -> None:
    alice = Identity.generate()
    record = records.sign_record(alice, seq=1, expires=int(time.time()) + 600)

    async def nothing(envelope_id: bytes, data: bytes) -> None:
        raise AssertionError("no envelopes expected")

    async def registered(server: Running) -> bool:
        async with client(server) as looker:
            for _ in range(200):
                if (await looker.lookup(alice.peer_id)).record == record:
                    return True
                await asyncio.sleep(0.02)
        return False

    async with running_server(tmp_path) as first:
        address = first.address
        async with Transport(alice) as transport:
            node = RendezvousClient(transport, address, timeout=2.0)
            runner = asyncio.create_task(
                node.run(lambda: record, nothing, backoff=Backoff(0.05, 0.2, 2.0, 0.0))
            )
            try:
                assert await registered(first)
                await first.stop()
                async with running_server(tmp_path, listen=(address.host, address.port)) as again:
                    assert again.address == address
                    assert await registered(again)  # presence is in memory: re-registered
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
