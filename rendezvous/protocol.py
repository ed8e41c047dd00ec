"""Rendezvous wire messages (frame types 0x30..0x4F) and the signed "stored" receipt.

Every request goes over an authenticated connection (the transport proves both PeerIds), so a
request never names its sender: the server uses the connection's PeerId. Mailbox requests do
name the mailbox so a request for someone else's mailbox is refused explicitly
(``mailbox.not_owner``) instead of being silently redirected.

Request -> reply pairs (any request may instead get :class:`Refusal`):

=================  ==================  =============================================
request            reply               meaning
=================  ==================  =============================================
``Hello``          ``Welcome``         first request; presents an invite token once
``Register``       ``Registered``      publish/refresh our signed PeerRecord
``Lookup``         ``LookupResult``    a peer's record + the address the server saw
``Deposit``        ``Deposited``       store sealed envelopes (idempotent): one signed
                                       receipt for the stored ones, a refusal for each other
``ListMailbox``    ``Listing``         ids, sizes, expiries of our envelopes
``Fetch``          ``Envelopes``       envelope bytes (oldest first, or by id)
``Ack``            ``Acked``           delete envelopes we stored durably
``Publish``        ``Published``       list/refresh/withdraw a directory entry
``Search``         ``SearchResult``    directory search by name
=================  ==================  =============================================

``Wake`` is one-way, server -> owner, sent when a deposit arrives for a connected owner.

Envelope ids are never read from the wire for storage: the server computes them from the
envelope bytes with :func:`node.envelope.envelope_id`. Receipts are signed by the server under
:data:`RECEIPT_DOMAIN` over the canonical bytes of :class:`ReceiptBody`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from typing import Annotated

from node import envelope, wire
from node.crypto import KEY_SIZE, SIGNATURE_SIZE, verify
from node.errors import InvalidSignatureError, UsageError
from node.identity import Identity, PeerId

__all__ = [
    "INVITE_PREFIX",
    "MAX_BATCH",
    "MAX_DEPOSIT_BATCH",
    "MAX_ENVELOPE",
    "MAX_FETCH_BYTES",
    "RECEIPT_DOMAIN",
    "Ack",
    "Acked",
    "DirectoryItem",
    "Deposit",
    "Deposited",
    "EnvelopeItem",
    "Envelopes",
    "Fetch",
    "Hello",
    "IndexedRefusal",
    "ListItem",
    "ListMailbox",
    "Listing",
    "Lookup",
    "LookupResult",
    "ObservedAddress",
    "Publish",
    "Published",
    "Receipt",
    "RendezvousAddress",
    "ReceiptBody",
    "Refusal",
    "Register",
    "Registered",
    "Search",
    "SearchResult",
    "StoredItem",
    "Wake",
    "Welcome",
    "invite_token_text",
    "parse_invite_token",
    "sign_receipt",
    "verify_receipt",
]

RECEIPT_DOMAIN = "peerline/mailbox-receipt/v1"
MAX_ENVELOPE = envelope.MAX_ENVELOPE
MAX_BATCH = 256
MAX_DEPOSIT_BATCH = 64
"""Envelopes per Deposit request (the frame size bounds their total bytes too). A request
costs far more than an envelope in the transport, so a node flushes its outbox in batches."""
MAX_FETCH_BYTES = 768 << 10
"""A Fetch reply carries at most this many envelope bytes (one envelope always fits)."""
_ID = wire.Bytes(size=32)
_TIME = wire.Int(max=2**40)
_TTL = wire.Maybe(wire.Int(min=1, max=2**32))


# --------------------------------------------------------------------------- session


@wire.frame(0x30)
@dataclass(frozen=True, slots=True)
class Hello(wire.Message):
    invite: Annotated[bytes | None, wire.Maybe(wire.Bytes(min=8, max=64))]


@wire.frame(0x31)
@dataclass(frozen=True, slots=True)
class Welcome(wire.Message):
    mode: Annotated[str, wire.Str(max=16)]
    server_time: Annotated[float, wire.Float(max=2.0**40)]


@wire.frame(0x32)
@dataclass(frozen=True, slots=True)
class Refusal(wire.Message):
    """Any request may be answered with this; ``code`` is stable, ``message`` is for humans."""

    code: Annotated[str, wire.Str(min=1, max=64)]
    message: Annotated[str, wire.Str(max=256)]
    retry_after: Annotated[float | None, wire.Maybe(wire.Float(max=2.0**32))]


# --------------------------------------------------------------------------- presence


@dataclass(frozen=True, slots=True)
class ObservedAddress(wire.Message):
    host: Annotated[str, wire.Str(min=2, max=45)]
    port: Annotated[int, wire.Int(min=1, max=65535)]


@wire.frame(0x33)
@dataclass(frozen=True, slots=True)
class Register(wire.Message):
    record: Annotated[bytes, wire.Bytes(min=1, max=4096)]
    ttl: Annotated[int | None, _TTL]


@wire.frame(0x34)
@dataclass(frozen=True, slots=True)
class Registered(wire.Message):
    expires_at: Annotated[float, wire.Float(max=2.0**40)]


@wire.frame(0x35)
@dataclass(frozen=True, slots=True)
class Lookup(wire.Message):
    peer: Annotated[bytes, wire.Bytes(size=KEY_SIZE)]


@wire.frame(0x36)
@dataclass(frozen=True, slots=True)
class LookupResult(wire.Message):
    record: Annotated[bytes | None, wire.Maybe(wire.Bytes(min=1, max=4096))]
    observed: Annotated[ObservedAddress | None, wire.Maybe(wire.Nested(ObservedAddress))]


# --------------------------------------------------------------------------- mailbox


@wire.frame(0x37)
@dataclass(frozen=True, slots=True)
class Deposit(wire.Message):
    """Sealed envelopes (:mod:`node.envelope`), for any recipients: the server reads each
    one's mailbox id and expiry from its header and computes its id from its bytes."""

    envelopes: Annotated[
        list[bytes], wire.ListOf(wire.Bytes(min=1, max=MAX_ENVELOPE), max_items=MAX_DEPOSIT_BATCH)
    ]


