"""Pure messaging core: states, text limits, outbox schedule, receive order, receipts, policy."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import wire
from node.backoff import Backoff
from node.errors import InvalidSignatureError, RemoteProtocolError, UsageError
from node.identity import Identity, PeerId
from node.messaging import (
    MAX_TEXT_BYTES,
    STATES,
    Attempt,
    ChatText,
    Deliver,
    Expired,
    Outbox,
    OutboxEntry,
    Receipt,
    ReceiptKind,
    ReceiveOrder,
    Refused,
    RetryPolicy,
    StateChanged,
    Verdict,
    check_text,
    check_ttl,
    decide,
    make_receipt,
    merge_state,
    new_message_id,
    verify_receipt,
)


def seeded_rng(seed: int) -> random.Random:
    return random.Random(seed)


def rng_of(r: random.Random) -> Callable[[int], bytes]:
    return r.randbytes


# --------------------------------------------------------------------------- states, text


def test_states_never_move_backwards() -> None:
    assert merge_state("delivered", "sent") == "delivered"
    assert merge_state("sent", "stored") == "stored"
    assert merge_state("read", "delivered") == "read"
    assert merge_state("stored", "failed") == "failed"
    assert merge_state("delivered", "failed") == "delivered"
    assert merge_state("failed", "delivered") == "delivered"
    assert merge_state("failed", "sent") == "failed"


@given(st.lists(st.sampled_from(STATES), max_size=8))
def test_merge_is_monotone(reports: list[str]) -> None:
    order = {"queued": 0, "sent": 1, "stored": 2, "delivered": 3, "read": 4}
    state = "queued"
    for new in reports:
        after = merge_state(state, new)  # type: ignore[arg-type]
        if state in ("delivered", "read"):
            assert after != "failed" and order[after] >= order[state]
        state = after


def test_text_limits() -> None:
    assert check_text("héllo 👋") == "héllo 👋"
    assert check_text("a" * MAX_TEXT_BYTES)
    for bad, code in [
        ("", "message.empty"),
        ("  \n", "message.empty"),
        ("a" * (MAX_TEXT_BYTES + 1), "message.too_long"),
        ("👋" * (MAX_TEXT_BYTES // 4 + 1), "message.too_long"),
        ("\ud800", "message.bad_text"),
    ]:
        with pytest.raises(UsageError) as info:
            check_text(bad)
        assert info.value.code == code
    assert check_ttl(None) is None and check_ttl(60) == 60
    with pytest.raises(UsageError):
        check_ttl(0)


def test_message_ids_are_random_and_sized() -> None:
    r = seeded_rng(1)
    ids = {new_message_id(rng_of(r)) for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 16 for i in ids)


def test_frames_round_trip_and_reject_garbage() -> None:
    frames: list[wire.Message] = [
        ChatText(b"i" * 16, 1, 1.5, "hi 👋", None),
        ChatText(b"i" * 16, 7, 1.5, "x", 30.0),
        Deliver(b"i" * 16, b"ciphertext"),
        Refused([b"i" * 16], "policy.denied"),
    ]
    decoder = wire.FrameDecoder()
    for message in frames:
        assert decoder.feed(wire.encode_frame(message)) == [message]
    with pytest.raises(RemoteProtocolError):
        ChatText.from_wire([b"i" * 16, 0, 1.5, "x", None])  # seq starts at 1
    with pytest.raises(RemoteProtocolError):
        ChatText.from_wire([b"i" * 16, 1, 1.5, "", None])  # empty text


# --------------------------------------------------------------------------- outbox


def entry(mid: bytes, now: float = 0.0, lifetime: float = 3600.0) -> OutboxEntry:
    return OutboxEntry(mid, b"r" * 32, expires_at=now + lifetime, next_attempt_at=now)


def drain(outbox: Outbox) -> list[object]:
    events: list[object] = []
    while (event := outbox.next_event()) is not None:
        events.append(event)
    return events


def test_retry_delay_backs_off_with_jitter_and_cap() -> None:
    policy = RetryPolicy(Backoff(initial=1.0, maximum=60.0))
    r = seeded_rng(2)
    for attempts in range(1, 12):
        delay = policy.delay(attempts, rng_of(r))
        nominal = min(60.0, 2.0 ** (attempts - 1))
        assert nominal * 0.5 <= delay <= nominal


def test_outbox_attempts_retries_and_delivers() -> None:
    outbox = Outbox(
        rng_of(seeded_rng(3)), RetryPolicy(Backoff(initial=1.0, maximum=8.0), ack_timeout=5.0)
    )
    outbox.add(entry(b"a" * 16))
    assert outbox.get_timer() == 0.0
    outbox.handle_timer(0.0)
    assert drain(outbox) == [Attempt(b"a" * 16, b"r" * 32, 1)]
    outbox.report(b"a" * 16, "unreachable", 0.1)
    timer = outbox.get_timer()
    assert timer is not None and 0.6 <= timer <= 1.1  # after attempt 1: 1 s nominal
    outbox.handle_timer(timer)
    assert drain(outbox) == [Attempt(b"a" * 16, b"r" * 32, 2)]
    outbox.report(b"a" * 16, "sent", timer)
    assert drain(outbox) == [StateChanged(b"a" * 16, "sent")]
    outbox.report(b"a" * 16, "delivered", timer + 0.01)
    assert drain(outbox) == [StateChanged(b"a" * 16, "delivered")]
    assert len(outbox) == 0 and outbox.get_timer() is None
    outbox.report(b"a" * 16, "read", timer + 1)  # late receipt: ignored by the outbox
    assert drain(outbox) == []


def test_outbox_silent_attempt_is_retried_after_ack_timeout() -> None:
    outbox = Outbox(rng_of(seeded_rng(4)), RetryPolicy(ack_timeout=10.0))
    outbox.add(entry(b"a" * 16))
    outbox.handle_timer(0.0)
    drain(outbox)
    timer = outbox.get_timer()
    assert timer is not None and 10.0 <= timer < 11.0
    outbox.handle_timer(timer)
    assert drain(outbox) == [Attempt(b"a" * 16, b"r" * 32, 2)]


def test_stored_entries_wait_for_receipt_then_expire() -> None:
    outbox = Outbox(rng_of(seeded_rng(5)))
    outbox.add(entry(b"a" * 16, lifetime=100.0))
    outbox.handle_timer(0.0)
    drain(outbox)
    outbox.report(b"a" * 16, "stored", 0.5)
    assert drain(outbox) == [StateChanged(b"a" * 16, "stored")]
    assert outbox.get_timer() == 100.0
    outbox.handle_timer(99.0)  # the mailbox holds it: no timed retry
    assert drain(outbox) == []
    outbox.handle_timer(100.0)
    assert drain(outbox) == [StateChanged(b"a" * 16, "failed", "expired"), Expired(b"a" * 16)]


def test_reachable_peer_gets_stored_entries_again() -> None:
    outbox = Outbox(rng_of(seeded_rng(7)))
    outbox.add(entry(b"a" * 16, lifetime=100.0))
    outbox.handle_timer(0.0)
    outbox.report(b"a" * 16, "stored", 0.5)
    drain(outbox)
    outbox.peer_reachable(b"r" * 32, 3.0)  # the receipt may have been lost: ask directly
    outbox.handle_timer(3.0)
    assert drain(outbox) == [Attempt(b"a" * 16, b"r" * 32, 2)]
    outbox.report(b"a" * 16, "unreachable", 3.5)
    assert outbox.get_timer() == 100.0


def test_refusal_fails_with_reason_and_reachability_retries_now() -> None:
    outbox = Outbox(rng_of(seeded_rng(6)))
    outbox.add(entry(b"a" * 16))
    outbox.add(entry(b"b" * 16))
    outbox.handle_timer(0.0)
    drain(outbox)
    outbox.report(b"a" * 16, "refused", 1.0)
    assert drain(outbox) == [StateChanged(b"a" * 16, "failed", "refused"), Expired(b"a" * 16)]
    outbox.report(b"b" * 16, "unreachable", 1.0)
    outbox.peer_reachable(b"r" * 32, 1.2)  # the backoff would wait until 1.5..2.0
    assert outbox.get_timer() == 1.2


# --------------------------------------------------------------------------- receive order


def test_receive_order_holds_gaps_and_drops_duplicates() -> None:
    order: ReceiveOrder[str] = ReceiveOrder(next_seq=1, gap_timeout=10.0)
    assert order.receive(2, "b", 0.0) == (True, [])
    assert order.receive(2, "b", 0.1) == (False, [])
    assert order.receive(1, "a", 0.2) == (True, [(1, "a"), (2, "b")])
    assert order.receive(4, "d", 1.0) == (True, [])
    assert order.get_timer() == 11.0
    assert order.handle_timer(10.9) == []
    assert order.handle_timer(11.0) == [(4, "d")]
    assert order.receive(3, "c", 12.0) == (True, [(3, "c")])  # a straggler: shown at once
    assert order.next_seq == 5


def test_first_arrival_starts_the_order() -> None:
    order: ReceiveOrder[str] = ReceiveOrder()
    assert order.receive(41, "x", 0.0) == (True, [(41, "x")])
    assert order.receive(43, "z", 0.0) == (True, [])
    assert order.receive(42, "y", 0.0) == (True, [(42, "y"), (43, "z")])


def test_receive_order_bounds_what_it_holds() -> None:
    order: ReceiveOrder[int] = ReceiveOrder(next_seq=1, max_held=3)
    for seq in range(3, 6):
        assert order.receive(seq, seq, 0.0) == (True, [])
    assert order.receive(6, 6, 0.0) == (True, [(s, s) for s in range(3, 7)])
    assert not order.held


# --------------------------------------------------------------------------- sender + receiver


@dataclass
class Link:
    """A lossy link: drops, duplicates and reorders with a seeded rng."""

    r: random.Random
    loss: float
    in_flight: list[tuple[float, object]] = field(default_factory=list)

    def send(self, item: object, now: float) -> None:
        copies = 0 if self.r.random() < self.loss else 1
        copies += self.r.random() < 0.1
        for _ in range(copies):
            self.in_flight.append((now + self.r.uniform(0.001, 0.5), item))

    def due(self, now: float) -> list[object]:
        ready = [item for at, item in self.in_flight if at <= now]
        self.in_flight = [(at, item) for at, item in self.in_flight if at > now]
        self.r.shuffle(ready)
        return ready


@pytest.mark.parametrize("seed", range(8))
def test_pair_over_lossy_links_delivers_exactly_once_in_order(seed: int) -> None:
    r = seeded_rng(seed)
    outbox = Outbox(rng_of(r), RetryPolicy(Backoff(initial=0.2, maximum=2.0), ack_timeout=1.0))
    forward, back = Link(r, loss=0.3), Link(r, loss=0.3)
    order: ReceiveOrder[bytes] = ReceiveOrder(next_seq=1, gap_timeout=1e9)
    seqs: dict[bytes, int] = {}
    seen: set[bytes] = set()
    shown: list[int] = []
    for seq in range(1, 51):
        mid = seq.to_bytes(16, "big")
        seqs[mid] = seq
        outbox.add(entry(mid, lifetime=1e6))
    now, delivered = 0.0, 0
    while delivered < 50 and now < 500.0:
        outbox.handle_timer(now)
        while (event := outbox.next_event()) is not None:
            if isinstance(event, Attempt):
                forward.send(event.message_id, now)
            elif isinstance(event, StateChanged) and event.state == "delivered":
                delivered += 1
        for item in forward.due(now):
            mid = bytes(item)  # type: ignore[call-overload]
            if mid not in seen:
                seen.add(mid)
                _, released = order.receive(seqs[mid], mid, now)
                shown.extend(seq for seq, _ in released)
            back.send(mid, now)  # a duplicate is acknowledged again
        for item in back.due(now):
            outbox.report(bytes(item), "delivered", now)  # type: ignore[call-overload]
        now += 0.05
    assert delivered == 50
    assert shown == list(range(1, 51))


# --------------------------------------------------------------------------- receipts


ALICE, BOB, MALLORY = (Identity.generate(rng_of(seeded_rng(i))) for i in (10, 11, 12))


def test_receipt_signed_by_recipient_verifies() -> None:
    receipt = make_receipt(BOB, ReceiptKind.DELIVERED, ALICE.peer_id, [b"a" * 16], 5.0)
    decoded = wire.decode_frame(wire.encode_frame(receipt)[4:])
    assert isinstance(decoded, Receipt)
    kind = verify_receipt(decoded, signer=BOB.peer_id, sender=ALICE.peer_id)
    assert kind is ReceiptKind.DELIVERED


def test_forged_or_misdirected_receipts_are_refused() -> None:
    receipt = make_receipt(MALLORY, ReceiptKind.READ, ALICE.peer_id, [b"a" * 16], 5.0)
    with pytest.raises(RemoteProtocolError):  # claims to be from Mallory, not Bob
        verify_receipt(receipt, signer=BOB.peer_id, sender=ALICE.peer_id)
    forged_body = type(receipt.body)(2, ALICE.peer_id.key, BOB.peer_id.key, 5.0, [b"a" * 16])
    with pytest.raises(InvalidSignatureError):
        verify_receipt(
            Receipt(forged_body, receipt.signature), signer=BOB.peer_id, sender=ALICE.peer_id
        )
    with pytest.raises(RemoteProtocolError):  # about another sender's messages
        verify_receipt(receipt, signer=MALLORY.peer_id, sender=BOB.peer_id)
    assert isinstance(PeerId(ALICE.peer_id.key), PeerId)


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("policy", "blocked", "contact", "status", "verdict"),
    [
        ("allow", True, True, "accepted", Verdict.DROP),
        ("deny", False, True, "none", Verdict.ACCEPT),
        ("deny", False, False, "accepted", Verdict.ACCEPT),
        ("deny", False, False, "none", Verdict.REFUSE),
        ("confirm", False, False, "none", Verdict.REQUEST),
        ("confirm", False, False, "request", Verdict.REQUEST),
        ("confirm", False, False, "declined", Verdict.REFUSE),
        ("allow", False, False, "declined", Verdict.REFUSE),
        ("allow", False, False, "none", Verdict.ACCEPT),
    ],
)
def test_acceptance_policy(
    policy: str, blocked: bool, contact: bool, status: str, verdict: Verdict
) -> None:
    got = decide(policy, blocked=blocked, is_contact=contact, status=status)  # type: ignore[arg-type]
    assert got is verdict
