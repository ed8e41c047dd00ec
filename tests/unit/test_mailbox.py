"""Mailbox rules: idempotency, quotas, TTL expiry, per-sender rate limits, owner-only removal."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from node.mailbox import (
    DAY,
    Accepted,
    MailboxBook,
    MailboxLimits,
    Refused,
    StoredEnvelope,
)

ALICE = b"A" * 32
BOB = b"B" * 32
SENDER = b"s" * 32


def eid(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=32).digest()


def test_deposit_is_idempotent_and_does_not_spend_rate_or_quota() -> None:
    book = MailboxBook(MailboxLimits(max_count=1, sender_burst=1, sender_rate=0.001))
    first = book.deposit(ALICE, eid(1), 100, None, sender=SENDER, now=0.0)
    again = book.deposit(ALICE, eid(1), 100, None, sender=SENDER, now=0.0)
    assert isinstance(first, Accepted) and not first.duplicate
    assert isinstance(again, Accepted) and again.duplicate
    assert again.envelope == first.envelope
    assert book.usage(ALICE) == (1, 100)
    assert first.envelope.expires_at == 14 * DAY


def test_same_id_for_another_mailbox_is_refused() -> None:
    book = MailboxBook()
    book.deposit(ALICE, eid(1), 10, None, sender=SENDER, now=0.0)
    refused = book.deposit(BOB, eid(1), 10, None, sender=SENDER, now=0.0)
    assert isinstance(refused, Refused) and refused.code == "mailbox.id_conflict"


def test_quotas_say_why() -> None:
    book = MailboxBook(MailboxLimits(max_count=2, max_bytes=150, max_envelope=100))
    assert book.deposit(ALICE, eid(0), 101, None, sender=SENDER, now=0).code == "mailbox.too_large"  # type: ignore[union-attr]
    assert isinstance(book.deposit(ALICE, eid(1), 100, None, sender=SENDER, now=0), Accepted)
    full_bytes = book.deposit(ALICE, eid(2), 51, None, sender=SENDER, now=0)
    assert isinstance(full_bytes, Refused) and full_bytes.code == "mailbox.full_bytes"
    assert isinstance(book.deposit(ALICE, eid(3), 50, None, sender=SENDER, now=0), Accepted)
    full_count = book.deposit(ALICE, eid(4), 1, None, sender=SENDER, now=0)
    assert isinstance(full_count, Refused) and full_count.code == "mailbox.full_count"
    # Another mailbox has its own quota.
    assert isinstance(book.deposit(BOB, eid(5), 100, None, sender=SENDER, now=0), Accepted)


def test_ttl_bounds_and_expiry() -> None:
    book = MailboxBook(MailboxLimits(max_ttl=100.0, default_ttl=50.0))
    bad = book.deposit(ALICE, eid(1), 1, 101.0, sender=SENDER, now=0)
    gone = book.deposit(ALICE, eid(1), 1, 0.0, sender=SENDER, now=0)
    assert isinstance(gone, Refused) and gone.code == "mailbox.expired"
    assert isinstance(bad, Refused) and bad.code == "mailbox.bad_ttl"
    book.deposit(ALICE, eid(1), 1, 10.0, sender=SENDER, now=0)
    book.deposit(ALICE, eid(2), 1, None, sender=SENDER, now=0)
    assert book.get_timer() == 10.0
    assert book.handle_timer(9.9) == []
    assert [e.envelope_id for e in book.handle_timer(10.0)] == [eid(1)]
    assert [e.envelope_id for e in book.handle_timer(1000.0)] == [eid(2)]
    assert len(book) == 0 and book.total_bytes == 0
    # An expired id may be deposited again (it is gone).
    assert isinstance(book.deposit(ALICE, eid(1), 1, None, sender=SENDER, now=1000.0), Accepted)


def test_rate_limit_per_sender_refills_over_time() -> None:
    book = MailboxBook(MailboxLimits(sender_rate=2.0, sender_burst=3))
    results = [book.deposit(ALICE, eid(i), 1, None, sender=SENDER, now=0) for i in range(4)]
    assert [isinstance(r, Accepted) for r in results] == [True, True, True, False]
    refused = results[3]
    assert isinstance(refused, Refused) and refused.code == "mailbox.rate_limited"
    assert refused.retry_after == 0.5
    # Another sender is not limited by the first one.
    assert isinstance(book.deposit(ALICE, eid(10), 1, None, sender=b"t" * 32, now=0), Accepted)
    assert isinstance(book.deposit(ALICE, eid(11), 1, None, sender=SENDER, now=0.5), Accepted)


def test_remove_only_touches_the_given_mailbox() -> None:
    book = MailboxBook()
    book.deposit(ALICE, eid(1), 5, None, sender=SENDER, now=0)
    book.deposit(BOB, eid(2), 5, None, sender=SENDER, now=0)
    assert book.remove(ALICE, [eid(2)]) == []
    assert book.get(eid(2)) is not None
    assert [e.envelope_id for e in book.remove(BOB, [eid(2), eid(2)])] == [eid(2)]


def test_listing_is_in_deposit_order_and_bounded() -> None:
    book = MailboxBook()
    for i in range(10):
        book.deposit(ALICE, eid(i), 10, None, sender=SENDER, now=float(i))
    assert [e.envelope_id for e in book.listing(ALICE, 3)] == [eid(0), eid(1), eid(2)]
    assert len(book.listing(ALICE, 100, max_bytes=35)) == 3
    assert len(book.listing(ALICE, 100, max_bytes=1)) == 1  # always progress
    book.load([StoredEnvelope(eid(99), BOB, 7, 5.0)])
    assert book.usage(BOB) == (1, 7)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 30), st.sampled_from([ALICE, BOB]), st.integers(1, 60), st.integers(0, 3)
        ),
        max_size=60,
    )
)
def test_usage_never_exceeds_quota_and_accounting_adds_up(
    ops: list[tuple[int, bytes, int, int]],
) -> None:
    limits = MailboxLimits(max_count=5, max_bytes=150, max_envelope=60, default_ttl=20.0)
    book = MailboxBook(limits)
    now = 0.0
    for n, box, size, action in ops:
        now += 1.0
        if action == 0:
            book.remove(box, [eid(n)])
        elif action == 1:
            book.handle_timer(now)
        else:
            book.deposit(box, eid(n), size, None, sender=SENDER, now=now)
        for mailbox in (ALICE, BOB):
            count, used = book.usage(mailbox)
            assert count <= limits.max_count and used <= limits.max_bytes
        assert book.total_bytes == sum(book.usage(m)[1] for m in (ALICE, BOB))


def test_expiry_heap_stays_bounded_when_envelopes_are_acked() -> None:
    book = MailboxBook(MailboxLimits(sender_rate=1e9, sender_burst=10**9))
    for i in range(5000):
        book.deposit(ALICE, eid(i), 1, None, sender=SENDER, now=0.0)
        book.remove(ALICE, [eid(i)])
    book.deposit(ALICE, eid(-1 % 2**32), 1, 5.0, sender=SENDER, now=0.0)
    assert len(book._expiry) <= 2 * len(book) + 64
    assert [e.envelope_id for e in book.handle_timer(5.0)] == [eid(-1 % 2**32)]
