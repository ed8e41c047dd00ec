"""The Double Ratchet (pure, immutable, sans-I/O).

Every operation takes a :class:`RatchetState` plus its input (and ``now``/``rng`` where time or
randomness matter) and returns a *new* state and its output. Nothing is mutated, so:

- a failed decryption changes no state (the caller simply keeps the old object);
- "persist before send" is the caller's order of operations: store ``encrypt``'s new state,
  then let the ciphertext leave the node. A crash before the store means the ciphertext never
  left; a crash after it means the message number is never reused.

Constructions (the same as ``doubleratchet``'s recommended modules, which
``tests/unit/test_ratchet_differential.py`` interoperates with):

- root chain: HKDF-SHA256 with the root key as salt, the X25519 output as input key material
  and :data:`ROOT_INFO` as info; 64 bytes = new root key || new chain key;
- message chains: separate HMACs, ``chain' = HMAC(chain, 0x02)``, ``mk = HMAC(chain, 0x01)``;
- AEAD: XChaCha20-Poly1305 under ``key = HKDF-Expand-SHA256(mk, info = AEAD_INFO, 32)``
  (one HMAC; RFC 5869 section 3.3 lets Extract be skipped because ``mk`` is already a uniform
  HMAC output) with a constant all-zero nonce; associated data = caller AD || the 40-byte
  header. A constant nonce is sound because every message key encrypts exactly one message
  (the chain advances, and the state is stored before a ciphertext leaves); deriving the nonce
  from ``mk`` as well would add an HMAC and no safety, since a repeated ``mk`` would repeat
  any derived nonce too.

Header (fixed layout, 40 bytes): sender ratchet public key (32) || PN (u32) || N (u32).

Limits: one message may make us derive at most :data:`MAX_SKIP` keys of one chain (more is
:class:`LimitExceededError`, state unchanged); at most :data:`MAX_SKIPPED_KEYS` skipped keys
are stored (oldest dropped first) and each lives :data:`SKIPPED_KEY_TTL` seconds. A message
whose key was already used (or dropped) is a :class:`ReplayError`; used keys are never stored,
so a reloaded state cannot derive them again.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from node import wire
from node.crypto import (
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    KEY_SIZE,
    Rng,
    X25519PrivateKey,
    aead_decrypt,
    aead_encrypt,
    hkdf_sha256,
    hmac_sha256,
    x25519,
)
from node.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError, ReplayError

__all__ = [
    "AEAD_INFO",
    "CHAIN_CONSTANT",
    "HEADER",
    "MAX_SKIP",
    "MAX_SKIPPED_KEYS",
    "ROOT_INFO",
    "SKIPPED_KEY_TTL",
    "Header",
    "RatchetState",
    "decrypt",
    "encrypt",
    "expire_skipped",
    "initiator",
    "open_with_message_key",
    "parse_header",
    "responder",
    "seal_with_message_key",
]

MAX_SKIP = 1000
MAX_SKIPPED_KEYS = 2000
SKIPPED_KEY_TTL = 30 * 24 * 3600.0
MAX_PAST_REMOTE_KEYS = 16
"""Past remote ratchet keys remembered so an old chain's replay is refused without a DH."""
MAX_MESSAGE_NUMBER = 2**32 - 1
ROOT_INFO = b"peerline/ratchet-root/v1"
AEAD_INFO = b"peerline/ratchet-aead/v1"
CHAIN_CONSTANT = b"\x02\x01"
HEADER = struct.Struct(">32sII")
_NEXT_CHAIN = CHAIN_CONSTANT[:1]
_MESSAGE_KEY = CHAIN_CONSTANT[1:]
_ZERO_NONCE = bytes(AEAD_NONCE_SIZE)
_AEAD_EXPAND_INPUT = AEAD_INFO + b"\x01"
_STATE_VERSION = 1

SkippedKeys = Mapping[tuple[bytes, int], tuple[bytes, float]]
"""(remote ratchet public key, N) -> (message key, time it was derived). Never mutated."""


@dataclass(frozen=True, slots=True)
class Header:
    """The cleartext ratchet header: sender ratchet key, previous chain length, number."""

    dh: bytes
    pn: int
    n: int

    def to_bytes(self) -> bytes:
        return HEADER.pack(self.dh, self.pn, self.n)


def parse_header(message: bytes) -> tuple[Header, bytes, bytes]:
    """Split a ratchet message into (header, header bytes, ciphertext); refuses short input."""
    if len(message) < HEADER.size + AEAD_TAG_SIZE:
        raise RemoteProtocolError("ratchet message too short", code="ratchet.malformed")
    raw = message[: HEADER.size]
    dh, pn, n = HEADER.unpack(raw)
    return Header(dh, pn, n), raw, message[HEADER.size :]