@dataclass(frozen=True, slots=True)
class StoredItem(wire.Message):
    """One stored envelope: its mailbox, its id (a hash of its bytes) and its expiry."""

    mailbox: Annotated[bytes, _ID]
    envelope_id: Annotated[bytes, _ID]
    expires_at: Annotated[int, _TIME]


@dataclass(frozen=True, slots=True)
class ReceiptBody(wire.Message):
    server: Annotated[bytes, wire.Bytes(size=KEY_SIZE)]
    items: Annotated[
        list[StoredItem], wire.ListOf(wire.Nested(StoredItem), max_items=MAX_DEPOSIT_BATCH)
    ]


@wire.frame(0x38)
@dataclass(frozen=True, slots=True)
class Receipt(wire.Message):
    """The server's signed statement "these envelopes are stored until their expiry".

    One signature covers a whole Deposit request: signing and verifying per envelope would
    cost more than storing it.
    """

    body: Annotated[ReceiptBody, wire.Nested(ReceiptBody)]
    signature: Annotated[bytes, wire.Bytes(size=SIGNATURE_SIZE)]


@dataclass(frozen=True, slots=True)
class IndexedRefusal(wire.Message):
    """Why the envelope at ``index`` of a Deposit request was not stored."""

    index: Annotated[int, wire.Int(max=MAX_DEPOSIT_BATCH - 1)]
    refusal: Annotated[Refusal, wire.Nested(Refusal)]


@wire.frame(0x44)
@dataclass(frozen=True, slots=True)
class Deposited(wire.Message):
    """Every envelope of the request is either in ``receipt`` or in ``refused``."""

    receipt: Annotated[Receipt | None, wire.Maybe(wire.Nested(Receipt))]
    refused: Annotated[
        list[IndexedRefusal], wire.ListOf(wire.Nested(IndexedRefusal), max_items=MAX_DEPOSIT_BATCH)
    ]


@wire.frame(0x39)
@dataclass(frozen=True, slots=True)
class ListMailbox(wire.Message):
    mailbox: Annotated[bytes, _ID]
    limit: Annotated[int, wire.Int(min=1, max=MAX_BATCH)]


@dataclass(frozen=True, slots=True)
class ListItem(wire.Message):
    envelope_id: Annotated[bytes, _ID]
    size: Annotated[int, wire.Int(max=MAX_ENVELOPE)]
    expires_at: Annotated[int, _TIME]


@wire.frame(0x3A)
@dataclass(frozen=True, slots=True)
class Listing(wire.Message):
    items: Annotated[list[ListItem], wire.ListOf(wire.Nested(ListItem), max_items=MAX_BATCH)]
    total: Annotated[int, wire.Int()]


@wire.frame(0x3B)
@dataclass(frozen=True, slots=True)
class Fetch(wire.Message):
    """First delete ``ack`` (envelopes of our mailbox we stored), then fetch ``ids``, or when
    ``ids`` is empty the ``limit`` oldest: a drain costs one request per batch."""

    mailbox: Annotated[bytes, _ID]
    ids: Annotated[list[bytes], wire.ListOf(_ID, max_items=MAX_BATCH)]
    limit: Annotated[int, wire.Int(min=1, max=MAX_BATCH)]
    ack: Annotated[list[bytes], wire.ListOf(_ID, max_items=MAX_BATCH)]


@dataclass(frozen=True, slots=True)
class EnvelopeItem(wire.Message):
    envelope_id: Annotated[bytes, _ID]
    expires_at: Annotated[int, _TIME]
    envelope: Annotated[bytes, wire.Bytes(min=1, max=MAX_ENVELOPE)]


