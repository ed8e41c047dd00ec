"""X3DH key agreement (pure): start a session with a peer that is offline.

Identity DH keys: our identity is Ed25519 (the PeerId); X3DH uses its birationally equivalent
X25519 form (``SigningKey.to_x25519`` / ``ed25519_public_to_x25519``), as ``x3dh``'s
``IdentityKeyFormat.ED_25519`` and Signal's XEdDSA do. One key, one thing to verify: the
PeerId a user confirmed *is* the key the agreement binds, and no second certified key can be
swapped in. (Using one key for signatures and DH is sound for Ed25519/X25519; every signature
here also carries a domain string.)

Agreement (Signal's X3DH, the same KDF as the ``x3dh`` package):
``DH1 = DH(IK_A, SPK_B)``, ``DH2 = DH(EK_A, IK_B)``, ``DH3 = DH(EK_A, SPK_B)``,
``DH4 = DH(EK_A, OPK_B)`` (when a one-time prekey is used);
``SK = HKDF-SHA256(ikm = 0xFF*32 || DH1 || DH2 || DH3 [|| DH4], salt = 32 zero bytes,
info = X3DH_INFO, 32)``. The associated data for every ratchet message of the session is
``AD_DOMAIN || IK_A || IK_B`` (the two Ed25519 keys: both identities are bound).

:class:`InitHeader` is what the initiator puts in front of its messages until the first reply:
its identity, its ephemeral key and the prekey ids (fixed 72-byte layout).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from node.crypto import KEY_SIZE, Rng, X25519PrivateKey, ed25519_public_to_x25519, hkdf_sha256
from node.errors import CryptoError, RemoteProtocolError, ReplayError
from node.identity import Identity, PeerId
from node.prekeys import PrekeyBundle, PrekeyState

__all__ = [
    "AD_DOMAIN",
    "INIT_HEADER",
    "X3DH_INFO",
    "Agreement",
    "InitHeader",
    "initiate",
    "respond",
]

X3DH_INFO = b"peerline/x3dh/v1"
AD_DOMAIN = b"peerline/x3dh-ad/v1"
INIT_HEADER = struct.Struct(">32s32sII")
_NO_ONE_TIME = 0
_PADDING = b"\xff" * KEY_SIZE
_SALT = bytes(KEY_SIZE)
_FIELD_PRIME = 2**255 - 19


def _canonical_x25519(public: bytes) -> bytes:
    """Refuse non-canonical encodings (top bit set, or >= p): X25519 ignores the top bit, so
    without this check one base key would have several byte forms and a replayed first
    message with a flipped bit would pass the "base key already seen" check."""
    if int.from_bytes(public, "little") >= _FIELD_PRIME:
        raise RemoteProtocolError("non-canonical X25519 key", code="x3dh.malformed")
    return public


@dataclass(frozen=True, slots=True)
class InitHeader:
    """Initiator identity, ephemeral (base) key and the prekeys it used. Public data."""

    identity: PeerId
    base_key: bytes
    signed_prekey_id: int
    one_time_id: int | None

    def to_bytes(self) -> bytes:
        one_time = _NO_ONE_TIME if self.one_time_id is None else self.one_time_id
        return INIT_HEADER.pack(self.identity.key, self.base_key, self.signed_prekey_id, one_time)

    @classmethod
    def from_bytes(cls, data: bytes) -> InitHeader:
        if len(data) != INIT_HEADER.size:
            raise RemoteProtocolError("bad X3DH header size", code="x3dh.malformed")
        identity, base_key, spk_id, one_time = INIT_HEADER.unpack(data)
        one_time_id = None if one_time == _NO_ONE_TIME else one_time
        return cls(PeerId(identity), _canonical_x25519(base_key), spk_id, one_time_id)


@dataclass(frozen=True, slots=True, repr=False)
class Agreement:
    """The outcome of X3DH on one side. ``ratchet_key`` is the SPK public (initiator) or the
    SPK secret (responder): the Double Ratchet starts from it."""

    shared_secret: bytes
    associated_data: bytes
    header: InitHeader
    ratchet_key: bytes

    def __repr__(self) -> str:
        return f"Agreement(peer_header={self.header!r}, secrets=<hidden>)"


def _kdf(*dh_outputs: bytes) -> bytes:
    return hkdf_sha256(_PADDING + b"".join(dh_outputs), salt=_SALT, info=X3DH_INFO, length=KEY_SIZE)


def _associated_data(initiator: PeerId, responder: PeerId) -> bytes:
    return AD_DOMAIN + initiator.key + responder.key


def initiate(
    identity: Identity, bundle: PrekeyBundle, rng: Rng, *, one_time_id: int | None = None
) -> Agreement:
    """Agree on a secret with the owner of a *verified* bundle (see ``verify_bundle``).

    ``one_time_id`` picks the one-time prekey a rendezvous server assigned; by default the
    bundle's first one is used, or none when the bundle has none.
    """
    peer = bundle.peer_id
    if peer == identity.peer_id:
        raise CryptoError("a session with oneself is not allowed", code="x3dh.self")
    spk = bundle.signed_prekey
    one_time = _choose_one_time(bundle, one_time_id)
    ephemeral = X25519PrivateKey.generate(rng)
    outputs = [
        identity.signing_key.to_x25519().exchange(spk.public),
        ephemeral.exchange(ed25519_public_to_x25519(peer.key)),
        ephemeral.exchange(spk.public),
    ]
    if one_time is not None:
        outputs.append(ephemeral.exchange(one_time[1]))
    header = InitHeader(
        identity.peer_id, ephemeral.public_key, spk.id, None if one_time is None else one_time[0]
    )
    return Agreement(_kdf(*outputs), _associated_data(identity.peer_id, peer), header, spk.public)


def _choose_one_time(bundle: PrekeyBundle, one_time_id: int | None) -> tuple[int, bytes] | None:
    keys = {key.id: key.public for key in bundle.one_time}
    if one_time_id is None:
        return next(iter(keys.items()), None)
    if one_time_id not in keys:
        raise CryptoError("the bundle has no such one-time prekey", code="x3dh.unknown_prekey")
    return one_time_id, keys[one_time_id]


def respond(
    identity: Identity, prekeys: PrekeyState, header: InitHeader
) -> tuple[Agreement, PrekeyState]:
    """The responder's side. Returns the agreement and the prekey state *to keep only once the
    first ratchet message decrypted* (its one-time prekey erased, its base key remembered), so
    a forged first message burns nothing.

    Raises :class:`ReplayError` for a base key already accepted, :class:`CryptoError`
    (``x3dh.unknown_prekey`` / ``x3dh.prekey_used``) for prekeys we no longer hold.
    """
    if prekeys.has_seen(header.signed_prekey_id, header.base_key):
        raise ReplayError("this first message was already accepted", code="x3dh.replay")
    spk_secret = prekeys.signed_prekey_secret(header.signed_prekey_id)
    outputs = [
        X25519PrivateKey(spk_secret).exchange(ed25519_public_to_x25519(header.identity.key)),
        identity.signing_key.to_x25519().exchange(header.base_key),
        X25519PrivateKey(spk_secret).exchange(header.base_key),
    ]
    if header.one_time_id is not None:
        one_time = prekeys.one_time_secret(header.one_time_id)
        outputs.append(X25519PrivateKey(one_time).exchange(header.base_key))
    agreement = Agreement(
        _kdf(*outputs), _associated_data(header.identity, identity.peer_id), header, spk_secret
    )
    used = prekeys.after_use(header.signed_prekey_id, header.base_key, header.one_time_id)
    return agreement, used
