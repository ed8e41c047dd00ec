"""Node identity (pure): Ed25519 keys, ``PeerId`` text form, fingerprints, key-file bytes.

- A :class:`PeerId` is a device's 32-byte Ed25519 public key. Its text form is
  ``"pl" + base32(key || checksum)`` in lower case (58 characters). The 3-byte checksum is a
  domain-separated BLAKE2b of the key, so a typo is an error (1 in 16 million slips through),
  not a different peer. Parsing is case-insensitive and ignores surrounding white space.
- A fingerprint is 30 decimal digits derived from the key; the *safety number* of two peers is
  their two fingerprints in sorted order (60 digits, 12 groups of 5): both sides see the same.
- The key file holds the 32-byte seed, either plain or sealed with Argon2id + XChaCha20-Poly1305.
  This module only encodes and decodes its bytes; ``node/home.py`` does the file I/O.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from node.crypto import (
    AEAD_NONCE_SIZE,
    ARGON2_SALT_SIZE,
    KEY_SIZE,
    Argon2Params,
    Rng,
    SigningKey,
    aead_decrypt,
    aead_encrypt,
    argon2id,
    blake2b,
    random_bytes,
)
from node.errors import DecryptionError, RemoteProtocolError, UsageError, WrongPassphraseError

__all__ = [
    "PEER_ID_PREFIX",
    "Identity",
    "PeerId",
    "decode_key_file",
    "encode_key_file",
    "fingerprint",
    "key_file_is_sealed",
    "safety_number",
]

PEER_ID_PREFIX = "pl"
_CHECKSUM_SIZE = 3
_TEXT_LENGTH = len(PEER_ID_PREFIX) + (KEY_SIZE + _CHECKSUM_SIZE) * 8 // 5
_CHECKSUM_PERSON = b"peerline/peerid"
_FINGERPRINT_PERSON = b"peerline/fpr/v1"
_FINGERPRINT_GROUPS = 6
_KEYFILE_MAGIC = b"PLKEY1"
_KEYFILE_PLAIN = 0
_KEYFILE_SEALED = 1
_KEYFILE_AD = b"peerline/keyfile/v1"
_SEALED_HEADER = struct.Struct(">QQ")
_MAX_OPSLIMIT = 64
_MAX_MEMLIMIT = 4 << 30


def _checksum(key: bytes) -> bytes:
    return blake2b(key, size=_CHECKSUM_SIZE, person=_CHECKSUM_PERSON)


@dataclass(frozen=True, slots=True)
class PeerId:
    """A device identity: the raw 32-byte Ed25519 public key. Compare and hash by bytes."""

    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != KEY_SIZE:
            raise RemoteProtocolError("a peer id is 32 bytes", code="identity.bad_peer_id")

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Parse the text form. Raises :class:`UsageError` (code ``identity.bad_peer_id``)."""
        cleaned = text.strip().lower()
        if len(cleaned) != _TEXT_LENGTH or not cleaned.startswith(PEER_ID_PREFIX):
            raise UsageError(f"not a peer id: {text[:80]!r}", code="identity.bad_peer_id")
        try:
            raw = base64.b32decode(cleaned[len(PEER_ID_PREFIX) :].upper())
        except (binascii.Error, ValueError):
            raise UsageError(f"not a peer id: {text[:80]!r}", code="identity.bad_peer_id") from None
        key, check = raw[:KEY_SIZE], raw[KEY_SIZE:]
        if _checksum(key) != check:
            raise UsageError(
                f"peer id checksum mismatch (typo?): {text[:80]!r}", code="identity.bad_checksum"
            )
        return cls(key)

    @classmethod
    def looks_like(cls, text: str) -> bool:
        """Cheap shape test used to tell a PeerId from an alias before parsing."""
        cleaned = text.strip().lower()
        return len(cleaned) == _TEXT_LENGTH and cleaned.startswith(PEER_ID_PREFIX)

    def text(self) -> str:
        encoded = base64.b32encode(self.key + _checksum(self.key)).decode("ascii").lower()
        return PEER_ID_PREFIX + encoded

    def short(self) -> str:
        """A short label for logs and lists (not unique; never use it to identify)."""
        return self.text()[:12]

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"PeerId({self.text()})"


