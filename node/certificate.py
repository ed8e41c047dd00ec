"""TLS certificates for the transport (imported only by ``node/transport.py``).

A node's certificate is self-signed with its Ed25519 identity key (the same 32-byte seed as
its :class:`~node.identity.Identity`). Peers never check names, dates or chains: the dialer
pins the certificate's key to the PeerId it meant to reach, and TLS's CertificateVerify proves
the listener holds that key. ``cryptography`` comes with aioquic.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from node.identity import Identity

__all__ = ["certificate_key", "self_signed_certificate"]

_NOT_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC)


def self_signed_certificate(
    identity: Identity,
) -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    """The identity's certificate and the matching ``cryptography`` private key."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(identity.signing_key.seed())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.peer_id.text())])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(identity.peer_id.key[:16], "big") >> 1 or 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .sign(key, algorithm=None)
    )
    return certificate, key


def certificate_key(certificate: object) -> bytes | None:
    """The raw 32-byte Ed25519 key of ``certificate``; ``None`` if absent or another type."""
    if not isinstance(certificate, x509.Certificate):
        return None
    key = certificate.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
