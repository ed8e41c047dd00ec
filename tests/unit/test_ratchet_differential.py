"""Differential test: our hand-written ratchet interoperates with ``doubleratchet`` 1.3.0.

The library is configured with the same constructions as ``node/ratchet.py``: its recommended
HKDF root chain (info = ``ROOT_INFO``), its recommended separate-HMAC message chains (constant
``0x02 0x01``), X25519, and an AEAD adapter that calls our message-key AEAD. The associated
data adapter appends the same 40-byte header encoding. Every message one side encrypts must
decrypt on the other, in both roles, across DH ratchet steps and out of order. The library is
async; its coroutines are driven with ``asyncio.run`` (tests only).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from doubleratchet import AuthenticationFailedException, EncryptedMessage, Header
from doubleratchet import DoubleRatchet as LibDoubleRatchet
from doubleratchet.recommended import crypto_provider, kdf_hkdf, kdf_separate_hmacs
from doubleratchet.recommended.diffie_hellman_ratchet_curve25519 import (
    DiffieHellmanRatchet as LibDhRatchet,
)

from node import ratchet
from node.crypto import X25519PrivateKey
from node.errors import DecryptionError
from node.ratchet import RatchetState

AD = b"peerline/differential" + bytes(64)
NOW = 1_700_000_000.0
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class RootKdf(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function() -> crypto_provider.HashFunction:
        return crypto_provider.HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return ratchet.ROOT_INFO


class MessageKdf(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function() -> crypto_provider.HashFunction:
        return crypto_provider.HashFunction.SHA_256


class OurAead:
    """The library's AEAD interface, implemented with our message-key AEAD."""

    @staticmethod
    async def encrypt(plaintext: bytes, key: bytes, associated_data: bytes) -> bytes:
        return ratchet.seal_with_message_key(key, plaintext, associated_data)

    @staticmethod
    async def decrypt(ciphertext: bytes, key: bytes, associated_data: bytes) -> bytes:
        try:
            return ratchet.open_with_message_key(key, ciphertext, associated_data)
        except DecryptionError as exc:
            raise AuthenticationFailedException(str(exc)) from None


class LibRatchet(LibDoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: Header) -> bytes:
        return associated_data + header_bytes(header)


def header_bytes(header: Header) -> bytes:
    return ratchet.HEADER.pack(
        header.ratchet_pub, header.previous_sending_chain_length, header.sending_chain_length
    )


def to_lib(message: bytes) -> EncryptedMessage:
    header, _, ciphertext = ratchet.parse_header(message)
    return EncryptedMessage(Header(header.dh, header.pn, header.n), ciphertext)


def from_lib(message: EncryptedMessage) -> bytes:
    return header_bytes(message.header) + message.ciphertext


CONFIG: dict[str, Any] = {
    "diffie_hellman_ratchet_class": LibDhRatchet,
    "root_chain_kdf": RootKdf,
    "message_chain_kdf": MessageKdf,
    "message_chain_constant": ratchet.CHAIN_CONSTANT,
    "dos_protection_threshold": ratchet.MAX_SKIP,
    "max_num_skipped_message_keys": ratchet.MAX_SKIPPED_KEYS,
    "aead": OurAead,
}


class Ours:
    """Our ratchet behind the same two calls as the library adapter."""

    def __init__(self, state: RatchetState, seed: int) -> None:
        self.state = state
        self.rng = random.Random(seed).randbytes

    def encrypt(self, plaintext: bytes) -> bytes:
        self.state, message = ratchet.encrypt(self.state, plaintext, AD)
        return message

    def decrypt(self, message: bytes) -> bytes:
        # a reload before every decryption also checks persistence against the library
        state = RatchetState.from_bytes(self.state.to_bytes())
        self.state, plaintext = ratchet.decrypt(state, message, AD, NOW, self.rng)
        return plaintext


class Theirs:
    def __init__(self, lib: LibRatchet) -> None:
        self.lib = lib

    def encrypt(self, plaintext: bytes) -> bytes:
        return from_lib(run(self.lib.encrypt_message(plaintext, AD)))

    def decrypt(self, message: bytes) -> bytes:
        result: bytes = run(self.lib.decrypt_message(to_lib(message), AD))
        return result


