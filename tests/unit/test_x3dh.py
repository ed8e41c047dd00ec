"""X3DH: both sides agree, identities are bound, prekeys are checked, replays refused."""

from __future__ import annotations

import asyncio
import random

import pytest
import x3dh as x3dh_lib
from x3dh.types import SecretType

from node import prekeys, x3dh
from node.crypto import X25519PrivateKey, ed25519_public_to_x25519, hkdf_sha256
from node.errors import CryptoError, InvalidKeyError, RemoteProtocolError, ReplayError
from node.identity import Identity, PeerId
from node.prekeys import PrekeyBundle, PrekeyState
from node.x3dh import InitHeader

NOW = 1_700_000_000.0


def setup(seed: int = 1) -> tuple[Identity, Identity, PrekeyState, PrekeyBundle]:
    rng = random.Random(seed).randbytes
    alice, bob = Identity.generate(rng), Identity.generate(rng)
    state = prekeys.generate(bob, now=NOW, rng=rng)
    bundle = prekeys.make_bundle(state, bob, now=NOW, max_one_time=3)
    return alice, bob, state, bundle


def rng(seed: int = 9) -> random.Random:
    return random.Random(seed)


def test_both_sides_agree_and_bind_both_identities() -> None:
    alice, bob, state, bundle = setup()
    sent = x3dh.initiate(alice, bundle, rng().randbytes)
    got, used = x3dh.respond(bob, state, InitHeader.from_bytes(sent.header.to_bytes()))
    assert got.shared_secret == sent.shared_secret
    assert got.associated_data == sent.associated_data
    assert sent.associated_data == x3dh.AD_DOMAIN + alice.peer_id.key + bob.peer_id.key
    assert sent.ratchet_key == bundle.signed_prekey.public
    assert got.ratchet_key == state.signed.secret
    assert sent.header.one_time_id is not None
    assert sent.header.one_time_id not in used.one_time  # erased in the state to keep
    assert sent.header.one_time_id in state.one_time  # the input state is untouched


def test_without_one_time_prekey_uses_three_dh() -> None:
    alice, bob, state, _ = setup()
    empty = prekeys.make_bundle(state, bob, now=NOW, max_one_time=0)
    sent = x3dh.initiate(alice, empty, rng().randbytes)
    assert sent.header.one_time_id is None
    got, used = x3dh.respond(bob, state, sent.header)
    assert got.shared_secret == sent.shared_secret
    assert used.one_time == state.one_time


def test_kdf_matches_the_x3dh_construction() -> None:
    """SK = HKDF(0xFF*32 || DH1 || DH2 || DH3 || DH4, salt = zeros, info) as in ``x3dh``."""
    alice, bob, _, bundle = setup()
    sent = x3dh.initiate(alice, bundle, rng().randbytes)
    ephemeral = X25519PrivateKey.generate(rng().randbytes)
    spk = bundle.signed_prekey.public
    opk = bundle.one_time[0].public
    dh = [
        alice.signing_key.to_x25519().exchange(spk),
        ephemeral.exchange(ed25519_public_to_x25519(bob.peer_id.key)),
        ephemeral.exchange(spk),
        ephemeral.exchange(opk),
    ]
    expected = hkdf_sha256(
        b"\xff" * 32 + b"".join(dh), salt=bytes(32), info=x3dh.X3DH_INFO, length=32
    )
    assert sent.shared_secret == expected


def test_chosen_one_time_prekey_and_unknown_choice() -> None:
    alice, _, _, bundle = setup()
    chosen = bundle.one_time[2].id
    assert x3dh.initiate(alice, bundle, rng().randbytes, one_time_id=chosen).header.one_time_id == (
        chosen
    )
    with pytest.raises(CryptoError):
        x3dh.initiate(alice, bundle, rng().randbytes, one_time_id=10**6)


def test_replayed_first_message_and_reused_one_time_prekey_are_refused() -> None:
    alice, bob, state, bundle = setup()
    sent = x3dh.initiate(alice, bundle, rng().randbytes)
    _, used = x3dh.respond(bob, state, sent.header)
    reloaded = PrekeyState.from_bytes(used.to_bytes())
    with pytest.raises(ReplayError):
        x3dh.respond(bob, reloaded, sent.header)
    again = x3dh.initiate(alice, bundle, rng(10).randbytes)  # same OPK, new base key
    with pytest.raises(CryptoError) as info:
        x3dh.respond(bob, reloaded, again.header)
    assert info.value.code == "x3dh.prekey_used"


def test_unknown_signed_prekey_and_bad_base_key_are_refused() -> None:
    alice, bob, state, bundle = setup()
    sent = x3dh.initiate(alice, bundle, rng().randbytes)
    header = sent.header
    with pytest.raises(CryptoError):
        x3dh.respond(bob, state, InitHeader(header.identity, header.base_key, 999, None))
    with pytest.raises(InvalidKeyError):
        zero = InitHeader(header.identity, bytes(32), header.signed_prekey_id, None)
        x3dh.respond(bob, state, zero)


