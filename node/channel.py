"""Framed channels of one authenticated connection (pure): correlation and credit.

Every connection has, in each direction, two long-lived QUIC unidirectional streams:

- the **control** stream carries the auth frames, then requests and one-way frames. A request
  is a :class:`Request` header frame followed by the request message; anything else is a
  one-way message. Bytes on it are **credit-controlled**: the receiver allows at most a window
  of unprocessed bytes and grants more (:class:`Credit`, a cumulative byte offset) as its
  handler consumes frames. A sender that overruns the credit is a protocol violation.
- the **reply** stream carries :class:`Response` header + response message,
  :class:`Failure` and :class:`Credit` frames. Replies need no credit (their number is bounded
  by our own pending requests, and unknown ids are dropped at once), so a handler that waits for
  a reply can never deadlock against a full control window.

Bulk streams (bidirectional, any side may open them) start with a header message and then
carry :class:`BulkData` frames, with their own credit running the other way on the same stream.

Every receiver must allow :data:`INITIAL_CREDIT` bytes before its first grant; each side sends
``Credit(window)`` as soon as the connection is authenticated.

Closing: :class:`Goodbye` on the control stream asks the peer to handle everything sent before
it, echo it on its reply stream and let us close (graceful); a Goodbye on the reply stream that
answers nothing means the peer is closing now (abort). Either way the QUIC close carries a
:class:`CloseCode` and a reason phrase starting with a dotted error code, which
:meth:`CloseInfo.error` turns back into a typed error.

Frame type ids 0x01..0x0F are the transport's (0x01..0x03 auth, 0x04..0x09 here); applications
register theirs from :data:`FIRST_APPLICATION_TYPE` (0x10) up with ``@wire.frame``.
"""

from __future__ import annotations

import re
from collections.abc import Container, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, NamedTuple

from node import wire
from node.errors import (
    AuthenticationError,
    ConnectionClosedError,
    LimitExceededError,
    OperationTimeoutError,
    PeerlineError,
    RemoteProtocolError,
)

__all__ = [
    "INITIAL_CREDIT",
    "MAX_REQUEST_ID",
    "FIRST_APPLICATION_TYPE",
    "BulkData",
    "CloseCode",
    "CloseInfo",
    "Credit",
    "Failure",
    "Goodbye",
    "Incoming",
    "IncomingDecoder",
    "ReceiveCredit",
    "Reply",
    "ReplyDecoder",
    "ReplyEvent",
    "Request",
    "RequestIds",
    "Response",
    "SendCredit",
]

INITIAL_CREDIT = 64 * 1024
MAX_REQUEST_ID = 2**32 - 1
_MAX_OFFSET = 2**62
_TLS_ALERTS = range(0x100, 0x200)  # QUIC CRYPTO_ERROR codes: TLS alert 0x00..0xff
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+){1,3}")


@wire.frame(0x04)
@dataclass(frozen=True, slots=True)
class Request(wire.Message):
    """Control stream: the next frame is a request with this id."""

    id: Annotated[int, wire.Int(max=MAX_REQUEST_ID)]


@wire.frame(0x05)
@dataclass(frozen=True, slots=True)
class Response(wire.Message):
    """Reply stream: the next frame answers request ``id``."""

    id: Annotated[int, wire.Int(max=MAX_REQUEST_ID)]


@wire.frame(0x06)
@dataclass(frozen=True, slots=True)
class Failure(wire.Message):
    """Reply stream: request ``id`` failed at the peer with a :class:`PeerlineError` code."""

    id: Annotated[int, wire.Int(max=MAX_REQUEST_ID)]
    code: Annotated[str, wire.Str(min=1, max=64)]
    message: Annotated[str, wire.Str(max=256)]


@wire.frame(0x07)
@dataclass(frozen=True, slots=True)
class Credit(wire.Message):
    """The peer may send up to ``limit`` bytes in total on the credited stream."""

    limit: Annotated[int, wire.Int(max=_MAX_OFFSET)]


@wire.frame(0x08)
@dataclass(frozen=True, slots=True)
class BulkData(wire.Message):
    """One chunk of a bulk stream (the frame size limit bounds it)."""

    data: Annotated[bytes, wire.Bytes(max=1 << 26)]


@wire.frame(0x09)
@dataclass(frozen=True, slots=True)
class Goodbye(wire.Message):
    """Closing handshake: sent on the control stream by the side that closes; once the peer
    has handled every frame before it, the peer echoes it on its reply stream and both close."""

    code: Annotated[int, wire.Int(max=2**16)]
    reason: Annotated[str, wire.Str(max=200)]


class Incoming(NamedTuple):
    """A message from the control stream; ``request_id`` is ``None`` for one-way frames.

    A named tuple, not a frozen dataclass: one is built per received frame (hot path).
    """

    message: wire.Message
    request_id: int | None


@dataclass(frozen=True, slots=True)
class Reply:
    """A response (``message``) or failure (``error_code``/``error_message``) for ``id``."""

    id: int
    message: wire.Message | None
    error_code: str = ""
    error_message: str = ""


ReplyEvent = Reply | Credit | Goodbye

FIRST_APPLICATION_TYPE = 0x10
"""Type ids below this are transport frames (0x01..0x0F); applications use the rest."""