Party = Ours | Theirs


def start(ours_first: bool, seed: int) -> tuple[Party, Party, bytes]:
    """(initiator, responder, first message already decrypted by the responder)."""
    rng = random.Random(seed).randbytes
    shared = rng(32)
    spk = X25519PrivateKey.generate(rng)
    first = b"first message"
    if ours_first:
        alice = Ours(ratchet.initiator(shared, spk.public_key, rng), seed + 1)
        message = alice.encrypt(first)
        bob_lib, text = run(
            LibRatchet.decrypt_initial_message(
                shared_secret=shared,
                own_ratchet_priv=spk.secret_bytes(),
                message=to_lib(message),
                associated_data=AD,
                **CONFIG,
            )
        )
        assert text == first
        return alice, Theirs(bob_lib), message
    alice_lib, encrypted = run(
        LibRatchet.encrypt_initial_message(
            shared_secret=shared,
            recipient_ratchet_pub=spk.public_key,
            message=first,
            associated_data=AD,
            **CONFIG,
        )
    )
    bob = Ours(ratchet.responder(shared, spk.secret_bytes()), seed + 2)
    assert bob.decrypt(from_lib(encrypted)) == first
    return Theirs(alice_lib), bob, from_lib(encrypted)


@pytest.mark.parametrize("ours_first", [True, False])
def test_scripted_conversation_across_dh_steps_and_out_of_order(ours_first: bool) -> None:
    alice, bob, _ = start(ours_first, seed=5)
    a = [alice.encrypt(b"a%d" % i) for i in range(3)]
    assert bob.decrypt(a[2]) == b"a2"
    b = [bob.encrypt(b"b%d" % i) for i in range(3)]
    assert alice.decrypt(b[1]) == b"b1"
    a += [alice.encrypt(b"a%d" % i) for i in range(3, 5)]  # a new sending chain for Alice
    assert bob.decrypt(a[4]) == b"a4"  # DH step first: a0, a1 (old chain), a3 become skipped
    assert bob.decrypt(a[0]) == b"a0"
    assert bob.decrypt(a[3]) == b"a3"
    assert bob.decrypt(a[1]) == b"a1"
    assert alice.decrypt(b[0]) == b"b0"
    assert alice.decrypt(b[2]) == b"b2"


@pytest.mark.parametrize("seed", range(6))
def test_random_schedules_interoperate(seed: int) -> None:
    """Random sends both ways, delivered in a random order (bounded: 40 steps)."""
    rnd = random.Random(seed)
    alice, bob, _ = start(ours_first=seed % 2 == 0, seed=seed * 10)
    parties = {"alice": alice, "bob": bob}
    in_flight: dict[str, list[tuple[bytes, bytes]]] = {"alice": [], "bob": []}
    for step in range(40):
        sender = rnd.choice(["alice", "bob"])
        receiver = "bob" if sender == "alice" else "alice"
        if rnd.random() < 0.6:
            text = b"%s-%d" % (sender.encode(), step)
            in_flight[receiver].append((parties[sender].encrypt(text), text))
        elif in_flight[receiver]:
            message, text = in_flight[receiver].pop(rnd.randrange(len(in_flight[receiver])))
            assert parties[receiver].decrypt(message) == text
    for receiver, queue in in_flight.items():
        for message, text in queue:
            assert parties[receiver].decrypt(message) == text


class OtherRootKdf(RootKdf):
    @staticmethod
    def _get_info() -> bytes:
        return b"some other application"


def test_the_differential_has_teeth_a_different_root_kdf_fails() -> None:
    rng = random.Random(1).randbytes
    shared = rng(32)
    spk = X25519PrivateKey.generate(rng)
    alice = Ours(ratchet.initiator(shared, spk.public_key, rng), 2)
    message = alice.encrypt(b"x")
    with pytest.raises(AuthenticationFailedException):
        run(
            LibRatchet.decrypt_initial_message(
                shared_secret=shared,
                own_ratchet_priv=spk.secret_bytes(),
                message=to_lib(message),
                associated_data=AD,
                **{**CONFIG, "root_chain_kdf": OtherRootKdf},
            )
        )
