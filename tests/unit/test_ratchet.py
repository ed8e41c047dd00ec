"""Properties of the pure Double Ratchet (node/ratchet.py), each with its own test."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from node import ratchet
from node.crypto import X25519PrivateKey
from node.errors import (
    DecryptionError,
    LimitExceededError,
    LocalProtocolError,
    PeerlineError,
    RemoteProtocolError,
    ReplayError,
)
from node.ratchet import RatchetState

AD = b"peerline/test-ad" + bytes(64)
NOW = 1_700_000_000.0


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    source = random.Random(seed)
    return source.randbytes


def pair(seed: int = 1) -> tuple[RatchetState, RatchetState]:
    rng = seeded_rng(seed)
    shared = rng(32)
    spk = X25519PrivateKey.generate(rng)
    return ratchet.initiator(shared, spk.public_key, rng), ratchet.responder(
        shared, spk.secret_bytes()
    )


def send(state: RatchetState, text: bytes) -> tuple[RatchetState, bytes]:
    return ratchet.encrypt(state, text, AD)


_RNG = seeded_rng(7)


def recv(
    state: RatchetState, message: bytes, now: float = NOW, seed: int | None = None
) -> tuple[RatchetState, bytes]:
    """Decrypt with a fresh key stream per call (a fixed seed would repeat DH key pairs)."""
    rng = _RNG if seed is None else seeded_rng(seed)
    return ratchet.decrypt(state, message, AD, now, rng)


def reload(state: RatchetState) -> RatchetState:
    return RatchetState.from_bytes(state.to_bytes())


def test_round_trip_both_directions_across_dh_steps() -> None:
    alice, bob = pair()
    for round_ in range(4):
        alice, m = send(alice, b"a%d" % round_)
        bob, text = recv(bob, m)
        assert text == b"a%d" % round_
        bob, m = send(bob, b"b%d" % round_)
        alice, text = recv(alice, m)
        assert text == b"b%d" % round_


def test_responder_cannot_send_first() -> None:
    _, bob = pair()
    with pytest.raises(LocalProtocolError):
        send(bob, b"too early")


def test_forward_secrecy_old_ciphertexts_stay_closed_after_compromise() -> None:
    """A later full compromise of both states opens no earlier message, and no earlier chain
    or root key survives in the stored bytes."""
    alice, bob = pair()
    history: list[tuple[str, bytes]] = []
    earlier_secrets: list[bytes] = []
    for i in range(3):
        earlier_secrets += [s for s in (alice.root_key, alice.cks, bob.ckr, bob.root_key) if s]
        alice, m = send(alice, b"to bob %d" % i)
        history.append(("bob", m))
        bob, _ = recv(bob, m)
        bob, m = send(bob, b"to alice %d" % i)
        history.append(("alice", m))
        alice, _ = recv(alice, m)
    stolen = {"alice": reload(alice), "bob": reload(bob)}
    for who, message in history:
        with pytest.raises((ReplayError, DecryptionError)):
            recv(stolen[who], message)
    dump = stolen["alice"].to_bytes() + stolen["bob"].to_bytes()
    assert not any(secret in dump for secret in earlier_secrets)


def test_post_compromise_healing_after_dh_ratchet_step() -> None:
    alice, bob = pair()
    alice, m = send(alice, b"hello")
    bob, _ = recv(bob, m)
    stolen = reload(bob)  # the attacker copies Bob's whole state now
    bob, b1 = send(bob, b"still readable by the thief")
    alice, _ = recv(alice, b1, seed=11)
    alice, a1 = send(alice, b"new alice ratchet key")
    bob, _ = recv(bob, a1, seed=12)
    bob, b2 = send(bob, b"healed")
    alice, _ = recv(alice, b2, seed=13)
    alice, a2 = send(alice, b"healed too")
    # The thief follows every message Alice sends but never learns Bob's fresh DH secret.
    stolen, text = recv(stolen, a1, seed=99)
    assert text == b"new alice ratchet key"  # the compromise was real
    with pytest.raises(DecryptionError):
        recv(stolen, a2, seed=99)


def test_out_of_order_within_one_chain() -> None:
    alice, bob = pair()
    messages = []
    for i in range(6):
        alice, m = send(alice, b"m%d" % i)
        messages.append((i, m))
    random.Random(3).shuffle(messages)
    for i, m in messages:
        bob, text = recv(bob, m)
        assert text == b"m%d" % i
    assert bob.skipped == {}


def test_out_of_order_across_dh_steps() -> None:
    alice, bob = pair()
    alice, a0 = send(alice, b"a0")
    alice, a1 = send(alice, b"a1")
    bob, _ = recv(bob, a0)
    bob, b0 = send(bob, b"b0")
    alice, _ = recv(alice, b0)
    alice, a2 = send(alice, b"a2 new chain")
    alice, a3 = send(alice, b"a3 new chain")
    bob, text = recv(bob, a3)  # new DH step first: a1 (old chain) and a2 become skipped
    assert text == b"a3 new chain"
    assert len(bob.skipped) == 2
    bob, text = recv(reload(bob), a1)
    assert text == b"a1"
    bob, text = recv(bob, a2)
    assert text == b"a2 new chain"
    assert bob.skipped == {}


def test_forward_jump_is_bounded_by_max_skip() -> None:
    alice, bob = pair()
    far = alice
    for _ in range(ratchet.MAX_SKIP + 2):
        far, m = send(far, b"x")
    before = bob.to_bytes()
    with pytest.raises(LimitExceededError):
        recv(bob, m)  # would need MAX_SKIP + 1 skipped keys
    assert bob.to_bytes() == before
    # exactly MAX_SKIP skipped keys is allowed
    last_ok = alice
    for _ in range(ratchet.MAX_SKIP + 1):
        last_ok, m = send(last_ok, b"y")
    bob, text = recv(bob, m)
    assert text == b"y"
    assert len(bob.skipped) == ratchet.MAX_SKIP


def test_gap_beyond_max_skip_in_the_old_chain_is_given_up_not_blocking() -> None:
    """Like doubleratchet: a DH step whose old chain lacks more than MAX_SKIP messages does
    not derive them (bounded work); the session moves on and those messages are lost."""
    alice, bob = pair()
    alice, first = send(alice, b"first")
    bob, _ = recv(bob, first)
    lost = []
    for _ in range(ratchet.MAX_SKIP + 1):
        alice, m = send(alice, b"never delivered")
        lost.append(m)
    bob, reply = send(bob, b"reply")
    alice, _ = recv(alice, reply)
    alice, fresh = send(alice, b"new chain")
    bob, text = recv(bob, fresh)
    assert text == b"new chain"
    assert bob.skipped == {}
    with pytest.raises(ReplayError):
        recv(bob, lost[0])


def test_stored_skipped_keys_are_capped_oldest_first() -> None:
    alice, bob = pair()
    messages = []
    for i in range(3 * (ratchet.MAX_SKIP + 1)):
        alice, m = send(alice, b"%d" % i)
        messages.append(m)
    for index in range(ratchet.MAX_SKIP, len(messages), ratchet.MAX_SKIP + 1):
        bob, _ = recv(bob, messages[index])
    assert len(bob.skipped) == ratchet.MAX_SKIPPED_KEYS
    with pytest.raises(ReplayError):
        recv(bob, messages[0])  # the oldest skipped key was dropped
    bob, text = recv(bob, messages[-2])
    assert text == b"%d" % (len(messages) - 2)


def test_skipped_keys_age_out() -> None:
    alice, bob = pair()
    alice, m0 = send(alice, b"late")
    alice, m1 = send(alice, b"first")
    alice, m2 = send(alice, b"much later")
    bob, _ = recv(bob, m1, now=NOW)
    assert len(bob.skipped) == 1
    assert ratchet.expire_skipped(bob, NOW + 1) is bob
    later = NOW + ratchet.SKIPPED_KEY_TTL + 1
    assert ratchet.expire_skipped(bob, later).skipped == {}
    bob, _ = recv(bob, m2, now=later)  # decrypt ages out too
    assert bob.skipped == {}
    with pytest.raises(ReplayError):
        recv(bob, m0, now=later)


def test_failed_decryption_changes_no_state() -> None:
    alice, bob = pair()
    alice, m0 = send(alice, b"zero")
    alice, m1 = send(alice, b"one")
    bob, _ = recv(bob, m1)
    before = bob.to_bytes()
    forged = m0[:-1] + bytes([m0[-1] ^ 1])
    with pytest.raises(DecryptionError):
        recv(bob, forged)
    with pytest.raises(DecryptionError):
        ratchet.decrypt(bob, m0, b"other ad", NOW, seeded_rng(1))
    assert bob.to_bytes() == before
    bob, text = recv(bob, m0)
    assert text == b"zero"


def test_replays_rejected_also_after_restart() -> None:
    alice, bob = pair()
    alice, m0 = send(alice, b"zero")
    alice, m1 = send(alice, b"one")
    bob, _ = recv(bob, m1)
    bob, _ = recv(bob, m0)  # from the skipped store, then erased
    for state in (bob, reload(bob)):
        for message in (m0, m1):
            with pytest.raises(ReplayError):
                recv(state, message)
    # an old chain after a DH step is refused without any DH work
    bob, b0 = send(bob, b"reply")
    alice, _ = recv(alice, b0)
    alice, m2 = send(alice, b"new chain")
    bob, _ = recv(bob, m2)
    with pytest.raises(ReplayError):
        recv(reload(bob), m1)


def flipped(message: bytes, bit: int) -> bytes:
    data = bytearray(message)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


@pytest.mark.parametrize("dh_step", [False, True])
def test_every_bit_flip_in_header_or_ciphertext_is_rejected(dh_step: bool) -> None:
    alice, bob = pair()
    alice, m = send(alice, b"flip me")
    if dh_step:
        bob, _ = recv(bob, m)
        bob, m = send(bob, b"flip me too")
        receiver = alice
    else:
        receiver = bob
    before = receiver.to_bytes()
    for bit in range(len(m) * 8):
        with pytest.raises(PeerlineError):
            recv(receiver, flipped(m, bit))
    assert receiver.to_bytes() == before
    assert recv(receiver, m)[1].startswith(b"flip me")


def test_truncated_messages_are_remote_errors() -> None:
    alice, bob = pair()
    alice, m = send(alice, b"")
    for size in range(ratchet.HEADER.size + 16):
        with pytest.raises(RemoteProtocolError):
            recv(bob, m[:size])


def test_state_bytes_round_trip_and_refuse_garbage() -> None:
    alice, bob = pair()
    alice, _ = send(alice, b"0")
    alice, m1 = send(alice, b"1")
    bob, _ = recv(bob, m1)  # one skipped key in the state
    for state in (alice, bob):
        data = state.to_bytes()
        assert RatchetState.from_bytes(data) == state
        assert RatchetState.from_bytes(data).to_bytes() == data
        for cut in range(len(data)):
            with pytest.raises(RemoteProtocolError):
                RatchetState.from_bytes(data[:cut])
    for garbage in (b"", b"\x00", b"\x91\x02", bytes(range(256))):
        with pytest.raises(RemoteProtocolError):
            RatchetState.from_bytes(garbage)


def test_repr_shows_no_key_material() -> None:
    alice, _ = pair()
    text = repr(alice) + str(alice)
    for secret in (alice.root_key, alice.dhs_secret, alice.cks or b""):
        assert secret.hex() not in text
        assert repr(secret) not in text
