"""Peer authentication over a fresh QUIC connection (pure, sans-I/O).

QUIC/TLS already proves the *listener*: its certificate key is pinned by the dialer, which
knows the PeerId it meant to reach (:meth:`DialerAuth.certificate_received`). aioquic cannot
authenticate clients, so the *dialer* proves itself on the control stream:

1. listener -> dialer: :class:`AuthChallenge` (32 fresh random bytes, one per connection);
2. dialer -> listener: :class:`AuthProof` = the dialer's key and its signature, domain
   ``peerline/auth/v1``, over ``listener_key || challenge || dialer_key``;
3. listener -> dialer: :class:`AuthOk` once the proof verifies.

A proof therefore works for exactly one listener and one connection: replaying it elsewhere
fails (other challenge), and a proof a victim made for listener A is useless at listener B.
The dialer sends its proof only after the pin matched, so a wrong listener learns nothing.
The listener accepts nothing but a valid proof before authentication: any other frame, a bad
signature or the deadline passing ends in :class:`AuthFailed`, never in an exception.

Both machines take frames (already decoded by :class:`~node.wire.FrameDecoder` from the
reliable control stream) and time as arguments: ``receive_frame(frame, now)``,
``handle_timer(now)``, ``get_timer()``, ``next_event()``, ``frames_to_send()``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Annotated

from node import wire
from node.crypto import KEY_SIZE, SIGNATURE_SIZE, Rng, verify
from node.errors import AuthenticationError, CryptoError, OperationTimeoutError, PeerlineError
from node.identity import Identity, PeerId

__all__ = [
    "AUTH_DOMAIN",
    "CHALLENGE_SIZE",
    "AuthChallenge",
    "AuthEvent",
    "AuthFailed",
    "AuthOk",
    "AuthProof",
    "Authenticated",
    "DialerAuth",
    "ListenerAuth",
    "proof_message",
]

AUTH_DOMAIN = "peerline/auth/v1"
CHALLENGE_SIZE = 32


@wire.frame(0x01)
@dataclass(frozen=True, slots=True)
class AuthChallenge(wire.Message):
    """Listener -> dialer, first frame of every connection: the fresh challenge."""

    nonce: Annotated[bytes, wire.Bytes(size=CHALLENGE_SIZE)]


@wire.frame(0x02)
@dataclass(frozen=True, slots=True)
class AuthProof(wire.Message):
    """Dialer -> listener, first frame of the dialer: who it is and the signature proving it."""

    peer: Annotated[bytes, wire.Bytes(size=KEY_SIZE)]
    signature: Annotated[bytes, wire.Bytes(size=SIGNATURE_SIZE)]


@wire.frame(0x03)
@dataclass(frozen=True, slots=True)
class AuthOk(wire.Message):
    """Listener -> dialer: the proof verified; the connection is open for application frames."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The other side proved it is ``peer``."""

    peer: PeerId


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """Authentication ended without success; ``error.code`` says why (``auth.*``)."""

    error: PeerlineError


AuthEvent = Authenticated | AuthFailed


def proof_message(listener: PeerId, challenge: bytes, dialer: PeerId) -> bytes:
    """The exact bytes a dialer signs (fixed-size fields, so the layout is unambiguous)."""
    return listener.key + challenge + dialer.key


class _AuthMachine:
    """What both roles share: a deadline, an outbox of frames and one terminal event."""

    def __init__(self, *, now: float, timeout: float) -> None:
        self._deadline = now + timeout
        self._outbox: list[wire.Message] = []
        self._events: deque[AuthEvent] = deque()
        self.peer: PeerId | None = None
        self.done = False

    def handle_timer(self, now: float) -> None:
        if not self.done and now >= self._deadline:
            self._fail(OperationTimeoutError("peer authentication timed out", code="auth.timeout"))

    def get_timer(self) -> float | None:
        return None if self.done else self._deadline

    def next_event(self) -> AuthEvent | None:
        return self._events.popleft() if self._events else None

    def frames_to_send(self) -> list[wire.Message]:
        frames, self._outbox = self._outbox, []
        return frames

    def _fail(self, error: PeerlineError) -> None:
        self.done = True
        self._outbox.clear()
        self._events.append(AuthFailed(error))

    def _succeed(self, peer: PeerId) -> None:
        self.done = True
        self.peer = peer
        self._events.append(Authenticated(peer))

    def _unexpected(self, frame: wire.Message) -> None:
        self._fail(
            AuthenticationError(
                f"{type(frame).__name__} frame before authentication",
                code="auth.unexpected_frame",
            )
        )


class ListenerAuth(_AuthMachine):
    """The accepting side: challenge, then verify the dialer's proof."""

    def __init__(self, identity: Identity, *, now: float, timeout: float, rng: Rng) -> None:
        super().__init__(now=now, timeout=timeout)
        self._listener = identity.peer_id
        self._challenge = rng(CHALLENGE_SIZE)
        self._outbox.append(AuthChallenge(self._challenge))

    def receive_frame(self, frame: wire.Message, now: float) -> None:
        self.handle_timer(now)
        if self.done:
            return
        if not isinstance(frame, AuthProof):
            self._unexpected(frame)
            return
        dialer = PeerId(frame.peer)
        if dialer == self._listener:
            self._fail(AuthenticationError("a peer cannot dial itself", code="auth.self"))
            return
        try:
            verify(
                dialer.key,
                AUTH_DOMAIN,
                proof_message(self._listener, self._challenge, dialer),
                frame.signature,
            )
        except CryptoError:
            self._fail(AuthenticationError("identity proof does not verify", code="auth.bad_proof"))
            return
        self._outbox.append(AuthOk())
        self._succeed(dialer)


class DialerAuth(_AuthMachine):
    """The dialing side: pin the listener's certificate key, then prove ourselves."""

    def __init__(self, identity: Identity, expected: PeerId, *, now: float, timeout: float) -> None:
        super().__init__(now=now, timeout=timeout)
        self._identity = identity
        self._expected = expected
        self._pinned = False
        self._challenge: bytes | None = None
        self._proof_sent = False

    def certificate_received(self, key: bytes | None, now: float) -> None:
        """Feed the listener's TLS certificate key (``None``: absent or not Ed25519)."""
        self.handle_timer(now)
        if self.done or self._pinned:
            return
        if key != self._expected.key:
            self._fail(
                AuthenticationError(
                    f"listener is not {self._expected.short()}: certificate key mismatch",
                    code="auth.pin_mismatch",
                )
            )
            return
        self._pinned = True
        self._maybe_prove()

    def receive_frame(self, frame: wire.Message, now: float) -> None:
        self.handle_timer(now)
        if self.done:
            return
        if isinstance(frame, AuthChallenge):
            if self._challenge is None:
                self._challenge = frame.nonce
                self._maybe_prove()
            elif frame.nonce != self._challenge:
                self._fail(AuthenticationError("challenge changed", code="auth.bad_challenge"))
        elif isinstance(frame, AuthOk) and self._proof_sent:
            self._succeed(self._expected)
        else:
            self._unexpected(frame)

    def _maybe_prove(self) -> None:
        if self._pinned and self._challenge is not None and not self._proof_sent:
            self._proof_sent = True
            self._outbox.append(self.make_proof(self._expected, self._challenge))

    def make_proof(self, listener: PeerId, challenge: bytes) -> AuthProof:
        """Our proof for ``listener`` and ``challenge`` (a method so tests can forge variants)."""
        me = self._identity.peer_id
        signature = self._identity.sign(AUTH_DOMAIN, proof_message(listener, challenge, me))
        return AuthProof(me.key, signature)