@dataclass(frozen=True, slots=True, repr=False)
class RatchetState:
    """One side of a Double Ratchet session. Immutable; ``repr`` shows no key material."""

    root_key: bytes
    dhs_secret: bytes
    dhs_public: bytes
    dhr: bytes | None
    cks: bytes | None
    ckr: bytes | None
    ns: int = 0
    nr: int = 0
    pn: int = 0
    skipped: SkippedKeys = field(default_factory=dict)
    past_remote: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return (
            f"RatchetState(ns={self.ns}, nr={self.nr}, pn={self.pn}, "
            f"skipped={len(self.skipped)}, keys=<hidden>)"
        )

    def to_bytes(self) -> bytes:
        """Canonical, versioned bytes (for the store only: they contain secrets)."""
        return wire.encode_message(_StateRecord.from_state(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetState:
        """Inverse of :meth:`to_bytes`; refuses anything malformed with RemoteProtocolError."""
        return wire.decode_message(_StateRecord, data, max_size=_MAX_STATE_BYTES).to_state()


# --------------------------------------------------------------------------- KDFs and AEAD


def _kdf_root(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = hkdf_sha256(dh_out, salt=root_key, info=ROOT_INFO, length=2 * KEY_SIZE)
    return out[:KEY_SIZE], out[KEY_SIZE:]


def _kdf_chain(chain_key: bytes) -> tuple[bytes, bytes]:
    """(next chain key, message key)."""
    return hmac_sha256(chain_key, _NEXT_CHAIN), hmac_sha256(chain_key, _MESSAGE_KEY)


def _aead_key(message_key: bytes) -> bytes:
    """HKDF-Expand(PRK = mk, info = AEAD_INFO, L = 32) = HMAC(mk, AEAD_INFO || 0x01)."""
    return hmac_sha256(message_key, _AEAD_EXPAND_INPUT)


def seal_with_message_key(message_key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """The ratchet's AEAD: XChaCha20-Poly1305 under a key derived from ``mk`` (zero nonce)."""
    return aead_encrypt(_aead_key(message_key), _ZERO_NONCE, plaintext, associated_data)


def open_with_message_key(message_key: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`seal_with_message_key`; :class:`DecryptionError` on any forgery."""
    return aead_decrypt(_aead_key(message_key), _ZERO_NONCE, ciphertext, associated_data)


# --------------------------------------------------------------------------- construction


def initiator(shared_secret: bytes, remote_ratchet_public: bytes, rng: Rng) -> RatchetState:
    """The side that sends first (X3DH initiator); ``remote_ratchet_public`` = peer's SPK."""
    _check_key(shared_secret, "shared secret")
    own = X25519PrivateKey.generate(rng)
    root, cks = _kdf_root(shared_secret, own.exchange(remote_ratchet_public))
    return RatchetState(root, own.secret_bytes(), own.public_key, remote_ratchet_public, cks, None)


def responder(shared_secret: bytes, own_ratchet_secret: bytes) -> RatchetState:
    """The side that receives first; ``own_ratchet_secret`` = the signed prekey's secret.

    It cannot encrypt until the first message arrives (that message's DH step makes a chain).
    """
    _check_key(shared_secret, "shared secret")
    own = X25519PrivateKey(own_ratchet_secret)
    return RatchetState(shared_secret, own.secret_bytes(), own.public_key, None, None, None)


def _check_key(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != KEY_SIZE:
        raise LocalProtocolError(f"{what} must be 32 bytes", code="ratchet.bad_argument")


# --------------------------------------------------------------------------- encrypt


def encrypt(
    state: RatchetState, plaintext: bytes, associated_data: bytes
) -> tuple[RatchetState, bytes]:
    """Encrypt one message: returns (new state, header || ciphertext).

    Store the new state before the message leaves the node.
    """
    if state.cks is None:
        raise LocalProtocolError(
            "this session cannot send before it has received", code="ratchet.no_sending_chain"
        )
    if state.ns >= MAX_MESSAGE_NUMBER:
        raise LocalProtocolError("sending chain exhausted", code="ratchet.chain_exhausted")
    header = HEADER.pack(state.dhs_public, state.pn, state.ns)
    cks, message_key = _kdf_chain(state.cks)
    ciphertext = seal_with_message_key(message_key, plaintext, associated_data + header)
    new_state = RatchetState(
        state.root_key,
        state.dhs_secret,
        state.dhs_public,
        state.dhr,
        cks,
        state.ckr,
        state.ns + 1,
        state.nr,
        state.pn,
        state.skipped,
        state.past_remote,
    )
    return new_state, header + ciphertext


# --------------------------------------------------------------------------- decrypt


def decrypt(
    state: RatchetState, message: bytes, associated_data: bytes, now: float, rng: Rng
) -> tuple[RatchetState, bytes]:
    """Decrypt one message: returns (new state, plaintext); on any error ``state`` is intact.

    Raises :class:`ReplayError` for a message whose key was used or dropped,
    :class:`LimitExceededError` for a jump beyond :data:`MAX_SKIP`, :class:`DecryptionError`
    for a forgery, :class:`RemoteProtocolError`/:class:`InvalidKeyError` for malformed input.
    """
    header, raw_header, ciphertext = parse_header(message)
    ad = associated_data + raw_header
    stored = state.skipped.get((header.dh, header.n))
    if stored is not None:
        plaintext = open_with_message_key(stored[0], ciphertext, ad)
        skipped = dict(state.skipped)
        del skipped[(header.dh, header.n)]
        return _replace_skipped(state, _expire(skipped, now)), plaintext
    if header.dh == state.dhr:
        return _decrypt_current_chain(state, header, ciphertext, ad, now)
    if header.dh in state.past_remote:
        raise ReplayError("message key already used or dropped", code="ratchet.replay")
    return _decrypt_with_dh_step(state, header, ciphertext, ad, now=now, rng=rng)


def _decrypt_current_chain(
    state: RatchetState, header: Header, ciphertext: bytes, ad: bytes, now: float
) -> tuple[RatchetState, bytes]:
    if header.n < state.nr or state.ckr is None:
        raise ReplayError("message key already used or dropped", code="ratchet.replay")
    _check_jump(header.n - state.nr)
    new_keys, ckr = _skip(state.ckr, header.dh, state.nr, header.n, now)
    ckr, message_key = _kdf_chain(ckr)
    plaintext = open_with_message_key(message_key, ciphertext, ad)
    skipped = _merge(state.skipped, new_keys, now)
    new_state = RatchetState(
        state.root_key,
        state.dhs_secret,
        state.dhs_public,
        state.dhr,
        state.cks,
        ckr,
        state.ns,
        header.n + 1,
        state.pn,
        skipped,
        state.past_remote,
    )
    return new_state, plaintext


def _decrypt_with_dh_step(
    state: RatchetState, header: Header, ciphertext: bytes, ad: bytes, *, now: float, rng: Rng
) -> tuple[RatchetState, bytes]:
    """A new remote ratchet key: finish the old chain, derive the new receiving chain, decrypt,
    and only then make our new sending key pair (post-compromise healing)."""
    _check_jump(header.n)
    old_keys: dict[tuple[bytes, int], tuple[bytes, float]] = {}
    if state.ckr is not None and state.dhr is not None and header.pn - state.nr <= MAX_SKIP:
        # Like doubleratchet: a longer gap in the *old* chain is given up (those messages are
        # lost) rather than blocking the session for good; the work stays bounded either way.
        old_keys, _ = _skip(state.ckr, state.dhr, state.nr, header.pn, now)
    root, ckr = _kdf_root(state.root_key, x25519(state.dhs_secret, header.dh))
    new_keys, ckr = _skip(ckr, header.dh, 0, header.n, now)
    ckr, message_key = _kdf_chain(ckr)
    plaintext = open_with_message_key(message_key, ciphertext, ad)
    own = X25519PrivateKey.generate(rng)
    root, cks = _kdf_root(root, own.exchange(header.dh))
    past = state.past_remote if state.dhr is None else (state.dhr, *state.past_remote)
    old_keys.update(new_keys)
    new_state = RatchetState(
        root,
        own.secret_bytes(),
        own.public_key,
        header.dh,
        cks,
        ckr,
        0,
        header.n + 1,
        state.ns,
        _merge(state.skipped, old_keys, now),
        past[:MAX_PAST_REMOTE_KEYS],
    )
    return new_state, plaintext


def _check_jump(count: int) -> None:
    if count > MAX_SKIP:
        raise LimitExceededError(
            f"message skips {count} keys (limit {MAX_SKIP})", code="ratchet.skip_limit"
        )


def _skip(
    chain_key: bytes, dh: bytes, start: int, until: int, now: float
) -> tuple[dict[tuple[bytes, int], tuple[bytes, float]], bytes]:
    """Derive the keys ``start..until-1`` of a chain; returns them and the advanced chain key."""
    keys: dict[tuple[bytes, int], tuple[bytes, float]] = {}
    for n in range(start, until):
        chain_key, message_key = _kdf_chain(chain_key)
        keys[(dh, n)] = (message_key, now)
    return keys, chain_key


def _merge(old: SkippedKeys, new: SkippedKeys, now: float) -> SkippedKeys:
    """Add keys (oldest first), age out expired ones, keep at most MAX_SKIPPED_KEYS."""
    if not new:
        return _expire(old, now) if old else old
    merged = dict(old)
    merged.update(new)
    excess = len(merged) - MAX_SKIPPED_KEYS
    if excess > 0:
        for key in list(merged)[:excess]:
            del merged[key]
    return _expire(merged, now)


def _expire(skipped: SkippedKeys, now: float) -> SkippedKeys:
    """Drop keys older than SKIPPED_KEY_TTL. Keys are stored oldest first, so this looks at
    the front only; the common case (nothing expired) costs one lookup."""
    cutoff = now - SKIPPED_KEY_TTL
    if not skipped or next(iter(skipped.values()))[1] >= cutoff:
        return skipped
    return {key: value for key, value in skipped.items() if value[1] >= cutoff}


def _replace_skipped(state: RatchetState, skipped: SkippedKeys) -> RatchetState:
    return RatchetState(
        state.root_key,
        state.dhs_secret,
        state.dhs_public,
        state.dhr,
        state.cks,
        state.ckr,
        state.ns,
        state.nr,
        state.pn,
        skipped,
        state.past_remote,
    )


def expire_skipped(state: RatchetState, now: float) -> RatchetState:
    """Age out stored skipped keys (call on a timer or at load; decrypt also does it)."""
    skipped = _expire(state.skipped, now)
    return state if skipped is state.skipped else _replace_skipped(state, skipped)


# --------------------------------------------------------------------------- persistence

_Key = Annotated[bytes, wire.Bytes(size=KEY_SIZE)]
_U32 = Annotated[int, wire.Int(max=MAX_MESSAGE_NUMBER)]


@dataclass(frozen=True, slots=True, repr=False)
class _SkippedRecord(wire.Message):
    dh: _Key
    n: _U32
    message_key: _Key
    created: Annotated[float, wire.Float(min=-(2.0**53))]


@dataclass(frozen=True, slots=True, repr=False)
class _StateRecord(wire.Message):
    version: Annotated[int, wire.Int(min=_STATE_VERSION, max=_STATE_VERSION)]
    root_key: _Key
    dhs_secret: _Key
    dhr: Annotated[bytes | None, wire.Maybe(wire.Bytes(size=KEY_SIZE))]
    cks: Annotated[bytes | None, wire.Maybe(wire.Bytes(size=KEY_SIZE))]
    ckr: Annotated[bytes | None, wire.Maybe(wire.Bytes(size=KEY_SIZE))]
    ns: _U32
    nr: _U32
    pn: _U32
    skipped: Annotated[
        list[_SkippedRecord],
        wire.ListOf(wire.Nested(_SkippedRecord), max_items=MAX_SKIPPED_KEYS),
    ]
    past_remote: Annotated[
        list[bytes], wire.ListOf(wire.Bytes(size=KEY_SIZE), max_items=MAX_PAST_REMOTE_KEYS)
    ]

    @classmethod
    def from_state(cls, state: RatchetState) -> _StateRecord:
        skipped = [
            _SkippedRecord(dh, n, key, created) for (dh, n), (key, created) in state.skipped.items()
        ]
        return cls(
            _STATE_VERSION,
            state.root_key,
            state.dhs_secret,
            state.dhr,
            state.cks,
            state.ckr,
            state.ns,
            state.nr,
            state.pn,
            skipped,
            list(state.past_remote),
        )

    def to_state(self) -> RatchetState:
        skipped = {(s.dh, s.n): (s.message_key, s.created) for s in self.skipped}
        if len(skipped) != len(self.skipped):
            raise RemoteProtocolError("duplicate skipped key", code="ratchet.bad_state")
        own = X25519PrivateKey(self.dhs_secret)
        return RatchetState(
            self.root_key,
            own.secret_bytes(),
            own.public_key,
            self.dhr,
            self.cks,
            self.ckr,
            self.ns,
            self.nr,
            self.pn,
            skipped,
            tuple(self.past_remote),
        )


_MAX_STATE_BYTES = 256 + MAX_SKIPPED_KEYS * 96 + MAX_PAST_REMOTE_KEYS * 40