def fingerprint(peer: PeerId) -> str:
    """Thirty digits in six groups of five, derived from the key."""
    digest = blake2b(peer.key, size=64, person=_FINGERPRINT_PERSON)
    groups = [
        f"{int.from_bytes(digest[i * 5 : i * 5 + 5], 'big') % 100000:05d}"
        for i in range(_FINGERPRINT_GROUPS)
    ]
    return " ".join(groups)


def safety_number(a: PeerId, b: PeerId) -> str:
    """The 60-digit number two peers compare out of band; symmetric in ``a`` and ``b``."""
    first, second = sorted((fingerprint(a), fingerprint(b)))
    return f"{first} {second}"


class Identity:
    """A device's signing identity. ``repr`` never shows the secret."""

    __slots__ = ("peer_id", "signing_key")

    def __init__(self, signing_key: SigningKey) -> None:
        self.signing_key = signing_key
        self.peer_id = PeerId(signing_key.public_key)

    @classmethod
    def generate(cls, rng: Rng = random_bytes) -> Identity:
        return cls(SigningKey.generate(rng))

    def sign(self, domain: str, message: bytes) -> bytes:
        return self.signing_key.sign(domain, message)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id.text()}, secret=<hidden>)"

    __str__ = __repr__


def encode_key_file(
    identity: Identity,
    passphrase: bytes | None,
    *,
    params: Argon2Params = Argon2Params.MODERATE,
    rng: Rng = random_bytes,
) -> bytes:
    """Bytes of a key file: magic, mode, then the seed (plain) or its Argon2id-sealed form."""
    seed = identity.signing_key.seed()
    if passphrase is None:
        return _KEYFILE_MAGIC + bytes([_KEYFILE_PLAIN]) + seed
    salt = rng(ARGON2_SALT_SIZE)
    nonce = rng(AEAD_NONCE_SIZE)
    header = _SEALED_HEADER.pack(params.opslimit, params.memlimit) + salt + nonce
    key = argon2id(passphrase, salt, params)
    sealed = aead_encrypt(key, nonce, seed, _KEYFILE_AD + header)
    return _KEYFILE_MAGIC + bytes([_KEYFILE_SEALED]) + header + sealed


def key_file_is_sealed(data: bytes) -> bool:
    """Whether a key file needs a passphrase."""
    return data[len(_KEYFILE_MAGIC) : len(_KEYFILE_MAGIC) + 1] == bytes([_KEYFILE_SEALED])


def decode_key_file(data: bytes, passphrase: bytes | None) -> Identity:
    """Inverse of :func:`encode_key_file`.

    Raises :class:`WrongPassphraseError` for a wrong or missing passphrase and
    :class:`RemoteProtocolError` (code ``identity.bad_key_file``) for a damaged file.
    """
    if not data.startswith(_KEYFILE_MAGIC) or len(data) < len(_KEYFILE_MAGIC) + 1:
        raise RemoteProtocolError("not a peerline key file", code="identity.bad_key_file")
    mode = data[len(_KEYFILE_MAGIC)]
    body = data[len(_KEYFILE_MAGIC) + 1 :]
    if mode == _KEYFILE_PLAIN and len(body) == KEY_SIZE:
        return Identity(SigningKey(body))
    header_size = _SEALED_HEADER.size + ARGON2_SALT_SIZE + AEAD_NONCE_SIZE
    if mode != _KEYFILE_SEALED or len(body) != header_size + KEY_SIZE + 16:
        raise RemoteProtocolError("damaged peerline key file", code="identity.bad_key_file")
    if passphrase is None:
        raise WrongPassphraseError("the key file is encrypted: a passphrase is needed")
    header, sealed = body[:header_size], body[header_size:]
    opslimit, memlimit = _SEALED_HEADER.unpack_from(header)
    if opslimit > _MAX_OPSLIMIT or memlimit > _MAX_MEMLIMIT:
        raise RemoteProtocolError(
            "key file asks for absurd Argon2 costs", code="identity.bad_key_file"
        )
    salt = header[_SEALED_HEADER.size : _SEALED_HEADER.size + ARGON2_SALT_SIZE]
    nonce = header[_SEALED_HEADER.size + ARGON2_SALT_SIZE :]
    key = argon2id(passphrase, salt, Argon2Params(opslimit, memlimit))
    try:
        seed = aead_decrypt(key, nonce, sealed, _KEYFILE_AD + header)
    except DecryptionError:
        raise WrongPassphraseError("wrong passphrase for the key file") from None
    return Identity(SigningKey(seed))
