"""Invite links (pure): a signed, self-contained ``peerline://invite/...`` link that carries a
peer's PeerId, display name, address hints, rendezvous servers and prekey bundle.

The link is user input on the receiving side, so :func:`parse_invite` turns every failure into
a one-line :class:`~node.errors.UsageError`; it never trusts a hint the signature does not cover.
"""

from __future__ import annotations

import base64
import binascii
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from node import wire
from node.crypto import verify
from node.errors import CryptoError, RemoteProtocolError, UsageError
from node.identity import Identity, PeerId
from node.messaging import parse_hostport

__all__ = [
    "INVITE_DOMAIN",
    "INVITE_PREFIX",
    "Invite",
    "format_invite",
    "make_invite",
    "parse_invite",
]

INVITE_DOMAIN = "peerline/invite/v1"
INVITE_PREFIX = "peerline://invite/"
_MAX_HINTS = 8
_MAX_HINT = 128
_MAX_NAME = 64
_MAX_INVITE_PREKEYS = 512
_MAX_INVITE_BYTES = 3072


@dataclass(frozen=True, slots=True)
class _InviteBody(wire.Message):
    peer: Annotated[bytes, wire.Bytes(size=32)]
    name: Annotated[str, wire.Str(max=_MAX_NAME)]
    addresses: Annotated[list[str], wire.ListOf(wire.Str(max=_MAX_HINT), max_items=_MAX_HINTS)]
    rendezvous: Annotated[list[str], wire.ListOf(wire.Str(max=_MAX_HINT), max_items=_MAX_HINTS)]
    prekeys: Annotated[bytes, wire.Bytes(max=_MAX_INVITE_PREKEYS)]


@dataclass(frozen=True, slots=True)
class Invite(wire.Message):
    """A signed invite: PeerId, display name, address hints, rendezvous servers and prekeys.

    ``prekeys`` is the peer's prekey bundle without one-time keys (or empty): with it the
    first message can be encrypted and left in the mailbox before the two ever met online.

    The signature (domain :data:`INVITE_DOMAIN`) is by the invited peer's own key, so a
    tampered link, hint or name fails to parse instead of pointing somewhere else.
    """

    body: Annotated[_InviteBody, wire.Nested(_InviteBody)]
    signature: Annotated[bytes, wire.Bytes(size=64)]

    @property
    def peer_id(self) -> PeerId:
        return PeerId(self.body.peer)

    @property
    def name(self) -> str:
        return self.body.name


def make_invite(
    identity: Identity,
    name: str,
    addresses: Iterable[str],
    rendezvous: Iterable[str] = (),
    prekeys: bytes = b"",
) -> Invite:
    body = _InviteBody(
        identity.peer_id.key,
        unicodedata.normalize("NFC", name)[:_MAX_NAME],
        list(addresses)[:_MAX_HINTS],
        list(rendezvous)[:_MAX_HINTS],
        prekeys,
    )
    body = _InviteBody.from_wire(body.to_wire())  # same limits as the parser, at creation
    return Invite(body, identity.sign(INVITE_DOMAIN, wire.encode_message(body)))


def format_invite(invite: Invite) -> str:
    """``peerline://invite/`` + lowercase unpadded base32 (QR-friendly, copy-paste safe)."""
    encoded = base64.b32encode(wire.encode_message(invite)).decode("ascii")
    return INVITE_PREFIX + encoded.rstrip("=").lower()


def parse_invite(text: str) -> Invite:
    """Parse and verify an invite link. Raises :class:`UsageError` (``invite.malformed`` or
    ``invite.bad_signature``); a link is user input, so every failure is a one-line error."""
    cleaned = text.strip()
    if not cleaned.lower().startswith(INVITE_PREFIX):
        raise UsageError("not an invite link", code="invite.malformed")
    payload = cleaned[len(INVITE_PREFIX) :].upper()
    if len(payload) > _MAX_INVITE_BYTES * 8 // 5 + 8:
        raise UsageError("invite link too long", code="invite.malformed")
    try:
        raw = base64.b32decode(payload + "=" * (-len(payload) % 8))
        invite = wire.decode_message(Invite, raw, max_size=_MAX_INVITE_BYTES)
        verify(invite.body.peer, INVITE_DOMAIN, wire.encode_message(invite.body), invite.signature)
    except (binascii.Error, ValueError, RemoteProtocolError):
        raise UsageError("malformed invite link", code="invite.malformed") from None
    except CryptoError:
        raise UsageError("invite signature is invalid", code="invite.bad_signature") from None
    if format_invite(invite) != INVITE_PREFIX + payload.lower():
        raise UsageError("malformed invite link (not canonical)", code="invite.malformed")
    for hint in invite.body.addresses:
        parse_hostport(hint)
    return invite
