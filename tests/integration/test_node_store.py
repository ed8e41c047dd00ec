"""Contacts and history on a real SQLite store: resolution, policy, queue, order, paging."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.contacts import Contacts, Target
from node.errors import NotFoundError, UsageError
from node.history import History
from node.identity import Identity
from node.invite import format_invite, make_invite
from node.messaging import ChatText
from node.store import Store

_R = random.Random(3)
ME, BOB, CAROL = (Identity.generate(_R.randbytes) for _ in range(3))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "db") as opened:
        yield opened


async def test_resolve_alias_peer_id_invite_and_me(store: Store) -> None:
    contacts = Contacts(store, ME.peer_id)
    link = format_invite(make_invite(BOB, "Bob", ["127.0.0.1:9"], ["127.0.0.1:7"]))
    target = await contacts.resolve(link)
    assert target.peer_id == BOB.peer_id
    contact = await contacts.add(target, alias="bobby", name=None, now=1.0)
    assert contact.name == "Bob" and contact.addresses == ("127.0.0.1:9",)
    assert (await contacts.resolve("Bobby")).peer_id == BOB.peer_id
    assert (await contacts.resolve(BOB.peer_id.text())).peer_id == BOB.peer_id
    assert (await contacts.resolve("me")).peer_id == ME.peer_id
    with pytest.raises(NotFoundError):
        await contacts.resolve("nobody")
    with pytest.raises(UsageError):
        await contacts.add(Target(CAROL.peer_id), alias="bobby", name=None, now=2.0)
    with pytest.raises(UsageError):
        await contacts.add(Target(CAROL.peer_id), alias="me", name=None, now=2.0)
    await contacts.set_blocked(CAROL.peer_id, True, now=3.0)
    carol = await contacts.get(CAROL.peer_id)
    assert carol is not None and carol.blocked
    await contacts.remove(BOB.peer_id)
    assert await contacts.get(BOB.peer_id) is None


async def test_policy_and_visibility_settings(store: Store) -> None:
    contacts = Contacts(store, ME.peer_id)
    assert await contacts.policy() == "confirm"
    assert await contacts.visibility() == "closed"
    await contacts.set_policy("deny")
    await contacts.set_visibility("open")
    assert await contacts.policy() == "deny"
    assert await contacts.visibility() == "open"
    with pytest.raises(UsageError):
        await contacts.set_policy("maybe")


async def test_queue_assigns_sequence_numbers_and_pages_newest_first(store: Store) -> None:
    history = History(store, ME.peer_id)
    for i in range(7):
        ops = history.queue_ops(
            BOB.peer_id, bytes([i]) * 16, f"m{i}", now=float(i), ttl=None, lifetime=100.0
        )
        await store.write(ops)
    texts = await history.chat_texts([bytes([i]) * 16 for i in range(7)])
    assert [texts[bytes([i]) * 16].seq for i in range(7)] == list(range(1, 8))
    entries = await history.outbox_entries()
    assert len(entries) == 7 and all(e.state == "queued" for e in entries)
    page, cursor = await history.page(BOB.peer_id, limit=3)
    assert [m.text for m in page] == ["m6", "m5", "m4"] and cursor is not None
    page, cursor = await history.page(BOB.peer_id, limit=3, before=cursor)
    assert [m.text for m in page] == ["m3", "m2", "m1"]
    page, cursor = await history.page(BOB.peer_id, limit=3, before=cursor)
    assert [m.text for m in page] == ["m0"] and cursor is None
    await store.write(history.state_ops(bytes([0]) * 16, "delivered"))
    await store.write(history.state_ops(bytes([0]) * 16, "sent"))  # never backwards
    page, _ = await history.page(BOB.peer_id, limit=50)
    assert page[-1].state == "delivered"
    assert await history.queued_count() == 6


async def test_receive_hold_release_read_search_delete(store: Store) -> None:
    history = History(store, ME.peer_id)
    first, second = (ChatText(bytes([i]) * 16, i, 1.0, f"hello {i} 🌻", None) for i in (1, 2))
    await store.write(
        [
            history.ensure_conversation_op(CAROL.peer_id, "request", 5.0),
            history.hold_op(CAROL.peer_id, second, 5.0),
        ]
    )
    assert await history.held(CAROL.peer_id) == [second]
    assert await history.known_ids([second.message_id, first.message_id]) == {second.message_id}
    await store.write(
        history.release_ops(CAROL.peer_id, first, 6.0)
        + history.release_ops(CAROL.peer_id, second, 6.0)
    )
    info = await history.require(CAROL.peer_id)
    assert info.status == "request" and info.recv_seq == 2
    requests = await history.requests()
    assert (
        len(requests) == 1
        and requests[0].count == 2
        and requests[0].first_text.startswith("hello 1")
    )
    assert await history.search("hello") == []  # requests stay out of search until accepted
    await store.write([history.status_op(CAROL.peer_id, "accepted")])
    found = await history.search("HELLO 2")
    assert [m.text for m in found] == ["hello 2 🌻"]
    unread = await history.unread(CAROL.peer_id)
    await store.write(history.read_ops(unread, info))
    assert await history.unread(CAROL.peer_id) == []
    assert await history.delete(CAROL.peer_id) == 2
    assert await history.conversation(CAROL.peer_id) is None


async def test_note_to_self_is_stored_delivered_without_outbox(store: Store) -> None:
    history = History(store, ME.peer_id)
    await store.write(
        history.queue_ops(ME.peer_id, b"n" * 16, "note", now=1.0, ttl=5.0, lifetime=10.0)
    )
    page, _ = await history.page(ME.peer_id)
    assert [(m.text, m.state) for m in page] == [("note", "delivered")]
    assert await history.queued_count() == 0
    await store.write(history.expire_ops(7.0))
    assert (await history.page(ME.peer_id))[0] == []