def test_impostor_gets_a_different_secret() -> None:
    """Claiming Alice's identity without her key gives another secret (DH1 binds IK_A)."""
    alice, bob, state, bundle = setup()
    mallory = Identity.generate(rng(11).randbytes)
    sent = x3dh.initiate(mallory, bundle, rng().randbytes)
    forged = InitHeader(alice.peer_id, sent.header.base_key, sent.header.signed_prekey_id, None)
    got, _ = x3dh.respond(bob, state, forged)
    assert got.shared_secret != sent.shared_secret


def test_session_with_oneself_is_refused() -> None:
    _, bob, state, _ = setup()
    own_bundle = prekeys.make_bundle(state, bob, now=NOW)
    with pytest.raises(CryptoError):
        x3dh.initiate(bob, own_bundle, rng().randbytes)


def test_init_header_layout_and_garbage() -> None:
    header = InitHeader(PeerId(bytes(range(32))), b"\x05" * 32, 7, None)
    assert InitHeader.from_bytes(header.to_bytes()) == header
    assert len(header.to_bytes()) == x3dh.INIT_HEADER.size
    for size in (0, 71, 73):
        with pytest.raises(RemoteProtocolError):
            InitHeader.from_bytes(bytes(size))


def test_agreement_repr_hides_secrets() -> None:
    alice, _, _, bundle = setup()
    sent = x3dh.initiate(alice, bundle, rng().randbytes)
    assert sent.shared_secret.hex() not in repr(sent)
    assert repr(sent.shared_secret) not in repr(sent)


def test_non_canonical_base_keys_are_refused() -> None:
    """X25519 ignores the top bit: a second byte form of a base key would dodge replay checks."""
    alice, _, _, bundle = setup()
    data = bytearray(x3dh.initiate(alice, bundle, rng().randbytes).header.to_bytes())
    data[63] ^= 0x80  # top bit of the base key (bytes 32..63)
    with pytest.raises(RemoteProtocolError):
        InitHeader.from_bytes(bytes(data))
    data[32:64] = (2**255 - 19).to_bytes(32, "little")  # p itself encodes 0
    with pytest.raises(RemoteProtocolError):
        InitHeader.from_bytes(bytes(data))


# ------------------------------------------------------------------ differential: x3dh 1.3.0


class LibState(x3dh_lib.BaseState):
    """The library's X3DH with Ed25519 identity keys encoded raw, like our PeerIds."""

    @staticmethod
    def _encode_public_key(key_format: x3dh_lib.IdentityKeyFormat, pub: bytes) -> bytes:
        return pub


def lib_state(identity: Identity, state: PrekeyState | None = None) -> LibState:
    """A library state holding the same identity (and SPK/OPK secrets) as ours."""
    spk = x3dh_lib.SignedPreKeyPairModel(
        priv=state.signed.secret if state else bytes(32), sig=bytes(64), timestamp=0
    )
    model = x3dh_lib.BaseStateModel(
        identity_key=x3dh_lib.IdentityKeyPairModel(
            secret=identity.signing_key.seed(), secret_type=SecretType.SEED
        ),
        signed_pre_key=spk,
        old_signed_pre_key=None,
        pre_keys=frozenset(state.one_time.values()) if state else frozenset(),
    )
    result: LibState = LibState.from_model(
        model, x3dh_lib.IdentityKeyFormat.ED_25519, x3dh_lib.HashFunction.SHA_256, x3dh.X3DH_INFO
    )
    return result


@pytest.mark.parametrize("with_one_time", [True, False])
def test_differential_ours_initiates_library_responds(with_one_time: bool) -> None:
    alice, bob, state, _ = setup()
    bundle = prekeys.make_bundle(state, bob, now=NOW, max_one_time=3 if with_one_time else 0)
    sent = x3dh.initiate(alice, bundle, rng().randbytes)
    one_time_pub = {key.id: key.public for key in bundle.one_time}.get(sent.header.one_time_id or 0)
    header = x3dh_lib.Header(
        alice.peer_id.key, sent.header.base_key, bundle.signed_prekey.public, one_time_pub
    )
    shared, ad, _ = asyncio.run(
        lib_state(bob, state).get_shared_secret_passive(header, require_pre_key=False)
    )
    assert shared == sent.shared_secret
    assert x3dh.AD_DOMAIN + ad == sent.associated_data


@pytest.mark.parametrize("with_one_time", [True, False])
def test_differential_library_initiates_ours_responds(with_one_time: bool) -> None:
    alice, bob, state, bundle = setup()
    one_time = bundle.one_time[0]
    lib_bundle = x3dh_lib.Bundle(
        bob.peer_id.key,
        bundle.signed_prekey.public,
        bob.signing_key.sign_raw(bundle.signed_prekey.public),  # the library's SPK signature
        frozenset({one_time.public}) if with_one_time else frozenset(),
    )
    shared, ad, header = asyncio.run(
        lib_state(alice).get_shared_secret_active(lib_bundle, require_pre_key=False)
    )
    ours = InitHeader(
        PeerId(header.identity_key),
        header.ephemeral_key,
        bundle.signed_prekey.id,
        one_time.id if with_one_time else None,
    )
    got, _ = x3dh.respond(bob, state, InitHeader.from_bytes(ours.to_bytes()))
    assert got.shared_secret == shared
    assert got.associated_data == x3dh.AD_DOMAIN + ad
