"""Sealed envelopes for store-and-forward (pure).

What a mailbox (rendezvous server) sees is only :class:`EnvelopeHeader`: the recipient's
**mailbox id**, the envelope's **size bucket** and its **expiry**. The sender's identity and the
session message travel inside, encrypted to the recipient with a fresh ephemeral X25519 key
("sealed sender"):

``version (1) || mailbox id (32) || expires u64 (8) || ephemeral X25519 public (32) ||
XChaCha20-Poly1305(inner, AD = those 73 bytes)``, with
``inner = sender PeerId (32) || payload length u32 || payload || zero padding`` so that the
whole envelope is exactly one of :data:`BUCKETS` (powers of two, 256 B .. 64 KiB).
Key and nonce: HKDF-SHA256(X25519(eph, recipient), salt = eph public || recipient X25519
public, info = ``peerline/envelope/v1``). The recipient X25519 key is the Ed25519 PeerId's
X25519 form, so sealing needs nothing but the PeerId.

The inner sender is *claimed*, not proven, by the envelope: the session layer proves it (a
ratchet message only decrypts in the session with that peer, whose AD binds both identity
keys), so pass ``opened.sender`` as ``sender=`` to ``node.session.receive``.

The envelope id is a hash of the bytes computed locally (:func:`envelope_id`), never taken
from the wire. :func:`parse_envelope` refuses anything that is not exactly a well-formed
envelope, so a mailbox can check deposits without any key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from node.crypto import (
    AEAD_KEY_SIZE,
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    KEY_SIZE,
    Rng,
    X25519PrivateKey,
    aead_decrypt,
    aead_encrypt,
    blake2b,
    ed25519_public_to_x25519,
    hkdf_sha256,
)
from node.errors import LocalProtocolError, RemoteProtocolError
from node.identity import Identity, PeerId

__all__ = [
    "BUCKETS",
    "ENVELOPE_VERSION",
    "MAX_ENVELOPE",
    "MAX_PAYLOAD",
    "EnvelopeHeader",
    "OpenedEnvelope",
    "envelope_id",
    "mailbox_id",
    "open_envelope",
    "parse_envelope",
    "seal",
]

ENVELOPE_VERSION = 1
BUCKETS = tuple(256 << i for i in range(9))
MAX_ENVELOPE = BUCKETS[-1]
_OUTER = struct.Struct(">B32sQ32s")
_INNER = struct.Struct(">32sI")
MAX_PAYLOAD = MAX_ENVELOPE - _OUTER.size - AEAD_TAG_SIZE - _INNER.size
_MAX_EXPIRES = 2**40
_INFO = b"peerline/envelope/v1"
_MAILBOX_PERSON = b"peerline/mbox/v1"
_ID_PERSON = b"peerline/env-id"


def mailbox_id(peer: PeerId) -> bytes:
    """The stable 32-byte mailbox id of ``peer`` (what a rendezvous server indexes by)."""
    return blake2b(peer.key, size=32, person=_MAILBOX_PERSON)


def envelope_id(data: bytes) -> bytes:
    """The id of an envelope: a hash of its exact bytes (deposits are idempotent by it)."""
    return blake2b(data, size=32, person=_ID_PERSON)


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """What a mailbox may know: recipient mailbox id, size bucket, expiry, and the local id."""

    mailbox_id: bytes
    expires: int
    size: int
    envelope_id: bytes

    def expired(self, now: float) -> bool:
        return now >= self.expires


@dataclass(frozen=True, slots=True, repr=False)
class OpenedEnvelope:
    header: EnvelopeHeader
    sender: PeerId
    payload: bytes

    def __repr__(self) -> str:
        return f"OpenedEnvelope(sender={self.sender.short()}, {len(self.payload)} B)"


def _keys(shared: bytes, ephemeral_public: bytes, recipient_x25519: bytes) -> tuple[bytes, bytes]:
    out = hkdf_sha256(
        shared,
        salt=ephemeral_public + recipient_x25519,
        info=_INFO,
        length=AEAD_KEY_SIZE + AEAD_NONCE_SIZE,
    )
    return out[:AEAD_KEY_SIZE], out[AEAD_KEY_SIZE:]


def _bucket(size: int) -> int:
    return next(bucket for bucket in BUCKETS if bucket >= size)


def seal(recipient: PeerId, sender: PeerId, payload: bytes, *, expires: int, rng: Rng) -> bytes:
    """Seal ``payload`` (a session message) for ``recipient``'s mailbox, padded to a bucket."""
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError("payload too large for an envelope", code="envelope.too_large")
    if not 0 <= expires < _MAX_EXPIRES:
        raise LocalProtocolError("expiry out of range", code="envelope.bad_expiry")
    recipient_x25519 = ed25519_public_to_x25519(recipient.key)
    ephemeral = X25519PrivateKey.generate(rng)
    outer = _OUTER.pack(ENVELOPE_VERSION, mailbox_id(recipient), expires, ephemeral.public_key)
    size = _bucket(_OUTER.size + AEAD_TAG_SIZE + _INNER.size + len(payload))
    inner = _INNER.pack(sender.key, len(payload)) + payload
    inner += bytes(size - _OUTER.size - AEAD_TAG_SIZE - len(inner))
    key, nonce = _keys(ephemeral.exchange(recipient_x25519), ephemeral.public_key, recipient_x25519)
    return outer + aead_encrypt(key, nonce, inner, outer)


def parse_envelope(data: bytes) -> EnvelopeHeader:
    """Check an envelope's shape without any key (for mailboxes); RemoteProtocolError else."""
    if len(data) not in BUCKETS:
        raise RemoteProtocolError("envelope size is not a bucket", code="envelope.malformed")
    version, mailbox, expires, _ = _OUTER.unpack_from(data)
    if version != ENVELOPE_VERSION:
        raise RemoteProtocolError("unknown envelope version", code="envelope.version")
    if expires >= _MAX_EXPIRES:
        raise RemoteProtocolError("expiry out of range", code="envelope.malformed")
    return EnvelopeHeader(mailbox, expires, len(data), envelope_id(data))


def open_envelope(identity: Identity, data: bytes) -> OpenedEnvelope:
    """Decrypt an envelope addressed to ``identity``.

    Raises RemoteProtocolError (``envelope.*``) for a malformed or misaddressed envelope and
    DecryptionError for a forged or damaged one. Expiry is the caller's policy
    (``header.expired(now)``).
    """
    header = parse_envelope(data)
    if header.mailbox_id != mailbox_id(identity.peer_id):
        raise RemoteProtocolError("envelope for another mailbox", code="envelope.not_ours")
    outer = data[: _OUTER.size]
    ephemeral_public = outer[-KEY_SIZE:]
    own = identity.signing_key.to_x25519()
    key, nonce = _keys(own.exchange(ephemeral_public), ephemeral_public, own.public_key)
    inner = aead_decrypt(key, nonce, data[_OUTER.size :], outer)
    sender, length = _INNER.unpack_from(inner)
    payload_end = _INNER.size + length
    if payload_end > len(inner) or inner[payload_end:] != bytes(len(inner) - payload_end):
        raise RemoteProtocolError("bad envelope padding", code="envelope.malformed")
    return OpenedEnvelope(header, PeerId(sender), inner[_INNER.size : payload_end])
