"""1:1 end-to-end sessions (pure, sans-I/O): X3DH to start, then the Double Ratchet.

The small API the messaging layer uses:

- :func:`start` — build a session from a peer's *verified* prekey bundle (peer may be offline);
- :func:`encrypt` — ``(session, plaintext) -> (new session, wire bytes)``;
- :func:`receive` — route incoming wire bytes: a first message makes (or replaces) a session
  from our prekeys, anything else decrypts in the existing session;
- :func:`check_contact_key` — a changed identity key of a known contact is an event the user
  must confirm, never silent.

Every function returns new immutable values and never mutates, so a failure changes nothing.
The caller's duty (*persist before send*): store the new :class:`Session` (and
:class:`PrekeyState`) in one transaction *before* the wire bytes leave the node; after a
``kill -9`` the reloaded state never reuses a message number, and a message the user saw as
queued is in the outbox. A sender that retries after a ``session.*``/``crypto.*`` refusal must
re-encrypt with its current session (never re-send old bytes built on a replaced session).

Wire (fixed layouts, all public data): ``0x01 || ratchet message`` for an ordinary message,
``0x02 || InitHeader (72) || ratchet message`` for messages sent before the peer replied (so
any one of them, in any order, can open the session at the responder).

Simultaneous starts: when both sides start before hearing from the other, the session with the
smaller base key wins on both sides; the losing first message is still decrypted (and its
prekeys consumed) but does not replace the winning session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from node import ratchet, wire
from node.crypto import AEAD_TAG_SIZE, KEY_SIZE, Rng
from node.errors import CryptoError, LimitExceededError, LocalProtocolError, RemoteProtocolError
from node.identity import Identity, PeerId, safety_number
from node.prekeys import PrekeyBundle, PrekeyState
from node.ratchet import RatchetState
from node.x3dh import INIT_HEADER, InitHeader, initiate, respond

__all__ = [
    "KIND_NORMAL",
    "KIND_PREKEY",
    "MAX_PLAINTEXT",
    "MAX_WIRE_MESSAGE",
    "Received",
    "SafetyNumberChanged",
    "Session",
    "SessionMessage",
    "check_contact_key",
    "decrypt",
    "encrypt",
    "parse_message",
    "receive",
    "start",
]

KIND_NORMAL = 0x01
KIND_PREKEY = 0x02
MAX_PLAINTEXT = 60 * 1024
MAX_WIRE_MESSAGE = 1 + INIT_HEADER.size + ratchet.HEADER.size + MAX_PLAINTEXT + AEAD_TAG_SIZE
_STATE_VERSION = 1
_MAX_STATE_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class SessionMessage:
    """Parsed wire bytes: the X3DH header of a first message (or None) and the ratchet part."""

    init: InitHeader | None
    ratchet_message: bytes


def parse_message(data: bytes) -> SessionMessage:
    """Split wire bytes; RemoteProtocolError (``session.malformed``/``limit``) for garbage."""
    if len(data) > MAX_WIRE_MESSAGE:
        raise LimitExceededError("session message too large", code="session.too_large")
    if not data or data[0] not in (KIND_NORMAL, KIND_PREKEY):
        raise RemoteProtocolError("unknown session message kind", code="session.malformed")
    if data[0] == KIND_NORMAL:
        return SessionMessage(None, data[1:])
    end = 1 + INIT_HEADER.size
    return SessionMessage(InitHeader.from_bytes(data[1:end]), data[end:])


@dataclass(frozen=True, slots=True, repr=False)
class Session:
    """Our side of a session with ``peer``. Immutable; ``repr`` shows no key material.

    ``init`` is the X3DH header that made the session (the same on both sides: its base key
    identifies the session); ``pending`` is true on the initiator until the first reply
    decrypts, and while it is, every message carries ``init``.
    """

    peer: PeerId
    ratchet: RatchetState
    associated_data: bytes
    init: InitHeader
    pending: bool

    @property
    def base_key(self) -> bytes:
        return self.init.base_key

    @property
    def pending_init(self) -> InitHeader | None:
        """The header to put in front of our messages, or None once the peer replied."""
        return self.init if self.pending else None

    def __repr__(self) -> str:
        return f"Session(peer={self.peer.short()}, pending={self.pending}, {self.ratchet!r})"

    def to_bytes(self) -> bytes:
        """Canonical, versioned bytes for the store (they contain secrets)."""
        record = _SessionRecord(
            _STATE_VERSION,
            self.peer.key,
            self.ratchet.to_bytes(),
            self.associated_data,
            self.init.to_bytes(),
            self.pending,
        )
        return wire.encode_message(record)

    @classmethod
    def from_bytes(cls, data: bytes) -> Session:
        record = wire.decode_message(_SessionRecord, data, max_size=_MAX_STATE_BYTES)
        return cls(
            PeerId(record.peer),
            RatchetState.from_bytes(record.ratchet),
            record.associated_data,
            InitHeader.from_bytes(record.init),
            record.pending,
        )


@dataclass(frozen=True, slots=True, repr=False)
class _SessionRecord(wire.Message):
    version: Annotated[int, wire.Int(min=_STATE_VERSION, max=_STATE_VERSION)]
    peer: Annotated[bytes, wire.Bytes(size=KEY_SIZE)]
    ratchet: Annotated[bytes, wire.Bytes(max=_MAX_STATE_BYTES)]
    associated_data: Annotated[bytes, wire.Bytes(max=256)]
    init: Annotated[bytes, wire.Bytes(size=INIT_HEADER.size)]
    pending: Annotated[bool, wire.Bool()]


def start(
    identity: Identity, bundle: PrekeyBundle, *, rng: Rng, one_time_id: int | None = None
) -> Session:
    """A new session with the owner of ``bundle`` (already checked with ``verify_bundle``)."""
    agreement = initiate(identity, bundle, rng, one_time_id=one_time_id)
    state = ratchet.initiator(agreement.shared_secret, agreement.ratchet_key, rng)
    header = agreement.header
    return Session(bundle.peer_id, state, agreement.associated_data, header, pending=True)


def encrypt(session: Session, plaintext: bytes) -> tuple[Session, bytes]:
    """Encrypt for the peer: returns (new session, wire bytes). Store, then send."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise LocalProtocolError("plaintext too large for one message", code="session.too_large")
    state, message = ratchet.encrypt(session.ratchet, plaintext, session.associated_data)
    if session.pending_init is None:
        wire_bytes = bytes([KIND_NORMAL]) + message
    else:
        wire_bytes = bytes([KIND_PREKEY]) + session.pending_init.to_bytes() + message
    new = Session(session.peer, state, session.associated_data, session.init, session.pending)
    return new, wire_bytes


