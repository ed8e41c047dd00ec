"""The rendezvous service over a real SQLite store, with in-memory connections.

Transport-level behaviour (QUIC, auth, kill -9) is in test_rendezvous_quic.py; here every
request route is driven directly so the security properties are checked exhaustively and fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import envelope, records, wire
from node.crypto import random_bytes
from node.errors import PeerlineError
from node.identity import Identity, PeerId
from node.mailbox import MailboxLimits
from node.registry import AccessMode
from rendezvous import admin, db
from rendezvous import protocol as p
from rendezvous.protocol import parse_invite_token
from rendezvous.server import RendezvousService, ServiceConfig


class FakeConn:
    """What the service needs of a connection; records one-way frames and aborts."""

    def __init__(self, identity: Identity, port: int = 40000) -> None:
        self.peer_id: PeerId | None = identity.peer_id
        self.remote_address = ("127.0.0.1", port)
        self.sent: list[wire.Message] = []
        self.aborted: tuple[int, str] | None = None

    async def send(self, message: wire.Message, *, timeout: float | None = None) -> None:
        self.sent.append(message)

    def abort(self, code: int, reason: str) -> None:
        self.aborted = (code, reason)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, service: RendezvousService, clock: Clock, directory: Path) -> None:
        self.service, self.clock, self.directory = service, clock, directory

    def connect(self, identity: Identity, port: int = 40000) -> FakeConn:
        conn = FakeConn(identity, port)
        self.service.attach(conn)
        return conn

    async def ask(self, conn: FakeConn, message: wire.Message) -> wire.Message:
        reply = await self.service.handle(conn, message)
        assert reply is not None
        # Every reply must survive the wire unchanged.
        assert wire.decode_frame(wire.encode_frame(reply)[4:]) == reply
        return reply


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Make]:
    stack = contextlib.AsyncExitStack()

    async def make(config: ServiceConfig | None = None) -> Harness:
        store = await stack.enter_async_context(db.open_db(tmp_path))
        clock = Clock()
        service = RendezvousService(Identity.generate(), store, config, clock=clock)
        await stack.enter_async_context(service.run())
        return Harness(service, clock, tmp_path)

    async with stack:
        yield make


def refusal_code(reply: wire.Message) -> str:
    assert isinstance(reply, p.Refusal), reply
    return reply.code


def sealed(h: Harness, owner: PeerId, body: bytes, ttl: float = 14 * 86400) -> bytes:
    sender = Identity.generate().peer_id
    return envelope.seal(owner, sender, body, expires=int(h.clock.now + ttl), rng=random_bytes)


async def deposit_one(h: Harness, conn: FakeConn, data: bytes) -> wire.Message:
    """The single outcome of a one-envelope Deposit: a Receipt or a Refusal."""
    reply = await h.ask(conn, p.Deposit([data]))
    assert isinstance(reply, p.Deposited)
    if reply.receipt is not None:
        assert reply.refused == [] and len(reply.receipt.body.items) == 1
        return reply.receipt
    (refused,) = reply.refused
    assert refused.index == 0
    return refused.refusal


async def deposit(h: Harness, conn: FakeConn, owner: PeerId, body: bytes) -> wire.Message:
    return await deposit_one(h, conn, sealed(h, owner, body))


async def test_stranger_cannot_list_fetch_or_ack_another_mailbox(harness: Make) -> None:
    h = await harness()
    alice, mallory, bob = Identity.generate(), Identity.generate(), Identity.generate()
    bob_conn = h.connect(bob)
    receipts = [await deposit(h, bob_conn, alice.peer_id, b"sealed %d" % i) for i in range(5)]
    ids = [r.body.items[0].envelope_id for r in receipts if isinstance(r, p.Receipt)]
    assert len(ids) == 5
    alice_box = envelope.mailbox_id(alice.peer_id)
    mallory_box = envelope.mailbox_id(mallory.peer_id)
    evil = h.connect(mallory)
    successes = 0
    attempts: list[wire.Message] = [
        p.ListMailbox(alice_box, 100),
        p.Fetch(alice_box, [], 100, []),
        p.Fetch(alice_box, ids, 100, []),
        p.Fetch(alice_box, [], 100, ids),
        p.Ack(alice_box, ids),
        # Own mailbox, but naming Alice's envelope ids.
        p.Fetch(mallory_box, ids, 100, []),
        p.Fetch(mallory_box, [], 100, ids),
        p.Ack(mallory_box, ids),
        p.ListMailbox(mallory_box, 100),
    ]
    for attempt in attempts:
        reply = await h.ask(evil, attempt)
        if isinstance(reply, p.Envelopes):
            successes += len(reply.items) + reply.deleted
        elif isinstance(reply, p.Acked):
            successes += reply.deleted
        elif isinstance(reply, p.Listing):
            successes += len(reply.items)
        else:
            assert refusal_code(reply) == "mailbox.not_owner"
    assert successes == 0
    # Bob (the sender) cannot read what he deposited either.
    assert (
        refusal_code(await h.ask(bob_conn, p.Fetch(alice_box, ids, 10, []))) == "mailbox.not_owner"
    )
    owner = h.connect(alice)
    fetched = await h.ask(owner, p.Fetch(alice_box, [], 100, []))
    assert isinstance(fetched, p.Envelopes)
    opened = [envelope.open_envelope(alice, item.envelope) for item in fetched.items]
    assert [o.payload for o in opened] == [b"sealed %d" % i for i in range(5)]
    acked = await h.ask(owner, p.Ack(alice_box, ids))
    assert isinstance(acked, p.Acked) and acked.deleted == 5 and acked.remaining == 0
    assert await h.service.store.fetch_one("SELECT count(*) FROM envelopes") == (0,)


async def test_deposit_is_idempotent_with_verifiable_receipts_and_wakes_owner(
    harness: Make,
) -> None:
    h = await harness()
    alice, bob = Identity.generate(), Identity.generate()
    owner = h.connect(alice)
    sender = h.connect(bob)
    data = sealed(h, alice.peer_id, b"x" * 100)
    first, again = await asyncio.gather(
        deposit_one(h, sender, (data)), deposit_one(h, sender, (data))
    )
    assert isinstance(first, p.Receipt) and first == again
    body = p.verify_receipt(first, h.service.identity.peer_id)
    assert [item.envelope_id for item in body.items] == [envelope.envelope_id(data)]
    with pytest.raises(PeerlineError):
        p.verify_receipt(first, bob.peer_id)
    assert await h.service.store.fetch_one("SELECT count(*) FROM envelopes") == (1,)
    await asyncio.sleep(0)
    assert owner.sent == [p.Wake(1)]
    assert sender.sent == []


async def test_quota_ttl_and_rate_limits_say_why(harness: Make) -> None:
    limits = MailboxLimits(max_count=3, max_bytes=10_000, sender_burst=4, sender_rate=1.0)
    h = await harness(ServiceConfig(mailbox=limits))
    alice, bob = Identity.generate(), Identity.generate()
    sender = h.connect(bob)
    codes = []
    for i in range(6):
        reply = await deposit_one(h, sender, (sealed(h, alice.peer_id, b"m%d" % i, 60)))
        codes.append("stored" if isinstance(reply, p.Receipt) else refusal_code(reply))
    assert codes == ["stored"] * 3 + ["mailbox.full_count"] * 3
    too_long = sealed(h, alice.peer_id, b"y", 10**9)
    assert refusal_code(await deposit_one(h, sender, too_long)) == "mailbox.bad_ttl"
    expired = sealed(h, alice.peer_id, b"y", -1)
    assert refusal_code(await deposit_one(h, sender, expired)) == "mailbox.expired"
    other = Identity.generate().peer_id
    assert isinstance(await deposit_one(h, sender, (sealed(h, other, b"z"))), p.Receipt)
    rate = await deposit_one(h, sender, (sealed(h, other, b"zz")))  # burst of 4 is spent
    assert refusal_code(rate) == "mailbox.rate_limited"
    assert isinstance(rate, p.Refusal) and rate.retry_after is not None
    # TTL expiry deletes from disk at the next sweep.
    h.clock.now += 61
    await h.service._sweep()
    assert await h.service.store.fetch_one("SELECT count(*) FROM envelopes") == (1,)  # 14 days
    assert h.service.metrics.expired._value.get() == 3
    assert b'reason="mailbox.full_count"' in h.service.metrics.render()


async def test_presence_register_and_lookup_with_observed_address(harness: Make) -> None:
    h = await harness()
    alice, bob = Identity.generate(), Identity.generate()
    conn = h.connect(alice, port=41234)
    expires = int(h.clock.now) + 3600
    record = records.sign_record(alice, seq=1, expires=expires, addresses=[("10.0.0.2", 9)])
    reply = await h.ask(conn, p.Register(record.encode(), 10**6))
    assert isinstance(reply, p.Registered) and reply.expires_at == expires  # record expiry wins
    found = await h.ask(h.connect(bob), p.Lookup(alice.peer_id.key))
    assert found == p.LookupResult(record.encode(), p.ObservedAddress("127.0.0.1", 41234))
    # Bob cannot register Alice's record as his own, nor a forged or stale one.
    assert refusal_code(await h.ask(h.connect(bob), p.Register(record.encode(), None))) == (
        "record.wrong_peer"
    )
    tampered = bytearray(record.encode())
    tampered[-1] ^= 1
    assert refusal_code(await h.ask(conn, p.Register(bytes(tampered), None))) == (
        "record.bad_signature"
    )
    stale = records.sign_record(alice, seq=1, expires=expires + 1)
    newer = records.sign_record(alice, seq=2, expires=expires)
    assert isinstance(await h.ask(conn, p.Register(newer.encode(), None)), p.Registered)
    assert refusal_code(await h.ask(conn, p.Register(stale.encode(), None))) == "presence.stale"
    assert await h.ask(conn, p.Lookup(bob.peer_id.key)) == p.LookupResult(None, None)
    # Once Alice's last connection closes, the server forgets her address, not her record.
    h.service.detach(conn)
    found = await h.ask(h.connect(bob), p.Lookup(alice.peer_id.key))
    assert found == p.LookupResult(newer.encode(), None)


async def test_directory_publish_search_and_closed_accounts(harness: Make) -> None:
    h = await harness()
    alice, bob = Identity.generate(), Identity.generate()
    a, b = h.connect(alice), h.connect(bob)
    key = alice.peer_id.key
    await h.ask(a, p.Publish("account", key, "Alice Liddell", "hi", True, None))
    await h.ask(b, p.Publish("group", b"g" * 32, "Town Choir", "we sing", True, None))
    await h.ask(b, p.Publish("account", bob.peer_id.key, "Bob", "", False, None))  # closed
    found = await h.ask(b, p.Search("", 100))
    assert isinstance(found, p.SearchResult)
    assert sorted(e.name for e in found.entries) == ["Alice Liddell", "Town Choir"]
    assert refusal_code(await h.ask(b, p.Publish("account", key, "me", "", True, None))) == (
        "directory.not_owner"
    )
    assert refusal_code(await h.ask(b, p.Publish("nope", key, "x", "", True, None))) == (
        "directory.bad_kind"
    )
    await h.ask(a, p.Publish("account", key, "Alice Liddell", "hi", False, None))
    found = await h.ask(b, p.Search("alice", 100))
    assert isinstance(found, p.SearchResult) and found.entries == []


async def test_invite_mode_refuses_unknown_peers_until_invited(harness: Make) -> None:
    h = await harness(ServiceConfig(mode=AccessMode.INVITE, access_poll=0.02))
    alice, bob = Identity.generate(), Identity.generate()
    conn = h.connect(alice)
    lookup = p.Lookup(bob.peer_id.key)
    assert refusal_code(await h.ask(conn, lookup)) == "access.invite_required"
    assert refusal_code(await h.ask(conn, p.Hello(b"12345678"))) == "access.invite_invalid"
    token = await admin.create_invite(h.directory, uses=1, expires_in=3600, now=h.clock.now)
    await asyncio.sleep(0.1)  # the server polls the access version
    assert isinstance(await h.ask(conn, p.Hello(parse_invite_token(token))), p.Welcome)
    assert isinstance(await h.ask(conn, lookup), p.LookupResult)
    # Known now: a new connection needs no token; the token is used up for others.
    assert isinstance(await h.ask(h.connect(alice), lookup), p.LookupResult)
    assert refusal_code(await h.ask(h.connect(bob), p.Hello(parse_invite_token(token)))) == (
        "access.invite_used_up"
    )
    listing = await admin.listing(h.directory)
    assert listing.known == [alice.peer_id.text()] and listing.mode == "invite"


async def test_allowlist_and_bans_take_effect_at_once(harness: Make) -> None:
    h = await harness(ServiceConfig(mode=AccessMode.ALLOWLIST, access_poll=0.02))
    alice, bob = Identity.generate(), Identity.generate()
    conn = h.connect(alice)
    assert refusal_code(await h.ask(conn, p.Search("", 5))) == "access.not_allowed"
    await admin.allow(h.directory, alice.peer_id)
    await asyncio.sleep(0.1)
    assert isinstance(await h.ask(conn, p.Search("", 5)), p.SearchResult)
    bystander = h.connect(bob)
    await admin.ban(h.directory, alice.peer_id)
    for _ in range(50):
        if conn.aborted:
            break
        await asyncio.sleep(0.02)
    assert conn.aborted is not None and "access.banned" in conn.aborted[1]
    assert bystander.aborted is None
    assert refusal_code(await h.ask(h.connect(alice), p.Search("", 5))) == "access.banned"
    await admin.deny(h.directory, alice.peer_id)
    listing = await admin.listing(h.directory)
    assert listing.banned == [alice.peer_id.text()] and listing.allowed == []


async def test_malformed_and_unexpected_requests_are_refused_and_others_served(
    harness: Make,
) -> None:
    h = await harness()
    alice, bob = Identity.generate(), Identity.generate()
    evil, good = h.connect(alice), h.connect(bob)
    receipt = p.sign_receipt(h.service.identity, p.ReceiptBody(bytes(32), []))
    bad: list[wire.Message] = [
        p.Register(b"\x00garbage", None),
        p.Register(b"\x93" * 3000, 5),
        receipt,
        p.Wake(3),
        p.Welcome("open", 1.0),
        p.Refusal("x", "y", None),
        p.Publish("group", b"g" * 32, "   ", "", True, None),
        p.Publish("account", bob.peer_id.key, "Bob", "", True, None),
        p.Deposit([b"not an envelope"]),
        p.Deposit([b"\x02" + sealed(h, bob.peer_id, b"m")[1:]]),  # unknown envelope version
    ]
    for message in bad:
        reply = await h.ask(evil, message)
        if isinstance(reply, p.Deposited):
            assert reply.receipt is None
            reply = reply.refused[0].refusal
        assert isinstance(reply, p.Refusal) and reply.code, message
    stored = await deposit(h, good, alice.peer_id, b"still works")
    assert isinstance(stored, p.Receipt)
    stranger = FakeConn(Identity.generate())
    assert refusal_code(await h.ask(stranger, p.Search("", 1))) == "server.not_attached"


async def test_batched_deposit_has_one_outcome_per_envelope(harness: Make) -> None:
    h = await harness()
    alice, bob = Identity.generate(), Identity.generate()
    sender = h.connect(bob)
    good = sealed(h, alice.peer_id, b"one")
    last = sealed(h, bob.peer_id, b"two")
    reply = await h.ask(sender, p.Deposit([good, b"junk", good, last]))
    assert isinstance(reply, p.Deposited) and reply.receipt is not None
    assert [(r.index, r.refusal.code) for r in reply.refused] == [(1, "envelope.malformed")]
    items = reply.receipt.body.items
    assert [i.envelope_id for i in items] == [envelope.envelope_id(d) for d in (good, good, last)]
    assert await h.service.store.fetch_one("SELECT count(*) FROM envelopes") == (2,)


# --------------------------------------------------------------------------- any request


def strategy_for(spec: wire.Spec[Any]) -> st.SearchStrategy[Any]:
    """Values that pass a wire spec (so the request decodes and reaches the service)."""
    if isinstance(spec, wire.Bytes):
        high = min(spec.max or 0, 600)
        return st.binary(min_size=spec.min, max_size=max(spec.min, high))
    if isinstance(spec, wire.Str):
        return st.text(min_size=spec.min, max_size=min(spec.max, 40))
    if isinstance(spec, wire.Int):
        return st.integers(spec.min, spec.max)
    if isinstance(spec, wire.Float):
        return st.floats(spec.min, spec.max, allow_nan=False)
    if isinstance(spec, wire.Bool):
        return st.booleans()
    if isinstance(spec, wire.Maybe):
        return st.none() | strategy_for(spec.inner)
    if isinstance(spec, wire.ListOf):
        return st.lists(strategy_for(spec.inner), max_size=min(spec.max_items, 4))
    assert isinstance(spec, wire.Nested)
    return message_strategy(spec.cls)


def message_strategy(cls: type[wire.Message]) -> st.SearchStrategy[Any]:
    fields = [strategy_for(spec) for _, spec in cls._compiled()]
    return st.tuples(*fields).map(lambda args: cls(*args))


ANY_FRAME = st.one_of(
    *(
        message_strategy(cls)
        for type_id, cls in wire.REGISTRY.types().items()
        if 0x30 <= type_id <= 0x4F
    )
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ANY_FRAME, min_size=1, max_size=12))
def test_any_well_typed_request_gets_a_reply_and_the_server_keeps_serving(
    messages: list[wire.Message],
) -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with db.open_db(Path(tmp)) as store:
                service = RendezvousService(Identity.generate(), store)
                async with service.run():
                    h = Harness(service, Clock(), Path(tmp))
                    alice, bob = Identity.generate(), Identity.generate()
                    evil, good = h.connect(alice), h.connect(bob)
                    for message in messages:
                        reply = await h.ask(evil, message)
                        assert reply.type_id >= 0
                    stored = await deposit(h, good, alice.peer_id, b"still served")
                    assert isinstance(stored, p.Receipt)

    asyncio.run(scenario())
