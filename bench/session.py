"""E2EE session figures: encrypt+decrypt pairs per second beside raw XChaCha20-Poly1305.

A *pair* is one 300-byte message encrypted by one side (``node.session.encrypt``) and
decrypted by the other (``node.session.receive``), on one core. Two shapes:

- same chain: one direction only (symmetric ratchet steps);
- alternating: the direction flips every message, so every decryption is a DH ratchet step
  (two X25519 and one key generation: the cost of post-compromise healing).

The ceiling is the raw libsodium XChaCha20-Poly1305 encrypt+decrypt of the same 300 bytes,
measured in the same run. Target: the E2EE cost per message stays under
:data:`BUDGET_US` per side, i.e. ``(1/pairs_rate - 1/raw_rate) / 2 <= 25 us``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import nacl.bindings as sodium

from bench.table import Row, ops_per_second, paired_rates
from node import prekeys, session
from node.identity import Identity
from node.prekeys import PrekeyState
from node.session import Session

BUDGET_US = 25.0
_SIZE = 300
_NOW = 1_700_000_000.0
_KEY = bytes(range(32))
_NONCE = bytes(range(24))


class _Side:
    def __init__(self, identity: Identity, state: PrekeyState) -> None:
        self.identity = identity
        self.prekeys = state
        self.session: Session | None = None


def _established(rng: Callable[[int], bytes]) -> tuple[_Side, _Side]:
    """Two sides with a session that has seen one round trip (normal messages both ways)."""
    sides = []
    for _ in range(2):
        identity = Identity.generate(rng)
        sides.append(_Side(identity, prekeys.generate(identity, now=_NOW, rng=rng)))
    alice, bob = sides
    bundle = prekeys.make_bundle(bob.prekeys, bob.identity, now=_NOW)
    alice.session = session.start(alice.identity, bundle, rng=rng)
    _transfer(alice, bob, bytes(_SIZE), rng)
    _transfer(bob, alice, bytes(_SIZE), rng)
    return alice, bob


def _transfer(sender: _Side, receiver: _Side, text: bytes, rng: Callable[[int], bytes]) -> None:
    assert sender.session is not None
    sender.session, data = session.encrypt(sender.session, text)
    got = session.receive(
        receiver.identity,
        receiver.prekeys,
        receiver.session,
        data,
        sender=sender.identity.peer_id,
        now=_NOW,
        rng=rng,
    )
    receiver.session, receiver.prekeys = got.session, got.prekeys


def _raw_pair() -> None:
    plaintext = bytes(_SIZE)
    ciphertext = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, b"", _NONCE, _KEY)
    sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, b"", _NONCE, _KEY)


def _shape(name: str, alternate: bool, seconds: float) -> list[Row]:
    rng = random.Random(1).randbytes
    alice, bob = _established(rng)
    text = bytes(_SIZE)
    turn = [alice, bob]

    def pair() -> None:
        _transfer(turn[0], turn[1], text, rng)
        if alternate:
            turn.reverse()

    value, ceiling = paired_rates(pair, _raw_pair, seconds)
    per_side_us = (1 / value - 1 / ceiling) / 2 * 1e6
    target_rate = 1 / (1 / ceiling + 2 * BUDGET_US / 1e6)
    return [
        {
            "name": f"session.{name}_pairs_300B",
            "value": value,
            "unit": "pairs/s",
            "ceiling": ceiling,
            "ceiling_name": "raw xchacha20poly1305 enc+dec 300B",
            "target": target_rate,
        },
        {
            "name": f"session.{name}_cost_per_side",
            "value": per_side_us,
            "unit": "us",
            "ceiling": None,
            "ceiling_name": None,
            "target": BUDGET_US,
            "higher_is_better": False,
        },
    ]


def _persist(seconds: float) -> Row:
    alice, _ = _established(random.Random(2).randbytes)
    state = alice.session
    assert state is not None
    return {
        "name": "session.state_to_bytes",
        "value": ops_per_second(state.to_bytes, seconds),
        "unit": "ops/s",
        "ceiling": None,
        "ceiling_name": None,
        "target": None,
    }


def run(quick: bool = False) -> list[Row]:
    seconds = 0.5 if quick else 2.5
    return [
        *_shape("same_chain", alternate=False, seconds=seconds),
        *_shape("alternating", alternate=True, seconds=seconds),
        _persist(seconds / 5),
    ]
