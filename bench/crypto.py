"""Crypto figures: our ``node.crypto`` wrappers beside the raw libraries, in the same run.

The raw calls (``nacl.bindings``, stdlib ``hmac``/``hashlib``) are the ceilings; the ratio
shows what the wrapper's argument checks and error mapping cost. Target: the wrapper keeps
at least :data:`WRAPPER_BUDGET` of the raw speed. This module imports nacl directly on
purpose: it measures the library, and ``bench/`` is outside the layering rules.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import nacl.bindings as sodium

from bench.table import Row, paired_rates
from node import crypto

WRAPPER_BUDGET = 0.8
"""The wrapper must keep 80% of the raw library's speed."""

_SEED = bytes(range(32))
_MESSAGE_64 = bytes(range(64))
_DOMAIN = "peerline/bench/v1"
_AEAD_KEY = bytes(range(32))
_AEAD_NONCE = bytes(range(24))
_SMALL = 200
_MIB = 1 << 20


def _pair(
    name: str,
    unit: str,
    ours: Callable[[], object],
    raw: Callable[[], object],
    *,
    raw_name: str,
    seconds: float,
    scale: float = 1.0,
) -> Row:
    """One row: our wrapper's rate beside the raw call's (``seconds`` each), times ``scale``."""
    value, ceiling = (rate * scale for rate in paired_rates(ours, raw, seconds))
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "ceiling": ceiling,
        "ceiling_name": raw_name,
        "target": ceiling * WRAPPER_BUDGET,
    }


def _signatures(seconds: float) -> list[Row]:
    key = crypto.SigningKey(_SEED)
    public, secret = sodium.crypto_sign_seed_keypair(_SEED)
    signature = key.sign(_DOMAIN, _MESSAGE_64)
    signed = sodium.crypto_sign(_MESSAGE_64, secret)
    return [
        _pair(
            "crypto.ed25519_sign_64B",
            "ops/s",
            lambda: key.sign(_DOMAIN, _MESSAGE_64),
            lambda: sodium.crypto_sign(_MESSAGE_64, secret),
            raw_name="nacl crypto_sign",
            seconds=seconds,
        ),
        _pair(
            "crypto.ed25519_verify_64B",
            "ops/s",
            lambda: crypto.verify(public, _DOMAIN, _MESSAGE_64, signature),
            lambda: sodium.crypto_sign_open(signed, public),
            raw_name="nacl crypto_sign_open",
            seconds=seconds,
        ),
    ]


def _x25519(seconds: float) -> list[Row]:
    mine = crypto.X25519PrivateKey(_SEED)
    peer = crypto.X25519PrivateKey(bytes(reversed(_SEED))).public_key
    secret = mine.secret_bytes()
    return [
        _pair(
            "crypto.x25519",
            "ops/s",
            lambda: crypto.x25519(secret, peer),
            lambda: sodium.crypto_scalarmult(secret, peer),
            raw_name="nacl crypto_scalarmult",
            seconds=seconds,
        )
    ]


def _aead(seconds: float) -> list[Row]:
    small, large = bytes(_SMALL), bytes(_MIB)
    sealed = crypto.aead_encrypt(_AEAD_KEY, _AEAD_NONCE, small, b"ad")
    encrypt = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
    decrypt = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
    return [
        _pair(
            "crypto.aead_encrypt_200B",
            "ops/s",
            lambda: crypto.aead_encrypt(_AEAD_KEY, _AEAD_NONCE, small, b"ad"),
            lambda: encrypt(small, b"ad", _AEAD_NONCE, _AEAD_KEY),
            raw_name="nacl xchacha20poly1305 encrypt",
            seconds=seconds,
        ),
        _pair(
            "crypto.aead_decrypt_200B",
            "ops/s",
            lambda: crypto.aead_decrypt(_AEAD_KEY, _AEAD_NONCE, sealed, b"ad"),
            lambda: decrypt(sealed, b"ad", _AEAD_NONCE, _AEAD_KEY),
            raw_name="nacl xchacha20poly1305 decrypt",
            seconds=seconds,
        ),
        _pair(
            "crypto.aead_encrypt_1MiB",
            "MB/s",
            lambda: crypto.aead_encrypt(_AEAD_KEY, _AEAD_NONCE, large),
            lambda: encrypt(large, b"", _AEAD_NONCE, _AEAD_KEY),
            raw_name="nacl xchacha20poly1305 encrypt",
            seconds=seconds,
            scale=_MIB / 1e6,
        ),
    ]


def _raw_hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """Minimal one-block HKDF-SHA256 on stdlib one-shot HMAC: the fastest Python can do."""
    prk = hmac.digest(salt, ikm, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def _hashes(seconds: float) -> list[Row]:
    key = _SEED
    return [
        _pair(
            "crypto.hmac_sha256_64B",
            "ops/s",
            lambda: crypto.hmac_sha256(key, _MESSAGE_64),
            lambda: hmac.digest(key, _MESSAGE_64, "sha256"),
            raw_name="stdlib hmac.digest",
            seconds=seconds,
        ),
        _pair(
            "crypto.hkdf_sha256_32B",
            "ops/s",
            lambda: crypto.hkdf_sha256(key, salt=_MESSAGE_64, info=b"bench", length=32),
            lambda: _raw_hkdf(key, _MESSAGE_64, b"bench"),
            raw_name="stdlib hmac.digest x2",
            seconds=seconds,
        ),
        _pair(
            "crypto.blake2b_64B",
            "ops/s",
            lambda: crypto.blake2b(_MESSAGE_64, person=b"peerline/bench"),
            lambda: hashlib.blake2b(_MESSAGE_64, digest_size=32, person=b"peerline/bench").digest(),
            raw_name="stdlib hashlib.blake2b",
            seconds=seconds,
        ),
    ]


def run(quick: bool = False) -> list[Row]:
    """All crypto rows; 0.3 s per measured side (0.05 s with ``quick``): about 6 s in all."""
    seconds = 0.05 if quick else 0.3
    return [*_signatures(seconds), *_x25519(seconds), *_aead(seconds), *_hashes(seconds)]