def decrypt(
    session: Session, message: SessionMessage, *, now: float, rng: Rng
) -> tuple[Session, bytes]:
    """Decrypt a message of *this* session (see :func:`receive` for routing)."""
    if message.init is not None and message.init != session.init:
        raise RemoteProtocolError("first message of another session", code="session.mismatch")
    state, plaintext = ratchet.decrypt(
        session.ratchet, message.ratchet_message, session.associated_data, now, rng
    )
    new = Session(session.peer, state, session.associated_data, session.init, pending=False)
    return new, plaintext


@dataclass(frozen=True, slots=True, repr=False)
class Received:
    """Outcome of :func:`receive`: store ``session`` and ``prekeys`` (one transaction), then
    hand ``plaintext`` to the application. ``new_session`` says a first message (re)started
    the session: the caller applies its contact policy and :func:`check_contact_key`."""

    session: Session
    prekeys: PrekeyState
    plaintext: bytes
    new_session: bool

    def __repr__(self) -> str:
        return (
            f"Received({self.session!r}, new_session={self.new_session}, {len(self.plaintext)} B)"
        )


def _accept(
    identity: Identity, prekeys: PrekeyState, message: SessionMessage, *, now: float, rng: Rng
) -> Received:
    init = message.init
    assert init is not None  # checked by the caller
    agreement, used = respond(identity, prekeys, init)
    state = ratchet.responder(agreement.shared_secret, agreement.ratchet_key)
    fresh = Session(init.identity, state, agreement.associated_data, init, pending=False)
    session, plaintext = decrypt(fresh, message, now=now, rng=rng)
    return Received(session, used, plaintext, new_session=True)


def receive(
    identity: Identity,
    prekeys: PrekeyState,
    session: Session | None,
    data: bytes,
    *,
    sender: PeerId,
    now: float,
    rng: Rng,
) -> Received:
    """Handle wire bytes from ``sender`` (as authenticated by the transport or the envelope).

    Raises a :class:`node.errors.PeerlineError` subclass for anything that does not decrypt:
    ``crypto.replay`` for a duplicate, ``session.unknown`` when there is no session and the
    message cannot start one, ``crypto.decrypt_failed`` for a forgery, ``x3dh.*`` for prekeys
    we no longer hold. Nothing passed in is changed.
    """
    if session is not None and session.peer != sender:
        raise RemoteProtocolError("session of another peer", code="session.mismatch")
    message = parse_message(data)
    init = message.init
    if init is not None and init.identity != sender:
        raise RemoteProtocolError("first message names another sender", code="session.mismatch")
    if init is None or (session is not None and init.base_key == session.base_key):
        if session is None:
            raise CryptoError("no session with this peer", code="session.unknown")
        new_session, plaintext = decrypt(session, message, now=now, rng=rng)
        return Received(new_session, prekeys, plaintext, new_session=False)
    accepted = _accept(identity, prekeys, message, now=now, rng=rng)
    if session is not None and session.pending and session.base_key < init.base_key:
        # Simultaneous start and ours wins: deliver the plaintext, keep our session.
        return Received(session, accepted.prekeys, accepted.plaintext, new_session=False)
    return accepted


@dataclass(frozen=True, slots=True)
class SafetyNumberChanged:
    """A known contact now presents another identity key: show both numbers, ask the user."""

    old_key: PeerId
    new_key: PeerId
    old_safety_number: str
    new_safety_number: str


def check_contact_key(
    own: PeerId, known: PeerId | None, presented: PeerId
) -> SafetyNumberChanged | None:
    """``None`` when the contact is new (``known is None``) or presents the key we know;
    otherwise the event the user must confirm before anything is sent or shown."""
    if known is None or known == presented:
        return None
    return SafetyNumberChanged(
        known, presented, safety_number(own, known), safety_number(own, presented)
    )