@wire.frame(0x3C)
@dataclass(frozen=True, slots=True)
class Envelopes(wire.Message):
    items: Annotated[
        list[EnvelopeItem], wire.ListOf(wire.Nested(EnvelopeItem), max_items=MAX_BATCH)
    ]
    remaining: Annotated[int, wire.Int()]
    deleted: Annotated[int, wire.Int(max=MAX_BATCH)]


@wire.frame(0x3D)
@dataclass(frozen=True, slots=True)
class Ack(wire.Message):
    mailbox: Annotated[bytes, _ID]
    ids: Annotated[list[bytes], wire.ListOf(_ID, max_items=MAX_BATCH)]


@wire.frame(0x3E)
@dataclass(frozen=True, slots=True)
class Acked(wire.Message):
    deleted: Annotated[int, wire.Int(max=MAX_BATCH)]
    remaining: Annotated[int, wire.Int()]


@wire.frame(0x3F)
@dataclass(frozen=True, slots=True)
class Wake(wire.Message):
    """Server -> connected owner: ``pending`` envelopes wait in its mailbox."""

    pending: Annotated[int, wire.Int()]


# --------------------------------------------------------------------------- directory


@wire.frame(0x40)
@dataclass(frozen=True, slots=True)
class Publish(wire.Message):
    kind: Annotated[str, wire.Str(min=1, max=16)]
    entry_id: Annotated[bytes, _ID]
    name: Annotated[str, wire.Str(max=64)]
    description: Annotated[str, wire.Str(max=200)]
    listed: Annotated[bool, wire.Bool()]
    ttl: Annotated[int | None, _TTL]


@wire.frame(0x41)
@dataclass(frozen=True, slots=True)
class Published(wire.Message):
    expires_at: Annotated[float | None, wire.Maybe(wire.Float(max=2.0**40))]


@wire.frame(0x42)
@dataclass(frozen=True, slots=True)
class Search(wire.Message):
    query: Annotated[str, wire.Str(max=64)]
    limit: Annotated[int, wire.Int(min=1, max=100)]


@dataclass(frozen=True, slots=True)
class DirectoryItem(wire.Message):
    kind: Annotated[str, wire.Str(min=1, max=16)]
    entry_id: Annotated[bytes, _ID]
    name: Annotated[str, wire.Str(max=64)]
    description: Annotated[str, wire.Str(max=200)]


@wire.frame(0x43)
@dataclass(frozen=True, slots=True)
class SearchResult(wire.Message):
    entries: Annotated[list[DirectoryItem], wire.ListOf(wire.Nested(DirectoryItem), max_items=100)]


# --------------------------------------------------------------------------- receipts


def sign_receipt(server: Identity, body: ReceiptBody) -> Receipt:
    return Receipt(body, server.sign(RECEIPT_DOMAIN, wire.encode_message(body)))


def verify_receipt(receipt: Receipt, server: PeerId) -> ReceiptBody:
    """Check a receipt is signed by ``server`` about itself; raises :class:`CryptoError`."""
    if receipt.body.server != server.key:
        raise InvalidSignatureError("receipt names another server")
    verify(server.key, RECEIPT_DOMAIN, wire.encode_message(receipt.body), receipt.signature)
    return receipt.body


# --------------------------------------------------------------------------- text forms

INVITE_PREFIX = "rvi-"


def invite_token_text(token: bytes) -> str:
    """The copy-paste form of an invite token (``rvi-`` + lower-case base32)."""
    return INVITE_PREFIX + base64.b32encode(token).decode("ascii").rstrip("=").lower()


def parse_invite_token(text: str) -> bytes:
    cleaned = text.strip().lower()
    body = cleaned.removeprefix(INVITE_PREFIX).upper()
    try:
        token = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raise UsageError("not an invite token", code="rendezvous.bad_invite") from None
    if not cleaned.startswith(INVITE_PREFIX) or not 8 <= len(token) <= 64:
        raise UsageError("not an invite token", code="rendezvous.bad_invite")
    return token


@dataclass(frozen=True, slots=True)
class RendezvousAddress:
    """How nodes reach and pin a server: ``PEERID@HOST:PORT`` (IPv6 hosts in brackets)."""

    peer_id: PeerId
    host: str
    port: int

    def text(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.peer_id.text()}@{host}:{self.port}"

    __str__ = text

    @classmethod
    def parse(cls, text: str) -> RendezvousAddress:
        """Parse the text form; raises :class:`UsageError` (``rendezvous.bad_address``)."""
        peer_text, at, hostport = text.strip().partition("@")
        host, colon, port_text = hostport.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            ipaddress.ip_address(host)
            port = int(port_text)
            if not (at and colon and 0 < port < 65536):
                raise ValueError(text)
        except ValueError:
            raise UsageError(
                f"not a rendezvous address (PEERID@HOST:PORT): {text[:120]!r}",
                code="rendezvous.bad_address",
            ) from None
        return cls(PeerId.parse(peer_text), host, port)
