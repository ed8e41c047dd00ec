"""Real QUIC on loopback: authenticated connections, channels, impersonation attempts."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from node import transport as transport_module
from node import wire
from node.auth import AuthProof, DialerAuth
from node.bulk import BulkStream
from node.certificate import self_signed_certificate
from node.channel import CloseCode
from node.config import TransportConfig
from node.connection import Connection
from node.errors import (
    AuthenticationError,
    DialError,
    LocalProtocolError,
    OperationTimeoutError,
    PeerlineError,
    RequestFailedError,
)
from node.identity import Identity, PeerId
from node.transport import Transport, peer_certificate_key
from tests.integration.transport_kit import FAST, Blob, Note, Spy, running

pytestmark = pytest.mark.integration


async def _closed(conn: Connection, seconds: float = 5.0) -> CloseCode | int:
    async with asyncio.timeout(seconds):
        return (await conn.wait_closed()).code


# --------------------------------------------------------------------------- connections


async def test_dial_authenticates_both_sides_and_requests_flow_both_ways() -> None:
    spy_a, spy_b = Spy(), Spy()
    async with running() as a, running() as b:
        spy_a.watch(a), spy_b.watch(b)
        conn = await a.dial(b.peer_id, [b.address])
        assert conn.peer_id == b.peer_id and conn.is_dialer
        assert await conn.request(Note("hi")) == Note("re:hi")
        back = b.connection(a.peer_id)
        assert back is not None and back.peer_id == a.peer_id and not back.is_dialer
        assert back.remote_address[0] == "127.0.0.1"
        assert await back.request(Note("yo")) == Note("re:yo")
        assert spy_a.connections == [conn] and spy_b.connections == [back]
        assert await b.dial(a.peer_id, [a.address]) is back  # reuses the live connection
        assert await a.dial(b.peer_id, [b.address]) is conn


async def test_dual_stack_socket_reaches_ipv4_and_ipv6_peers() -> None:
    dual = Transport(Identity.generate(), FAST)
    await dual.start("::", 0)
    try:
        async with running() as v4:
            v6 = Transport(Identity.generate(), FAST)
            await v6.start("::1", 0)
            try:
                for node in (v4, v6):
                    Spy().watch(node)
                conn = await dual.dial(v4.peer_id, [v4.address])
                assert conn.remote_address == v4.address  # shown without the ::ffff: prefix
                assert await conn.request(Note("4")) == Note("re:4")
                conn6 = await dual.dial(v6.peer_id, [v6.address])
                assert await conn6.request(Note("6")) == Note("re:6")
                with pytest.raises(DialError) as wrong_family:
                    await v4.dial(v6.peer_id, [v6.address])
                cause = wrong_family.value.__cause__
                assert isinstance(cause, DialError) and cause.code == "dial.bad_address"
            finally:
                await v6.aclose()
    finally:
        await dual.aclose()


async def test_simultaneous_dials_settle_on_one_connection() -> None:
    async with running() as a, running() as b:
        for node in (a, b):
            Spy().watch(node)
        conn_a, conn_b = await asyncio.gather(
            a.dial(b.peer_id, [b.address]), b.dial(a.peer_id, [a.address])
        )
        await asyncio.sleep(0.2)  # let the losing connection's close arrive
        assert a.connections == [conn_a] and b.connections == [conn_b]
        smaller = min(a.peer_id, b.peer_id, key=lambda p: p.key)
        assert conn_a.is_dialer == (smaller == a.peer_id)
        assert conn_b.is_dialer == (smaller == b.peer_id)
        assert await conn_a.request(Note("1")) == Note("re:1")
        assert await conn_b.request(Note("2")) == Note("re:2")


async def test_one_way_frames_are_handled_in_order_before_a_graceful_close() -> None:
    spy = Spy()
    async with running() as a, running() as b:
        spy.watch(b)
        conn = await a.dial(b.peer_id, [b.address])
        for i in range(500):
            await conn.send(Note(str(i)))
        await conn.close(CloseCode.NORMAL, "test.done: finished")
        assert spy.messages == [Note(str(i)) for i in range(500)]
        info = conn.closed.result()
        assert info.code == CloseCode.NORMAL and not info.by_peer
        peer_side = spy.connections[0]
        peer_info = await peer_side.wait_closed()
        assert peer_info.by_peer and peer_info.reason == "test.done: finished"
        with pytest.raises(PeerlineError) as error:
            await conn.send(Note("late"))
        assert error.value.code == "transport.closed"


async def test_request_failures_timeouts_and_unhandled_requests() -> None:
    async with running() as a, running() as b:
        Spy().watch(b)
        conn = await a.dial(b.peer_id, [b.address])
        with pytest.raises(RequestFailedError) as failed:
            await conn.request(Note("fail"))
        assert failed.value.code == "test.refused"
        with pytest.raises(OperationTimeoutError) as timed_out:
            await conn.request(Note("slow"), timeout=0.05)
        assert timed_out.value.code == "request.timeout"
        assert await conn.request(Note("after")) == Note("re:after")  # late reply was dropped
        b.connections[0].set_handler(None)
        with pytest.raises(RequestFailedError) as unhandled:
            await conn.request(Note("nobody"))
        assert unhandled.value.code == "request.unhandled"
        with pytest.raises(LocalProtocolError) as too_big:
            await conn.send(Blob(bytes(FAST.max_frame_size)))
        assert too_big.value.code == "limit.frame_size"


async def test_bulk_stream_round_trip_is_bounded_by_its_window() -> None:
    config = TransportConfig(
        dial_attempts=1,
        max_frame_size=64 * 1024,
        bulk_window=128 * 1024,
        control_window=1 << 17,
        quic_handshake_window=64 * 1024,
        quic_stream_window=128 * 1024,
        quic_connection_window=256 * 1024,
    )
    payload = bytes(range(256)) * 4096  # 1 MiB: four times the QUIC connection window
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    peak = 0

    async def slow_reader(conn: Connection, header: wire.Message, stream: BulkStream) -> None:
        nonlocal peak
        assert header == Note("file")
        parts = []
        while chunk := await stream.read():
            peak = max(peak, stream._recv.held)
            parts.append(chunk)
            await asyncio.sleep(0)
        await stream.write(b"thanks")
        await stream.close()
        received.set_result(b"".join(parts))

    async with running(config) as a, running(config) as b:
        b.set_bulk_handler(slow_reader)
        conn = await a.dial(b.peer_id, [b.address])
        stream = await conn.open_bulk(Note("file"))
        await stream.write(payload)
        await stream.close()
        assert await stream.read_all(limit=100) == b"thanks"
        assert await asyncio.wait_for(received, 10) == payload
        assert peak <= config.bulk_window


async def test_peer_certificate_key_is_the_pinned_identity() -> None:
    async with running() as a, running() as b:
        await a.dial(b.peer_id, [b.address])
        (link,) = a._links
        assert peer_certificate_key(link.quic) == b.peer_id.key
        assert peer_certificate_key(object()) is None  # type: ignore[arg-type]


async def test_dial_tries_every_address_and_backs_off_between_rounds() -> None:
    config = TransportConfig(
        dial_attempts=2, handshake_timeout=0.3, backoff_initial=0.05, backoff_max=0.1
    )
    async with running(config) as a, running(config) as b, running(config) as dead:
        Spy().watch(b)
        dead_address = dead.address
        await dead.aclose()
        conn = await a.dial(b.peer_id, [dead_address, b.address])
        assert conn.peer_id == b.peer_id
        stranger = Identity.generate().peer_id
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DialError) as failed:
            await a.dial(stranger, [dead_address])
        assert failed.value.code == "dial.timeout"
        assert loop.time() - started >= 2 * 0.3 + 0.025  # two attempts and one backoff
        with pytest.raises(DialError):
            await a.dial(stranger, [])
        with pytest.raises(LocalProtocolError):
            await a.dial(a.peer_id, [a.address])


async def test_maintain_reconnects_with_backoff_until_cancelled() -> None:
    config = TransportConfig(
        dial_attempts=1, handshake_timeout=0.3, backoff_initial=0.05, backoff_max=0.2
    )
    b_identity = Identity.generate()
    connected: list[Connection] = []
    again = asyncio.Event()

    async def registered(conn: Connection) -> None:
        connected.append(conn)
        again.set()

    async with running(config) as a:
        async with running(config, b_identity) as b:
            Spy().watch(b)
            address = b.address
            keeper = asyncio.create_task(a.maintain(b.peer_id, lambda: [address], registered))
            await asyncio.wait_for(again.wait(), 5)
            again.clear()
            connected[0].abort(CloseCode.NORMAL, "test.drop: once")
            await asyncio.wait_for(again.wait(), 5)  # reconnected by itself
            again.clear()
        # b is gone: the keeper retries with backoff; b comes back on the same address
        await asyncio.sleep(0.4)
        b2 = Transport(b_identity, config)
        await b2.start(*address)
        try:
            Spy().watch(b2)
            await asyncio.wait_for(again.wait(), 5)
            assert len(connected) == 3 and connected[-1].is_open
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await b2.aclose()


async def test_keepalive_holds_an_idle_connection_and_a_silent_peer_idles_out() -> None:
    config = TransportConfig(dial_attempts=1, idle_timeout=0.3)
    async with running(config) as a, running(config) as b:
        Spy().watch(b)
        conn = await a.dial(b.peer_id, [b.address])
        await asyncio.sleep(0.9)  # three idle timeouts: only the pings keep it open
        assert conn.is_open and await conn.request(Note("still")) == Note("re:still")
        assert b._sock is not None  # the peer vanishes without a close:
        b.loop.remove_reader(b._sock.fileno())
        b._sock.close()
        assert await _closed(conn, 3.0) is not None
        assert a.connections == []


async def test_shutdown_closes_connections_and_leaves_no_tasks() -> None:
    before = asyncio.all_tasks()
    a = Transport(Identity.generate(), FAST)
    await a.start()
    async with running() as b:
        Spy().watch(b)
        conn = await a.dial(b.peer_id, [b.address])
        await a.aclose()
        assert conn.closed.result().reason.startswith("transport.shutdown")
        await asyncio.sleep(0.1)
        assert b.connections == []
    assert asyncio.all_tasks() == before
    with pytest.raises(LocalProtocolError):
        await a.dial(b.peer_id, [b.address])


# --------------------------------------------------------------------------- impersonation


def _assert_untouched(spy: Spy, node: Transport) -> None:
    assert spy.messages == [] and spy.connections == [] and node.connections == []


async def _refused(dialer: Transport, peer: PeerId, address: tuple[str, int]) -> str:
    with pytest.raises(AuthenticationError) as error:
        await dialer.dial(peer, [address])
    return error.value.code


async def test_wrong_listener_key_aborts_before_proving_anything() -> None:
    spy = Spy()
    async with running() as a, running() as impostor:
        spy.watch(impostor)
        expected = Identity.generate().peer_id
        assert await _refused(a, expected, impostor.address) == "auth.pin_mismatch"
        await asyncio.sleep(0.1)
        _assert_untouched(spy, impostor)


async def test_certificate_without_its_private_key_fails_the_tls_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    victim, mallory = Identity.generate(), Identity.generate()
    stolen_certificate, _ = self_signed_certificate(victim)
    _, mallory_key = self_signed_certificate(mallory)
    monkeypatch.setattr(
        transport_module, "self_signed_certificate", lambda _: (stolen_certificate, mallory_key)
    )
    spy = Spy()
    async with running(identity=mallory) as impostor:
        monkeypatch.undo()
        spy.watch(impostor)
        async with running() as a:
            assert await _refused(a, victim.peer_id, impostor.address) == "auth.tls"
        _assert_untouched(spy, impostor)


async def test_dialer_that_never_proves_itself_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DialerAuth, "_maybe_prove", lambda self: None)
    spy = Spy()
    patient = TransportConfig(dial_attempts=1, handshake_timeout=5.0)
    async with running(TransportConfig(handshake_timeout=0.3)) as b, running(patient) as mallory:
        spy.watch(b)
        started = asyncio.get_running_loop().time()
        with pytest.raises(DialError) as error:
            await mallory.dial(b.peer_id, [b.address])
        assert error.value.code == "dial.timeout"
        assert isinstance(error.value.__cause__, PeerlineError)
        assert error.value.__cause__.code == "auth.timeout"
        assert asyncio.get_running_loop().time() - started < 2.0  # the listener cut it off
        _assert_untouched(spy, b)
        assert b._links == set() or all(link.connection for link in b._links)


async def test_application_frame_before_the_proof_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def rude(self: DialerAuth) -> None:
        if self._pinned and not self._proof_sent:
            self._proof_sent = True
            self._outbox.append(Note("let me in"))

    monkeypatch.setattr(DialerAuth, "_maybe_prove", rude)
    spy = Spy()
    async with running() as b, running() as mallory:
        spy.watch(b)
        assert await _refused(mallory, b.peer_id, b.address) == "auth.unexpected_frame"
        _assert_untouched(spy, b)


async def test_proof_replayed_from_another_connection_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captured: list[AuthProof] = []
    honest = DialerAuth.make_proof

    def recording(self: DialerAuth, listener: PeerId, challenge: bytes) -> AuthProof:
        captured.append(honest(self, listener, challenge))
        return captured[-1]

    spy = Spy()
    async with running() as b, running() as victim, running() as mallory:
        monkeypatch.setattr(DialerAuth, "make_proof", recording)
        await victim.dial(b.peer_id, [b.address])  # a genuine proof, seen on the wire
        spy.watch(b)
        monkeypatch.setattr(DialerAuth, "make_proof", lambda *_: captured[0])
        assert await _refused(mallory, b.peer_id, b.address) == "auth.bad_proof"
        assert spy.messages == [] and spy.connections == []
        assert [c.peer_id for c in b.connections] == [victim.peer_id]


async def test_proof_made_for_another_listener_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = Spy()
    async with running() as b, running() as other, running() as mallory:
        spy.watch(b)
        honest = DialerAuth.make_proof

        def redirected(self: DialerAuth, _listener: PeerId, challenge: bytes) -> AuthProof:
            return honest(self, other.peer_id, challenge)

        monkeypatch.setattr(DialerAuth, "make_proof", redirected)
        assert await _refused(mallory, b.peer_id, b.address) == "auth.bad_proof"
        _assert_untouched(spy, b)
