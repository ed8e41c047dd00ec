"""Sealed envelopes: a mailbox sees mailbox id, size bucket and expiry, nothing else."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import envelope
from node.errors import DecryptionError, LocalProtocolError, PeerlineError, RemoteProtocolError
from node.identity import Identity

RNG = random.Random(5).randbytes
ALICE = Identity.generate(RNG)
BOB = Identity.generate(RNG)
EXPIRES = 1_700_086_400


def seal(payload: bytes, recipient: Identity = BOB) -> bytes:
    return envelope.seal(recipient.peer_id, ALICE.peer_id, payload, expires=EXPIRES, rng=RNG)


def test_round_trip_and_what_the_mailbox_sees() -> None:
    data = seal(b"a ratchet message")
    header = envelope.parse_envelope(data)
    assert header.mailbox_id == envelope.mailbox_id(BOB.peer_id)
    assert header.expires == EXPIRES and header.size == len(data) == 256
    assert header.envelope_id == envelope.envelope_id(data)
    assert not header.expired(EXPIRES - 1) and header.expired(EXPIRES)
    opened = envelope.open_envelope(BOB, data)
    assert (opened.sender, opened.payload) == (ALICE.peer_id, b"a ratchet message")
    assert ALICE.peer_id.key not in data  # the sender is inside the encryption
    assert envelope.mailbox_id(ALICE.peer_id) not in data


def test_mailbox_id_is_stable_and_not_the_key() -> None:
    assert envelope.mailbox_id(BOB.peer_id) == envelope.mailbox_id(BOB.peer_id)
    assert envelope.mailbox_id(BOB.peer_id) != BOB.peer_id.key
    assert envelope.mailbox_id(BOB.peer_id) != envelope.mailbox_id(ALICE.peer_id)


@pytest.mark.parametrize("size", [0, 1, 131, 132, 1000, 5000, 40000, envelope.MAX_PAYLOAD])
def test_sizes_are_padded_to_buckets(size: int) -> None:
    data = seal(bytes([7]) * size)
    assert len(data) in envelope.BUCKETS
    assert envelope.open_envelope(BOB, data).payload == bytes([7]) * size


def test_same_bucket_same_size_whatever_the_payload() -> None:
    assert len(seal(b"")) == len(seal(bytes(131))) == envelope.BUCKETS[0]
    assert len(seal(bytes(132))) == envelope.BUCKETS[1]


def test_payload_limit() -> None:
    with pytest.raises(LocalProtocolError):
        seal(bytes(envelope.MAX_PAYLOAD + 1))
    with pytest.raises(LocalProtocolError):
        envelope.seal(BOB.peer_id, ALICE.peer_id, b"", expires=-1, rng=RNG)
    assert len(seal(bytes(envelope.MAX_PAYLOAD))) == envelope.MAX_ENVELOPE


def test_envelope_for_someone_else_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        envelope.open_envelope(ALICE, seal(b"for bob"))


def test_every_bit_flip_is_refused() -> None:
    data = seal(b"x" * 20)
    for bit in range(len(data) * 8):
        corrupted = bytearray(data)
        corrupted[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((RemoteProtocolError, DecryptionError)):
            envelope.open_envelope(BOB, bytes(corrupted))


def test_ids_differ_for_equal_payloads() -> None:
    first, second = seal(b"same"), seal(b"same")
    assert envelope.envelope_id(first) != envelope.envelope_id(second)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.sampled_from([bytes(256), bytes(512), b"\x01" * 256]))
def test_garbage_is_refused_with_our_errors(data: bytes) -> None:
    with pytest.raises(PeerlineError):
        envelope.open_envelope(BOB, data)
    with contextlib.suppress(RemoteProtocolError):  # a mailbox check: ours or nothing
        envelope.parse_envelope(data)


def test_the_largest_session_message_fits_one_envelope() -> None:
    from node import session

    assert session.MAX_WIRE_MESSAGE <= envelope.MAX_PAYLOAD
