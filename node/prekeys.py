"""Prekeys (pure): the signed prekey, the one-time prekey pool and the signed public bundle.

A node keeps one **signed prekey** (SPK), rotated every :data:`SIGNED_PREKEY_ROTATE` seconds;
the previous one stays usable for :data:`SIGNED_PREKEY_GRACE` seconds so first messages built
from a slightly old bundle still open. It also keeps a pool of **one-time prekeys** (OPK,
:data:`ONE_TIME_POOL`, refilled below :data:`ONE_TIME_LOW_WATER`). :func:`maintain` does both
and returns the *same object* when nothing changed (then nothing needs storing or publishing).

The public :class:`PrekeyBundle` (identity, SPK with its own signature, OPK publics, validity)
is signed as a whole with the identity key; :func:`verify_bundle` refuses a bundle whose
signatures or identity do not match, or that has expired. Discovery records carry its
:meth:`PrekeyBundle.digest`; the rendezvous server carries the bundle. A one-time prekey must
be handed out once (the rendezvous server assigns one per fetch); a reused one makes the
first message undecryptable (``x3dh.prekey_used``), never a weaker session.

:class:`PrekeyState` holds secrets: ``repr`` hides them, :meth:`PrekeyState.to_bytes` is for the
store only. It also remembers the X3DH base keys already accepted (bounded), so a replayed
first message is refused after a restart too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from node import wire
from node.crypto import KEY_SIZE, SIGNATURE_SIZE, Rng, X25519PrivateKey, blake2b, verify
from node.errors import CryptoError, LocalProtocolError, RemoteProtocolError
from node.identity import Identity, PeerId

__all__ = [
    "BUNDLE_DOMAIN",
    "CLOCK_SKEW",
    "MAX_BUNDLE_BYTES",
    "ONE_TIME_LOW_WATER",
    "ONE_TIME_POOL",
    "SIGNED_PREKEY_DOMAIN",
    "SIGNED_PREKEY_GRACE",
    "SIGNED_PREKEY_ROTATE",
    "OneTimePrekey",
    "PrekeyBundle",
    "PrekeyState",
    "SignedPrekey",
    "generate",
    "maintain",
    "make_bundle",
    "verify_bundle",
]

SIGNED_PREKEY_DOMAIN = "peerline/signed-prekey/v1"
BUNDLE_DOMAIN = "peerline/prekey-bundle/v1"
SIGNED_PREKEY_ROTATE = 7 * 24 * 3600
SIGNED_PREKEY_GRACE = SIGNED_PREKEY_ROTATE
"""At most the rotation period: the next rotation retires the previous key anyway."""
ONE_TIME_POOL = 100
ONE_TIME_LOW_WATER = 25
MAX_SEEN_BASE_KEYS = 2000
MAX_BUNDLE_BYTES = 8192
_MAX_ID = 2**32 - 1
_MAX_TIME = 2**40
_DIGEST_PERSON = b"peerline/pkb/v1"
CLOCK_SKEW = 600
"""A bundle created up to this many seconds in our future is still accepted."""
_STATE_VERSION = 1

_Key = Annotated[bytes, wire.Bytes(size=KEY_SIZE)]
_Id = Annotated[int, wire.Int(min=1, max=_MAX_ID)]
_Time = Annotated[int, wire.Int(max=_MAX_TIME)]


# --------------------------------------------------------------------------- public bundle


@dataclass(frozen=True, slots=True)
class OneTimePrekey(wire.Message):
    id: _Id
    public: _Key


@dataclass(frozen=True, slots=True)
class SignedPrekey(wire.Message):
    """The public SPK with its own signature (domain :data:`SIGNED_PREKEY_DOMAIN`)."""

    id: _Id
    public: _Key
    signature: Annotated[bytes, wire.Bytes(size=SIGNATURE_SIZE)]


def _signed_prekey_message(identity: bytes, key_id: int, public: bytes) -> bytes:
    return identity + key_id.to_bytes(4, "big") + public


@dataclass(frozen=True, slots=True)
class _BundleBody(wire.Message):
    identity: _Key
    created: _Time
    expires: _Time
    signed_prekey: Annotated[SignedPrekey, wire.Nested(SignedPrekey)]
    one_time: Annotated[
        list[OneTimePrekey], wire.ListOf(wire.Nested(OneTimePrekey), max_items=ONE_TIME_POOL)
    ]


@dataclass(frozen=True, slots=True)
class PrekeyBundle(wire.Message):
    """What others need to start a session with us while we are offline. Public data only."""

    body: Annotated[_BundleBody, wire.Nested(_BundleBody)]
    signature: Annotated[bytes, wire.Bytes(size=SIGNATURE_SIZE)]

    @property
    def peer_id(self) -> PeerId:
        return PeerId(self.body.identity)

    @property
    def signed_prekey(self) -> SignedPrekey:
        return self.body.signed_prekey

    @property
    def one_time(self) -> list[OneTimePrekey]:
        return list(self.body.one_time)

    @property
    def expires(self) -> int:
        return self.body.expires

    def to_bytes(self) -> bytes:
        return wire.encode_message(self)

    def digest(self) -> bytes:
        """32-byte hash of the bundle bytes (what a PeerRecord's ``prekeys_hash`` carries)."""
        return blake2b(self.to_bytes(), size=32, person=_DIGEST_PERSON)


def verify_bundle(data: bytes, *, now: float, expected: PeerId | None = None) -> PrekeyBundle:
    """Decode and check a bundle from the network.

    Refuses (``RemoteProtocolError``/``InvalidSignatureError``, code ``prekeys.*``) malformed
    bytes, a bundle of another identity than ``expected``, a bad SPK or bundle signature, an
    expired bundle and duplicate one-time ids.
    """
    bundle = wire.decode_message(PrekeyBundle, data, max_size=MAX_BUNDLE_BYTES)
    body = bundle.body
    if expected is not None and body.identity != expected.key:
        raise RemoteProtocolError("prekey bundle of another identity", code="prekeys.wrong_peer")
    if not body.created - CLOCK_SKEW <= now < body.expires:
        raise RemoteProtocolError("prekey bundle expired or not yet valid", code="prekeys.expired")
    if len({key.id for key in body.one_time}) != len(body.one_time):
        raise RemoteProtocolError("duplicate one-time prekey id", code="prekeys.malformed")
    spk = body.signed_prekey
    verify(
        body.identity,
        SIGNED_PREKEY_DOMAIN,
        _signed_prekey_message(body.identity, spk.id, spk.public),
        spk.signature,
    )
    verify(body.identity, BUNDLE_DOMAIN, wire.encode_message(body), bundle.signature)
    return bundle


# --------------------------------------------------------------------------- private state


@dataclass(frozen=True, slots=True, repr=False)
class _SecretPrekey(wire.Message):
    id: _Id
    secret: _Key
    created: _Time
    signature: Annotated[bytes, wire.Bytes(size=SIGNATURE_SIZE)]

    def public(self) -> SignedPrekey:
        return SignedPrekey(self.id, X25519PrivateKey(self.secret).public_key, self.signature)


@dataclass(frozen=True, slots=True, repr=False)
class _OneTimeSecret(wire.Message):
    id: _Id
    secret: _Key


@dataclass(frozen=True, slots=True, repr=False)
class _SeenBaseKey(wire.Message):
    signed_prekey_id: _Id
    base_key: _Key


@dataclass(frozen=True, slots=True, repr=False)
class PrekeyState:
    """Our prekey secrets. Immutable; every change returns a new state."""

    signed: _SecretPrekey
    previous: _SecretPrekey | None
    retired_at: int
    one_time: Mapping[int, bytes]
    next_id: int
    seen_base_keys: tuple[tuple[int, bytes], ...] = field(default=())

    def __repr__(self) -> str:
        return (
            f"PrekeyState(signed_id={self.signed.id}, one_time={len(self.one_time)}, "
            "secrets=<hidden>)"
        )

    def signed_prekey_secret(self, key_id: int) -> bytes:
        """The SPK secret for ``key_id`` (current or in its grace period)."""
        for key in (self.signed, self.previous):
            if key is not None and key.id == key_id:
                return key.secret
        raise CryptoError("unknown or retired signed prekey", code="x3dh.unknown_prekey")

    def one_time_secret(self, key_id: int) -> bytes:
        secret = self.one_time.get(key_id)
        if secret is None:
            raise CryptoError("one-time prekey already used or unknown", code="x3dh.prekey_used")
        return secret

    def has_seen(self, signed_prekey_id: int, base_key: bytes) -> bool:
        return (signed_prekey_id, base_key) in self.seen_base_keys

    def after_use(
        self, signed_prekey_id: int, base_key: bytes, one_time_id: int | None
    ) -> PrekeyState:
        """The state once a first message built on these keys has decrypted: the OPK is erased
        and the base key remembered (so the same first message is refused later)."""
        one_time = dict(self.one_time)
        if one_time_id is not None:
            del one_time[one_time_id]
        seen = ((signed_prekey_id, base_key), *self.seen_base_keys)[:MAX_SEEN_BASE_KEYS]
        return PrekeyState(
            self.signed, self.previous, self.retired_at, one_time, self.next_id, seen
        )

    def to_bytes(self) -> bytes:
        """Canonical, versioned bytes for the store (they contain secrets)."""
        return wire.encode_message(
            _StateRecord(
                _STATE_VERSION,
                self.signed,
                self.previous,
                self.retired_at,
                [_OneTimeSecret(key_id, secret) for key_id, secret in self.one_time.items()],
                self.next_id,
                [_SeenBaseKey(key_id, key) for key_id, key in self.seen_base_keys],
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PrekeyState:
        record = wire.decode_message(_StateRecord, data, max_size=_MAX_STATE_BYTES)
        one_time = {key.id: key.secret for key in record.one_time}
        if len(one_time) != len(record.one_time):
            raise RemoteProtocolError("duplicate one-time prekey id", code="prekeys.bad_state")
        seen = tuple((s.signed_prekey_id, s.base_key) for s in record.seen_base_keys)
        return cls(
            record.signed, record.previous, record.retired_at, one_time, record.next_id, seen
        )


@dataclass(frozen=True, slots=True, repr=False)
class _StateRecord(wire.Message):
    version: Annotated[int, wire.Int(min=_STATE_VERSION, max=_STATE_VERSION)]
    signed: Annotated[_SecretPrekey, wire.Nested(_SecretPrekey)]
    previous: Annotated[_SecretPrekey | None, wire.Maybe(wire.Nested(_SecretPrekey))]
    retired_at: _Time
    one_time: Annotated[
        list[_OneTimeSecret], wire.ListOf(wire.Nested(_OneTimeSecret), max_items=ONE_TIME_POOL)
    ]
    next_id: _Id
    seen_base_keys: Annotated[
        list[_SeenBaseKey], wire.ListOf(wire.Nested(_SeenBaseKey), max_items=MAX_SEEN_BASE_KEYS)
    ]


_MAX_STATE_BYTES = 1024 + ONE_TIME_POOL * 48 + MAX_SEEN_BASE_KEYS * 48


# --------------------------------------------------------------------------- operations


def _new_signed(identity: Identity, key_id: int, now: float, rng: Rng) -> _SecretPrekey:
    key = X25519PrivateKey.generate(rng)
    message = _signed_prekey_message(identity.peer_id.key, key_id, key.public_key)
    signature = identity.sign(SIGNED_PREKEY_DOMAIN, message)
    return _SecretPrekey(key_id, key.secret_bytes(), int(now), signature)


def _refill(one_time: Mapping[int, bytes], next_id: int, rng: Rng) -> tuple[dict[int, bytes], int]:
    pool = dict(one_time)
    while len(pool) < ONE_TIME_POOL:
        pool[next_id] = rng(KEY_SIZE)
        next_id += 1
    if next_id > _MAX_ID:
        raise LocalProtocolError("prekey ids exhausted", code="prekeys.ids_exhausted")
    return pool, next_id


def generate(identity: Identity, *, now: float, rng: Rng) -> PrekeyState:
    """A fresh state: one signed prekey and a full one-time pool."""
    signed = _new_signed(identity, 1, now, rng)
    one_time, next_id = _refill({}, 2, rng)
    return PrekeyState(signed, None, 0, one_time, next_id)


def maintain(state: PrekeyState, identity: Identity, *, now: float, rng: Rng) -> PrekeyState:
    """Rotate the SPK when due, retire the previous one after its grace, refill the pool.

    Returns ``state`` itself when nothing is due, so callers store and republish only on change.
    """
    signed, previous, retired_at, next_id = (
        state.signed,
        state.previous,
        state.retired_at,
        state.next_id,
    )
    if now - signed.created >= SIGNED_PREKEY_ROTATE:
        previous, retired_at = signed, int(now)
        signed = _new_signed(identity, next_id, now, rng)
        next_id += 1
    elif previous is not None and now - retired_at >= SIGNED_PREKEY_GRACE:
        previous = None
    one_time: Mapping[int, bytes] = state.one_time
    if len(one_time) < ONE_TIME_LOW_WATER:
        one_time, next_id = _refill(one_time, next_id, rng)
    if (signed, previous, one_time) == (state.signed, state.previous, state.one_time):
        return state
    live = {signed.id} | ({previous.id} if previous is not None else set())
    seen = tuple(entry for entry in state.seen_base_keys if entry[0] in live)
    return PrekeyState(signed, previous, retired_at, one_time, next_id, seen)


def make_bundle(
    state: PrekeyState, identity: Identity, *, now: float, max_one_time: int = ONE_TIME_POOL
) -> PrekeyBundle:
    """The signed public bundle; valid until the current SPK leaves its grace period."""
    one_time = [
        OneTimePrekey(key_id, X25519PrivateKey(secret).public_key)
        for key_id, secret in list(state.one_time.items())[:max_one_time]
    ]
    expires = state.signed.created + SIGNED_PREKEY_ROTATE + SIGNED_PREKEY_GRACE
    body = _BundleBody(identity.peer_id.key, int(now), expires, state.signed.public(), one_time)
    return PrekeyBundle(body, identity.sign(BUNDLE_DOMAIN, wire.encode_message(body)))
