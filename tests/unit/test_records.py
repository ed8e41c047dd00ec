"""PeerRecord: validate refuses every forgery; select keeps the highest valid seq; publisher."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import records, wire
from node.errors import InvalidRecordError, LocalProtocolError
from node.identity import Identity
from node.mdns import pack_txt, unpack_txt
from node.records import RecordPublisher, discovery_key, select, sign_record, validate

NOW = 1_800_000_000.0
ALICE = Identity.generate()
MALLORY = Identity.generate()


def make(identity: Identity = ALICE, seq: int = 5, ttl: int = 3600, **kw: object) -> bytes:
    fields: dict[str, object] = {"addresses": [("192.168.1.7", 4433), ("fe80::1", 4433)]}
    fields.update(kw)
    return sign_record(identity, seq=seq, expires=int(NOW) + ttl, **fields).encode()  # type: ignore[arg-type]


def code_of(data: bytes, now: float = NOW, **kw: object) -> str:
    with pytest.raises(InvalidRecordError) as info:
        validate(data, now, **kw)  # type: ignore[arg-type]
    return info.value.code


def test_valid_record_round_trips_and_stays_small() -> None:
    data = make(mailboxes=["rdv.example.org:4433"], prekeys_hash=b"\x01" * 32)
    record = validate(data, NOW, peer_id=ALICE.peer_id)
    assert record.peer_id == ALICE.peer_id
    assert record.addresses == [("192.168.1.7", 4433), ("fe80::1", 4433)]
    assert record.mailboxes == ["rdv.example.org:4433"]
    assert record.encode() == data
    assert len(data) < 300


def test_forged_signature_is_refused() -> None:
    record = validate(make(), NOW)
    # Mallory rewrites the addresses but cannot re-sign as Alice.
    body = dataclasses.replace(record.body, addresses=[records.Address("10.6.6.6", 4433)])
    forged = records.PeerRecord(body, record.signature).encode()
    assert code_of(forged) == "record.bad_signature"
    # Mallory's own signature over Alice's body does not help either.
    resigned = records.PeerRecord(
        body, MALLORY.sign(records.RECORD_DOMAIN, wire.encode_message(body))
    )
    assert code_of(resigned.encode()) == "record.bad_signature"


def test_signature_for_another_domain_is_refused() -> None:
    record = validate(make(), NOW)
    other = ALICE.sign("peerline/auth/v1", wire.encode_message(record.body))
    assert code_of(records.PeerRecord(record.body, other).encode()) == "record.bad_signature"


def test_expired_and_too_far_ahead_are_refused() -> None:
    assert code_of(make(ttl=10), now=NOW + 10) == "record.expired"
    assert code_of(make(ttl=records.MAX_TTL + records.CLOCK_SKEW + 10)) == "record.expired"
    assert code_of(make(), now=float("nan")) == "record.expired"


def test_wrong_peer_is_refused() -> None:
    assert code_of(make(), peer_id=MALLORY.peer_id) == "record.wrong_peer"


def test_oversized_and_non_canonical_and_garbage_are_refused() -> None:
    assert code_of(b"\x90" * (records.MAX_RECORD_SIZE + 1)) == "record.too_large"
    data = make(seq=5)
    # Re-encode seq 5 with a wider integer: same value, different bytes.
    wide = data.replace(b"\x05\xce", b"\xcd\x00\x05\xce", 1)
    assert wide != data
    assert code_of(wide) == "record.malformed"
    assert code_of(b"") == "record.malformed"
    assert code_of(b"\xc1garbage") == "record.malformed"
    assert code_of(data[:-1]) == "record.malformed"


@pytest.mark.parametrize("host", ["example.org", "0.0.0.0", "224.0.0.251", "::ffff:1.2.3.4x"])
def test_bad_addresses_are_refused_on_both_sides(host: str) -> None:
    with pytest.raises(LocalProtocolError):
        make(addresses=[(host, 1)])
    record = validate(make(), NOW)
    body = dataclasses.replace(record.body, addresses=[records.Address(host, 1)])
    signed = records.PeerRecord(body, ALICE.sign(records.RECORD_DOMAIN, wire.encode_message(body)))
    assert code_of(signed.encode()) == "record.malformed"


def test_too_many_fields_cannot_be_signed() -> None:
    with pytest.raises(LocalProtocolError):
        make(addresses=[("10.0.0.1", port) for port in range(1, records.MAX_ADDRESSES + 2)])
    with pytest.raises(LocalProtocolError):
        make(mailboxes=["x" * 200])


def test_select_keeps_highest_seq_in_any_order() -> None:
    old, new = validate(make(seq=3), NOW), validate(make(seq=9), NOW)
    assert select(old, new) is new
    assert select(new, old) is new
    assert select(None, old) is old
    assert select(old, None) is old
    assert select(None, None) is None
    twin_a = validate(make(seq=9, mailboxes=["a"]), NOW)
    assert select(new, twin_a) == select(twin_a, new)
    with pytest.raises(LocalProtocolError):
        select(new, validate(make(MALLORY), NOW))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with pytest.raises(InvalidRecordError):
        validate(data, NOW)


def test_discovery_key_is_a_20_byte_hash_not_the_key() -> None:
    key = discovery_key(ALICE.peer_id)
    assert len(key) == 20
    assert key not in ALICE.peer_id.key
    assert key != discovery_key(MALLORY.peer_id)


def test_publisher_refreshes_before_expiry_and_on_change() -> None:
    publisher = RecordPublisher(ALICE, ttl=600, addresses=[("10.1.1.1", 9)])
    first = publisher.handle_timer(NOW)
    assert first is not None and first.expires == NOW + 600
    assert publisher.handle_timer(NOW + 1) is None
    assert publisher.get_timer() == NOW + 300
    second = publisher.handle_timer(NOW + 300)
    assert second is not None and second.seq > first.seq
    publisher.update(addresses=[("10.1.1.1", 9)])  # no change: nothing due
    assert publisher.handle_timer(NOW + 301) is None
    publisher.update(addresses=[("10.1.1.2", 9)])
    third = publisher.handle_timer(NOW + 301)
    assert third is not None and third.seq > second.seq and third.addresses == [("10.1.1.2", 9)]
    # The clock going backwards cannot lower the seq.
    publisher.update(mailboxes=["m"])
    fourth = publisher.handle_timer(NOW - 1000)
    assert fourth is not None and fourth.seq == third.seq + 1
    validate(fourth.encode(), NOW - 1000, peer_id=ALICE.peer_id)


def test_publisher_restart_seq_stays_above_previous_run() -> None:
    before = RecordPublisher(ALICE).handle_timer(NOW)
    after = RecordPublisher(ALICE).handle_timer(NOW + 0.01)
    assert before is not None and after is not None and after.seq > before.seq


@pytest.mark.parametrize("mailboxes", [[], ["m" * 120] * 4])
def test_txt_packing_round_trips_within_255_byte_entries(mailboxes: list[str]) -> None:
    record = validate(make(mailboxes=mailboxes), NOW)
    properties = pack_txt(record, 4433)
    assert all(len(key) + 1 + len(value) <= 255 for key, value in properties.items())
    as_received = {key.encode(): value for key, value in properties.items()}
    claimed, data = unpack_txt(as_received)
    assert claimed == ALICE.peer_id
    assert validate(data, NOW, peer_id=claimed) == record


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.pop(b"r0"),
        lambda p: p.update({b"n": b"99"}),
        lambda p: p.update({b"n": b"-1"}),
        lambda p: p.update({b"id": b"pl" + b"a" * 56}),
        lambda p: p.update({b"id": None}),
        lambda p: p.update({b"n": b"\xff"}),
    ],
)
def test_damaged_txt_is_refused(damage: Callable[[dict[bytes, bytes | None]], object]) -> None:
    record = validate(make(mailboxes=["m" * 120] * 4), NOW)
    properties: dict[bytes, bytes | None] = {
        key.encode(): value for key, value in pack_txt(record, 1).items()
    }
    damage(properties)
    with pytest.raises(InvalidRecordError):
        unpack_txt(properties)
