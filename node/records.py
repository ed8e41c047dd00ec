"""Signed peer records (pure): what a node tells the world about where to reach it.

A :class:`PeerRecord` is one signed statement by a PeerId: its QUIC addresses, which rendezvous
servers hold its mailbox, the hash of its prekey bundle, a ``seq`` that only goes up and an
absolute expiry (unix seconds). The same bytes travel in mDNS TXT entries, as DHT values and in
rendezvous registrations, and every place a record arrives calls the same two functions:

- :func:`validate` (bytes in, record out): size cap, canonical encoding, signature under the
  domain ``peerline/peer-record/v1``, expiry window, address sanity, optionally the PeerId the
  caller expected. Anything else is :class:`InvalidRecordError` with a specific ``code``.
- :func:`select`: of two valid records for one peer, the highest ``seq`` wins; an equal ``seq``
  with different bytes (the owner equivocated) is broken by comparing the bytes, so every node
  converges on the same record whatever order the answers came in. Never "first" or "most
  common".

A record is a *hint*: the transport handshake pins the PeerId, so a valid record with wrong
addresses only leads to a refused connection.

:class:`RecordPublisher` is the sans-I/O policy for our own record: re-sign before it expires
and whenever what it says changes, with a ``seq`` that stays above every earlier one (it is
``max(previous + 1, now in milliseconds)`` so it also survives restarts without state).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from node import wire
from node.crypto import KEY_SIZE, SIGNATURE_SIZE, blake2b, verify
from node.errors import (
    CryptoError,
    InvalidRecordError,
    LocalProtocolError,
    RemoteProtocolError,
)
from node.identity import Identity, PeerId

__all__ = [
    "CLOCK_SKEW",
    "DISCOVERY_KEY_SIZE",
    "MAX_ADDRESSES",
    "MAX_MAILBOXES",
    "MAX_RECORD_SIZE",
    "MAX_TTL",
    "RECORD_DOMAIN",
    "Address",
    "PeerRecord",
    "RecordBody",
    "RecordPublisher",
    "discovery_key",
    "select",
    "sign_record",
    "validate",
]

RECORD_DOMAIN = "peerline/peer-record/v1"
MAX_RECORD_SIZE = 2048
"""Hard cap on the encoded signed record; a typical one is 150-300 bytes."""
MAX_ADDRESSES = 8
MAX_MAILBOXES = 4
MAX_TTL = 7 * 24 * 3600
"""A record may not claim to be valid for longer than this (plus clock skew)."""
CLOCK_SKEW = 300
DISCOVERY_KEY_SIZE = 20
_DISCOVERY_PERSON = b"peerline/dht-key"
_MAX_HOST = 45  # the longest textual IPv6 address
_MAX_MAILBOX = 128
_MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Address(wire.Message):
    """One UDP endpoint. ``host`` is an IP literal: a record never makes anyone resolve DNS."""

    host: Annotated[str, wire.Str(min=2, max=_MAX_HOST)]
    port: Annotated[int, wire.Int(min=1, max=65535)]

    def pair(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True, slots=True)
class RecordBody(wire.Message):
    """The signed part. Its canonical :func:`wire.encode_message` bytes are what is signed."""

    peer_id: Annotated[bytes, wire.Bytes(size=KEY_SIZE)]
    seq: Annotated[int, wire.Int(min=1, max=_MAX_SEQ)]
    expires: Annotated[int, wire.Int(max=2**40)]
    addresses: Annotated[list[Address], wire.ListOf(wire.Nested(Address), max_items=MAX_ADDRESSES)]
    mailboxes: Annotated[
        list[str], wire.ListOf(wire.Str(min=1, max=_MAX_MAILBOX), max_items=MAX_MAILBOXES)
    ]
    prekeys_hash: Annotated[bytes, wire.Bytes(size=32)]


@dataclass(frozen=True, slots=True)
class PeerRecord(wire.Message):
    """A record body and the owner's signature over the body's canonical bytes.

    Only :func:`sign_record` and :func:`validate` should construct one; everything else treats
    it as an immutable value. Equality is by content.
    """

    body: Annotated[RecordBody, wire.Nested(RecordBody)]
    signature: Annotated[bytes, wire.Bytes(size=SIGNATURE_SIZE)]

    @property
    def peer_id(self) -> PeerId:
        return PeerId(self.body.peer_id)

    @property
    def seq(self) -> int:
        return self.body.seq

    @property
    def expires(self) -> int:
        return self.body.expires

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [address.pair() for address in self.body.addresses]

    @property
    def mailboxes(self) -> list[str]:
        return list(self.body.mailboxes)

    def encode(self) -> bytes:
        """The canonical bytes that travel (and that :func:`validate` accepts)."""
        return wire.encode_message(self)

    def __repr__(self) -> str:
        return (
            f"PeerRecord({self.peer_id.short()}, seq={self.seq}, expires={self.expires}, "
            f"addresses={self.addresses})"
        )


def discovery_key(peer_id: PeerId) -> bytes:
    """The 20-byte DHT key of a peer: a domain-separated hash, never the raw public key."""
    return blake2b(peer_id.key, size=DISCOVERY_KEY_SIZE, person=_DISCOVERY_PERSON)


def _check_host(host: str) -> None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidRecordError(
            f"record address {host[:48]!r} is not an IP literal", code="record.malformed"
        ) from None
    if ip.is_unspecified or ip.is_multicast or str(ip) != host:
        raise InvalidRecordError(
            f"record address {host!r} is not a unicast IP in canonical form",
            code="record.malformed",
        )


def _check_body(body: RecordBody) -> None:
    """Semantic checks beyond the wire spec; the same for our own and remote records."""
    for address in body.addresses:
        _check_host(address.host)
    if len(set(body.addresses)) != len(body.addresses):
        raise InvalidRecordError("record lists an address twice", code="record.malformed")
    if any(not mailbox.isprintable() for mailbox in body.mailboxes):
        raise InvalidRecordError("mailbox hint is not printable", code="record.malformed")


def sign_record(
    identity: Identity,
    *,
    seq: int,
    expires: int,
    addresses: Sequence[tuple[str, int]] = (),
    mailboxes: Sequence[str] = (),
    prekeys_hash: bytes = bytes(32),
) -> PeerRecord:
    """Sign a record for ``identity``. Raises :class:`LocalProtocolError` for bad input."""
    try:
        body = RecordBody(
            identity.peer_id.key,
            seq,
            expires,
            [Address(host, port) for host, port in addresses],
            list(mailboxes),
            prekeys_hash,
        )
        RecordBody.from_wire(body.to_wire())  # run the wire specs on our own input
        _check_body(body)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"invalid record fields: {exc.message}", code=exc.code) from None
    record = PeerRecord(body, identity.sign(RECORD_DOMAIN, wire.encode_message(body)))
    if len(record.encode()) > MAX_RECORD_SIZE:
        raise LocalProtocolError("record too large", code="record.too_large")
    return record


def validate(data: bytes, now: float, *, peer_id: PeerId | None = None) -> PeerRecord:
    """Decode and check a record that arrived from anywhere; return it or raise.

    Checks, in order of cost: size (``record.too_large``), canonical encoding and field specs
    (``record.malformed``), the expected PeerId if given (``record.wrong_peer``), expiry
    (``record.expired``: ``now >= expires`` or more than :data:`MAX_TTL` ahead) and the
    Ed25519 signature under :data:`RECORD_DOMAIN` (``record.bad_signature``).
    """
    if len(data) > MAX_RECORD_SIZE:
        raise InvalidRecordError(
            f"record of {len(data)} bytes is too large", code="record.too_large"
        )
    try:
        record = wire.decode_message(PeerRecord, data, max_size=MAX_RECORD_SIZE)
    except RemoteProtocolError as exc:
        raise InvalidRecordError(
            f"malformed record: {exc.message}", code="record.malformed"
        ) from None
    _check_body(record.body)
    if peer_id is not None and record.body.peer_id != peer_id.key:
        raise InvalidRecordError("record is for another peer", code="record.wrong_peer")
    if not math.isfinite(now) or now >= record.expires:
        raise InvalidRecordError("record has expired", code="record.expired")
    if record.expires > now + MAX_TTL + CLOCK_SKEW:
        raise InvalidRecordError("record expiry is too far ahead", code="record.expired")
    try:
        verify(
            record.body.peer_id, RECORD_DOMAIN, wire.encode_message(record.body), record.signature
        )
    except CryptoError:
        raise InvalidRecordError(
            "record signature is invalid", code="record.bad_signature"
        ) from None
    return record


def select(a: PeerRecord | None, b: PeerRecord | None) -> PeerRecord | None:
    """The newer of two *validated* records of one peer (``None`` means "no record").

    Highest ``seq`` wins; an equal ``seq`` is broken by the larger encoding, so the choice does
    not depend on arrival order. Mixing peers is caller misuse.
    """
    if a is None or b is None:
        return a if b is None else b
    if a.body.peer_id != b.body.peer_id:
        raise LocalProtocolError("cannot select between records of two peers", code="record.mixed")
    if a.seq != b.seq:
        return a if a.seq > b.seq else b
    return a if a.encode() >= b.encode() else b


class RecordPublisher:
    """When to re-sign our own record (sans-I/O: time comes in as ``now``).

    A new record is due when there is none yet, when :meth:`update` changed what it says, or
    when ``refresh_fraction`` of its lifetime has passed (so peers never see it expire).
    ``get_timer()`` is the absolute time of the next scheduled refresh; ``handle_timer(now)``
    returns the new record when one is due, else ``None``. Each new record has a ``seq``
    strictly above the previous one and at least ``now`` in milliseconds, so seqs keep going up
    across restarts as long as the clock does not jump back.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        ttl: float = 3600.0,
        refresh_fraction: float = 0.5,
        addresses: Sequence[tuple[str, int]] = (),
        mailboxes: Sequence[str] = (),
        prekeys_hash: bytes = bytes(32),
        last_seq: int = 0,
    ) -> None:
        if not 60 <= ttl <= MAX_TTL or not 0.1 <= refresh_fraction <= 0.9:
            raise LocalProtocolError("publisher ttl or refresh fraction out of range")
        self._identity = identity
        self._ttl = ttl
        self._refresh_after = ttl * refresh_fraction
        self._addresses = tuple(addresses)
        self._mailboxes = tuple(mailboxes)
        self._prekeys_hash = prekeys_hash
        self._seq = last_seq
        self._current: PeerRecord | None = None
        self._signed_at = -math.inf
        self._dirty = True

    @property
    def current(self) -> PeerRecord | None:
        return self._current

    def update(
        self,
        *,
        addresses: Sequence[tuple[str, int]] | None = None,
        mailboxes: Sequence[str] | None = None,
        prekeys_hash: bytes | None = None,
    ) -> None:
        """Change what the record says; a change (not a no-op) makes a new record due now."""
        new = (
            self._addresses if addresses is None else tuple(addresses),
            self._mailboxes if mailboxes is None else tuple(mailboxes),
            self._prekeys_hash if prekeys_hash is None else prekeys_hash,
        )
        if new != (self._addresses, self._mailboxes, self._prekeys_hash):
            self._addresses, self._mailboxes, self._prekeys_hash = new
            self._dirty = True

    def get_timer(self) -> float:
        """Absolute time at which :meth:`handle_timer` will produce a record (may be past)."""
        return -math.inf if self._dirty else self._signed_at + self._refresh_after

    def handle_timer(self, now: float) -> PeerRecord | None:
        if now < self.get_timer():
            return None
        self._seq = max(self._seq + 1, int(now * 1000))
        self._current = sign_record(
            self._identity,
            seq=self._seq,
            expires=math.ceil(now + self._ttl),
            addresses=self._addresses,
            mailboxes=self._mailboxes,
            prekeys_hash=self._prekeys_hash,
        )
        self._signed_at = now
        self._dirty = False
        return self._current
