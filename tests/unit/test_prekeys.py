"""Prekeys: rotation with grace, one-time pool refill, signed bundle checks, state bytes."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from node import prekeys, wire
from node.crypto import SigningKey
from node.errors import CryptoError, InvalidSignatureError, RemoteProtocolError
from node.identity import Identity
from node.prekeys import PrekeyBundle, PrekeyState

NOW = 1_700_000_000.0


def rng_for(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.fixture
def identity() -> Identity:
    return Identity(SigningKey(bytes(range(32))))


@pytest.fixture
def state(identity: Identity) -> PrekeyState:
    return prekeys.generate(identity, now=NOW, rng=rng_for(1).randbytes)


def test_generate_gives_full_pool_and_a_signed_prekey(state: PrekeyState) -> None:
    assert len(state.one_time) == prekeys.ONE_TIME_POOL
    assert state.previous is None
    assert state.signed.id not in state.one_time


def test_maintain_is_identity_when_nothing_is_due(state: PrekeyState, identity: Identity) -> None:
    assert prekeys.maintain(state, identity, now=NOW + 10, rng=rng_for(2).randbytes) is state


def test_rotation_keeps_the_old_signed_prekey_for_its_grace(
    state: PrekeyState, identity: Identity
) -> None:
    rng = rng_for(3).randbytes
    old_id = state.signed.id
    rotated = prekeys.maintain(state, identity, now=NOW + prekeys.SIGNED_PREKEY_ROTATE, rng=rng)
    assert rotated.signed.id != old_id
    assert rotated.signed_prekey_secret(old_id) == state.signed.secret
    later = NOW + prekeys.SIGNED_PREKEY_ROTATE + prekeys.SIGNED_PREKEY_GRACE - 1
    still = prekeys.maintain(rotated, identity, now=later, rng=rng)
    assert still.signed_prekey_secret(old_id) == state.signed.secret
    # the next maintenance after the grace period retires it (and rotates again)
    gone = prekeys.maintain(still, identity, now=later + 2, rng=rng)
    with pytest.raises(CryptoError):
        gone.signed_prekey_secret(old_id)
    assert gone.signed_prekey_secret(rotated.signed.id) == rotated.signed.secret


def test_pool_is_refilled_below_low_water(state: PrekeyState, identity: Identity) -> None:
    used = state
    ids = list(state.one_time)
    for key_id in ids[: prekeys.ONE_TIME_POOL - prekeys.ONE_TIME_LOW_WATER]:
        used = used.after_use(state.signed.id, bytes([key_id % 256]) * 32, key_id)
    assert prekeys.maintain(used, identity, now=NOW, rng=rng_for(4).randbytes) is used
    used = used.after_use(state.signed.id, b"\xaa" * 32, ids[-1])
    refilled = prekeys.maintain(used, identity, now=NOW, rng=rng_for(4).randbytes)
    assert len(refilled.one_time) == prekeys.ONE_TIME_POOL
    assert not set(refilled.one_time) & set(ids[: -prekeys.ONE_TIME_LOW_WATER])  # ids never reused
    with pytest.raises(CryptoError):
        refilled.one_time_secret(ids[0])


def test_bundle_verifies_and_carries_public_keys_only(
    state: PrekeyState, identity: Identity
) -> None:
    bundle = prekeys.make_bundle(state, identity, now=NOW, max_one_time=10)
    data = bundle.to_bytes()
    checked = prekeys.verify_bundle(data, now=NOW + 1, expected=identity.peer_id)
    assert checked == bundle
    assert len(checked.one_time) == 10
    assert len(bundle.digest()) == 32
    for secret in [state.signed.secret, *state.one_time.values()]:
        assert secret not in data


def test_bundle_of_another_identity_is_refused(state: PrekeyState, identity: Identity) -> None:
    data = prekeys.make_bundle(state, identity, now=NOW).to_bytes()
    other = Identity.generate(rng_for(5).randbytes)
    with pytest.raises(RemoteProtocolError):
        prekeys.verify_bundle(data, now=NOW, expected=other.peer_id)


def test_bundle_signed_by_someone_else_is_refused(state: PrekeyState, identity: Identity) -> None:
    bundle = prekeys.make_bundle(state, identity, now=NOW)
    forger = Identity.generate(rng_for(6).randbytes)
    forged = PrekeyBundle(
        bundle.body, forger.sign(prekeys.BUNDLE_DOMAIN, wire.encode_message(bundle.body))
    )
    with pytest.raises(InvalidSignatureError):
        prekeys.verify_bundle(forged.to_bytes(), now=NOW, expected=identity.peer_id)


def test_swapped_signed_prekey_is_refused(state: PrekeyState, identity: Identity) -> None:
    """Even with a valid bundle signature, an SPK whose own signature fails is refused."""
    bundle = prekeys.make_bundle(state, identity, now=NOW)
    bad_spk = replace(bundle.body.signed_prekey, public=bytes(32))
    body = replace(bundle.body, signed_prekey=bad_spk)
    resigned = PrekeyBundle(body, identity.sign(prekeys.BUNDLE_DOMAIN, wire.encode_message(body)))
    with pytest.raises(InvalidSignatureError):
        prekeys.verify_bundle(resigned.to_bytes(), now=NOW)


def test_expired_bundle_is_refused(state: PrekeyState, identity: Identity) -> None:
    bundle = prekeys.make_bundle(state, identity, now=NOW)
    with pytest.raises(RemoteProtocolError):
        prekeys.verify_bundle(bundle.to_bytes(), now=bundle.expires)
    with pytest.raises(RemoteProtocolError):
        prekeys.verify_bundle(bundle.to_bytes(), now=NOW - prekeys.CLOCK_SKEW - 1)


def test_every_bit_flip_of_a_bundle_is_refused(state: PrekeyState, identity: Identity) -> None:
    data = prekeys.make_bundle(state, identity, now=NOW, max_one_time=2).to_bytes()
    for bit in range(len(data) * 8):
        corrupted = bytearray(data)
        corrupted[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((RemoteProtocolError, CryptoError)):
            prekeys.verify_bundle(bytes(corrupted), now=NOW)


def test_garbage_bundles_are_refused() -> None:
    source = rng_for(7)
    for size in (0, 1, 10, 100, 5000, prekeys.MAX_BUNDLE_BYTES + 1):
        with pytest.raises((RemoteProtocolError, CryptoError)):
            prekeys.verify_bundle(source.randbytes(size), now=NOW)


def test_state_bytes_round_trip_and_hide_secrets_in_repr(state: PrekeyState) -> None:
    used = state.after_use(state.signed.id, b"\x01" * 32, next(iter(state.one_time)))
    data = used.to_bytes()
    assert PrekeyState.from_bytes(data) == used
    assert PrekeyState.from_bytes(data).to_bytes() == data
    assert used.has_seen(state.signed.id, b"\x01" * 32)
    assert state.signed.secret.hex() not in repr(used)
    assert repr(state.signed.secret) not in repr(used)
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(RemoteProtocolError):
            PrekeyState.from_bytes(data[:cut])