class CloseCode(IntEnum):
    """QUIC application close codes; the reason phrase carries the error's dotted code."""

    NORMAL = 0
    SHUTDOWN = 1
    DUPLICATE = 2
    AUTH_FAILED = 3
    PROTOCOL = 4
    LIMIT = 5
    TIMEOUT = 6
    INTERNAL = 7


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """Why a connection ended. ``reason`` starts with a dotted error code when we know one."""

    code: int
    reason: str
    by_peer: bool
    transport_error: bool = False

    def error(self) -> PeerlineError:
        """The error that operations pending on this connection raise."""
        if self.transport_error and self.code in _TLS_ALERTS:
            return AuthenticationError(f"TLS handshake failed: {self.reason}", code="auth.tls")
        code, _, _ = self.reason[:64].partition(":")
        message = f"connection closed: {self.reason or 'no reason'}"
        if _ERROR_CODE.fullmatch(code) is None:  # the peer wrote this text: check its shape
            code = ""
        family = code.split(".", 1)[0]
        if self.code == CloseCode.TIMEOUT and not self.transport_error:
            return OperationTimeoutError(message, code=code or "timeout")
        if family == "auth":
            return AuthenticationError(message, code=code)
        if family == "limit":
            return LimitExceededError(message, code=code)
        if family in ("wire", "channel"):
            return RemoteProtocolError(message, code=code)
        return ConnectionClosedError(message)


def _violation(text: str) -> RemoteProtocolError:
    return RemoteProtocolError(text, code="channel.protocol")


class IncomingDecoder:
    """Pairs :class:`Request` headers with their bodies on a control stream (after auth)."""

    def __init__(self) -> None:
        self._pending_id: int | None = None

    def receive(self, frames: Sequence[wire.Message]) -> list[Incoming]:
        """The events ``frames`` complete; a misplaced frame is a protocol violation.

        A :class:`Goodbye` passes through as a one-way event (the connection acts on it once
        everything before it was handled). Called per received chunk: this is a hot path.
        """
        events: list[Incoming] = []
        for frame in frames:
            if frame.type_id >= FIRST_APPLICATION_TYPE:
                events.append(Incoming(frame, self._pending_id))
                self._pending_id = None
            elif isinstance(frame, Request) and self._pending_id is None:
                self._pending_id = frame.id
            elif isinstance(frame, Goodbye) and self._pending_id is None:
                events.append(Incoming(frame, None))
            else:
                raise _violation(f"{type(frame).__name__} is misplaced on a control stream")
        return events


class ReplyDecoder:
    """Pairs :class:`Response` headers with bodies on a reply stream; passes credit through."""

    def __init__(self) -> None:
        self._pending_id: int | None = None

    def receive(self, frame: wire.Message) -> ReplyEvent | None:
        """The event ``frame`` completes, if any; a misplaced frame is a protocol violation."""
        if self._pending_id is not None:
            if frame.type_id < FIRST_APPLICATION_TYPE:
                raise _violation("a response header must be followed by a message")
            event = Reply(self._pending_id, frame)
            self._pending_id = None
            return event
        if isinstance(frame, Response):
            self._pending_id = frame.id
            return None
        if isinstance(frame, Failure):
            return Reply(frame.id, None, frame.code, frame.message)
        if isinstance(frame, Credit | Goodbye):
            return frame
        raise _violation(f"{type(frame).__name__} is not allowed on a reply stream")


class SendCredit:
    """Sender side of a credited stream: bytes sent versus the peer's cumulative limit."""

    def __init__(self, initial: int = INITIAL_CREDIT) -> None:
        self.limit = initial
        self.sent = 0

    def available(self) -> int:
        return self.limit - self.sent

    def consume(self, size: int) -> bool:
        """Take ``size`` bytes of credit if available; ``False`` (nothing taken) otherwise."""
        if self.sent + size > self.limit:
            return False
        self.sent += size
        return True

    def grant(self, limit: int) -> bool:
        """Apply a :class:`Credit`; stale (lower) grants are ignored. ``True`` if it grew."""
        if limit <= self.limit:
            return False
        self.limit = limit
        return True


class ReceiveCredit:
    """Receiver side: counts unprocessed bytes, refuses overruns, decides when to grant more.

    ``received(n)`` when bytes arrive (raises :class:`LimitExceededError`, code
    ``limit.credit``, if the peer sent beyond what we granted); ``release(n)`` when the
    application has processed them; ``grant_due()`` returns a new cumulative limit to send once
    a quarter of the window has been released since the last grant, else ``None``.
    """

    def __init__(self, window: int) -> None:
        if window < INITIAL_CREDIT:
            raise LimitExceededError("credit window below the protocol minimum")
        self.window = window
        self.received_total = 0
        self.released_total = 0
        self.granted = INITIAL_CREDIT
        self._announced = False

    @property
    def held(self) -> int:
        return self.received_total - self.released_total

    def received(self, size: int) -> None:
        self.received_total += size
        if self.received_total > self.granted:
            raise LimitExceededError("peer sent beyond its credit", code="limit.credit")

    def release(self, size: int) -> None:
        self.released_total = min(self.received_total, self.released_total + size)

    def grant_due(self) -> int | None:
        target = self.released_total + self.window
        if not self._announced or target - self.granted >= self.window // 4:
            self._announced = True
            self.granted = max(self.granted, target)
            return self.granted
        return None


class RequestIds:
    """Allocates request ids that are not currently pending (wrapping at 2**32)."""

    def __init__(self) -> None:
        self._next = 0

    def allocate(self, pending: Container[int]) -> int:
        """Next id not in ``pending`` (the ids the caller is still waiting on)."""
        while True:
            self._next = (self._next + 1) & MAX_REQUEST_ID
            if self._next not in pending:
                return self._next
