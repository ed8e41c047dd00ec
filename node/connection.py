"""One authenticated peer connection: auth driving, requests, one-way frames, bulk streams.

This module is asyncio but knows nothing of aioquic: ``node/transport.py`` feeds it QUIC
events (``handshake_complete``, ``stream_data``, ``stream_reset``, ``terminated``) and gives
it a :class:`~node.bulk.Link` to send through. The stream layout and credit rules are in
:mod:`node.channel`; authentication is :mod:`node.auth`.

Contracts:

- Nothing but auth frames is processed before the peer is authenticated; data on any other
  stream closes the connection (``auth.unexpected_frame``), except that a dialer keeps up to
  ``INITIAL_CREDIT`` bytes the listener sent right after accepting it (QUIC may reorder them
  before ``AuthOk``) and handles them once authenticated.
- Inbound requests and one-way frames are handled **in order, one at a time** by one worker
  task per connection, which calls the handler. The bytes waiting for it are bounded by the
  control credit window; a peer that overruns the credit is disconnected (``limit.credit``).
  So a handler must not wait for something only the same peer's handler on this connection
  can produce (e.g. a request the peer answers by calling us back): that waits for a timeout.
- ``send``/``request`` wait (up to ``request_timeout``) for credit: this is the backpressure.
  Replies need no credit, so answering never blocks.
- Every failure of the peer (garbage, overrun, bad proof) closes *this* connection with a
  reason code; nothing propagates to other connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from node import wire
from node.auth import Authenticated, DialerAuth, ListenerAuth
from node.bulk import BulkStream, BulkStreams, Link
from node.channel import (
    INITIAL_CREDIT,
    CloseCode,
    CloseInfo,
    Credit,
    Failure,
    Goodbye,
    IncomingDecoder,
    ReceiveCredit,
    Reply,
    ReplyDecoder,
    Request,
    RequestIds,
    Response,
    SendCredit,
)
from node.config import TransportConfig
from node.crypto import Rng
from node.errors import (
    AuthenticationError,
    LimitExceededError,
    LocalProtocolError,
    OperationTimeoutError,
    PeerlineError,
    RemoteProtocolError,
    RequestFailedError,
)
from node.identity import Identity, PeerId

__all__ = ["BulkHandler", "Connection", "Handler", "Observer"]

log = logging.getLogger(__name__)

Handler = Callable[["Connection", wire.Message], Awaitable[wire.Message | None]]
"""``async handler(conn, message) -> response | None``; the response is used for requests."""

BulkHandler = Callable[["Connection", wire.Message, BulkStream], Awaitable[None]]
"""``async handler(conn, header, stream)`` for a bulk stream the peer opened."""

_DIALER_CONTROL, _LISTENER_CONTROL = 2, 3  # client / server unidirectional stream ids
_REPLY_OFFSET = 4


class Observer(Protocol):
    """The transport's view of a connection's life."""

    def connection_authenticated(self, conn: Connection) -> None: ...

    def connection_closed(self, conn: Connection) -> None: ...


class _Pending(NamedTuple):
    """One of our requests waiting for its response."""

    future: asyncio.Future[wire.Message]
    deadline: float
    budget: float


def _reason(error: PeerlineError) -> str:
    return f"{error.code}: {error.message}"[:200]


class Connection:
    """An authenticated link to one peer (``peer_id`` is set once authentication succeeded)."""

    def __init__(
        self,
        link: Link,
        identity: Identity,
        config: TransportConfig,
        observer: Observer,
        *,
        expected: PeerId | None,
        remote_address: tuple[str, int],
        rng: Rng,
    ) -> None:
        self._link = link
        self._config = config
        self._observer = observer
        self._loop = asyncio.get_running_loop()
        self.is_dialer = expected is not None
        self.remote_address = remote_address
        self.local_peer_id = identity.peer_id
        self.peer_id: PeerId | None = None
        now = link.now()
        self._auth: DialerAuth | ListenerAuth
        if expected is not None:
            self._auth = DialerAuth(identity, expected, now=now, timeout=config.handshake_timeout)
        else:
            self._auth = ListenerAuth(identity, now=now, timeout=config.handshake_timeout, rng=rng)
        ours, theirs = (
            (_DIALER_CONTROL, _LISTENER_CONTROL)
            if self.is_dialer
            else (_LISTENER_CONTROL, _DIALER_CONTROL)
        )
        self._control_out, self._reply_out = ours, ours + _REPLY_OFFSET
        self._control_in, self._reply_in = theirs, theirs + _REPLY_OFFSET
        self._control_decoder = wire.FrameDecoder(max_frame=config.max_frame_size)
        self._reply_decoder = wire.FrameDecoder(max_frame=config.max_frame_size)
        self._incoming = IncomingDecoder()
        self._replies = ReplyDecoder()
        self._send_credit = SendCredit()
        self._recv_credit = ReceiveCredit(config.control_window)
        self._carry = 0
        self._inbox: deque[tuple[wire.Message, int | None, int]] = deque()
        self._idle: asyncio.Future[None] | None = None  # the worker waits on it when idle
        self._credit_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._pending: dict[int, _Pending] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at: float | None = None
        self._ids = RequestIds()
        self._bulk = BulkStreams(link, config, peer_opens_odd=self.is_dialer)
        self._worker: asyncio.Task[None] | None = None
        self._goodbye: asyncio.Future[None] | None = None
        self._early: list[tuple[int, bytes, bool]] = []
        self._early_size = 0
        self._linger: asyncio.TimerHandle | None = None
        self.handler: Handler | None = None
        self._bulk_handler: BulkHandler | None = None
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[CloseInfo] = self._loop.create_future()
        self._auth_timer = self._loop.call_at(now + config.handshake_timeout, self._on_auth_timer)
        self._flush_auth()

    def __repr__(self) -> str:
        who = self.peer_id.short() if self.peer_id else "unauthenticated"
        side = "out" if self.is_dialer else "in"
        return f"Connection({who}, {side}, {self.remote_address[0]}:{self.remote_address[1]})"

    # ------------------------------------------------------------------ public API

    @property
    def is_open(self) -> bool:
        return self.peer_id is not None and not self.closed.done()

    def set_handler(self, handler: Handler | None) -> None:
        """Handle requests and one-way frames from this peer (replaces the transport default)."""
        self.handler = handler

    def set_bulk_handler(self, handler: BulkHandler | None) -> None:
        """Handle bulk streams the peer opens: ``await handler(conn, header, stream)``."""
        self._bulk_handler = handler
        self._bulk.handler = None if handler is None else functools.partial(handler, self)

    @property
    def bulk_handler(self) -> BulkHandler | None:
        return self._bulk_handler

    async def send(self, message: wire.Message, *, timeout: float | None = None) -> None:
        """Send a one-way frame; waits for credit (``OperationTimeoutError`` after ``timeout``)."""
        data = self._encode(message)
        if not self._try_send(data):
            await self._send_control(data, timeout)

    def _try_send(self, data: bytes) -> bool:
        """Send on the control stream now if credit allows and nobody waits before us."""
        if (
            self.peer_id is None
            or self._credit_waiters
            or self.closed.done()
            or not self._send_credit.consume(len(data))
        ):
            return False
        self._link.send(self._control_out, data)
        return True

    async def request(self, message: wire.Message, *, timeout: float | None = None) -> wire.Message:
        """Send a request and wait for its response.

        Raises :class:`RequestFailedError` (the peer's code) if the peer's handler failed,
        :class:`OperationTimeoutError` (``request.timeout``) after ``timeout`` (default
        ``request_timeout``), :class:`ConnectionClosedError` (or the close reason's error) if
        the connection ends, :class:`LimitExceededError` (``limit.pending_requests``) if too
        many of our requests are already waiting.
        """
        if self.peer_id is None or self.closed.done():
            self._check_open()
        if len(self._pending) >= self._config.max_pending_requests:
            raise LimitExceededError("too many pending requests", code="limit.pending_requests")
        budget = self._config.request_timeout if timeout is None else timeout
        request_id = self._ids.allocate(self._pending)
        future: asyncio.Future[wire.Message] = self._loop.create_future()
        deadline = self._loop.time() + budget
        self._pending[request_id] = _Pending(future, deadline, budget)
        if self._sweep_at is None or deadline < self._sweep_at:
            self._arm_sweep(deadline)
        try:
            data = wire.encode_frame(Request(request_id)) + self._encode(message)
            if not self._try_send(data):
                await self._send_control(data, budget)
            return await future
        finally:
            del self._pending[request_id]

    def _arm_sweep(self, deadline: float) -> None:
        """One timer per connection expires requests (not one per request: it is a hot path)."""
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep = self._loop.call_at(deadline, self._expire_requests)
        self._sweep_at = deadline

    def _expire_requests(self) -> None:
        self._sweep = self._sweep_at = None
        now = self._loop.time()
        for pending in self._pending.values():
            if pending.deadline > now:
                if self._sweep_at is None or pending.deadline < self._sweep_at:
                    self._arm_sweep(pending.deadline)
            elif not pending.future.done():
                pending.future.set_exception(
                    OperationTimeoutError(
                        f"no response within {pending.budget:.3g} s", code="request.timeout"
                    )
                )

    async def open_bulk(self, header: wire.Message) -> BulkStream:
        """Open a bulk stream; ``header`` tells the peer's bulk handler what it carries."""
        self._check_open()
        stream = self._bulk.open()
        await stream.write_frame(self._encode(header))
        stream.announce()
        return stream

    async def close(
        self, code: int = CloseCode.NORMAL, reason: str = "transport.closed: connection closed"
    ) -> None:
        """Graceful close: the peer handles every frame we sent before it, then both sides close.

        Waits at most ``close_timeout`` for the peer, then closes anyway.
        """
        if self.closed.done():
            return
        if self.peer_id is not None and self._goodbye is None:
            self._goodbye = self._loop.create_future()
            goodbye = wire.encode_frame(Goodbye(int(code), reason[:200]))
            if self._send_credit.consume(len(goodbye)):
                self._link.send(self._control_out, goodbye)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(self._goodbye), self._config.close_timeout
                    )
        self.abort(code, reason)

    def abort(self, code: int, reason: str) -> None:
        """Close at once (no waiting for the peer); pending operations fail.

        An authenticated peer first gets a :class:`Goodbye` on our reply stream, flushed
        before the QUIC close: QUIC reports a received close only after its draining period
        (three PTOs), the Goodbye lets the peer drop the connection as soon as it arrives.
        """
        if self.closed.done():
            return
        if self.peer_id is not None and self._goodbye is None:
            self._link.send(self._reply_out, wire.encode_frame(Goodbye(int(code), reason[:200])))
            self._link.flush()
        self._link.close(int(code), reason)
        self._terminate(CloseInfo(int(code), reason, by_peer=False))

    # ------------------------------------------------------------------ events from transport

    def handshake_complete(self, certificate_key: bytes | None) -> None:
        if isinstance(self._auth, DialerAuth):
            self._auth.certificate_received(certificate_key, self._link.now())
            self._flush_auth()

    def stream_data(self, stream_id: int, data: bytes, end: bool) -> None:
        if self.closed.done():
            return
        try:
            if stream_id == self._control_in:
                self._on_control(data)
            elif self.peer_id is None:
                self._early_data(stream_id, data, end)
            elif stream_id == self._reply_in:
                self._on_reply(data)
            elif stream_id % 4 in (0, 1):
                self._bulk.receive(stream_id, data, end)
            else:
                raise RemoteProtocolError("unexpected stream", code="channel.protocol")
        except PeerlineError as exc:
            self._fail(exc)

    def stream_reset(self, stream_id: int, code: int) -> None:
        if self._bulk.reset(stream_id, code):
            return
        if stream_id in (self._control_in, self._reply_in) and not self.closed.done():
            self._fail(RemoteProtocolError("control stream reset", code="channel.protocol"))

    def terminated(self, info: CloseInfo) -> None:
        """The QUIC connection is gone (closed by either side, idle, or the network)."""
        if self._linger is not None:
            self._linger.cancel()
        self._terminate(info)

    # ------------------------------------------------------------------ authentication

    def _early_data(self, stream_id: int, data: bytes, end: bool) -> None:
        """Non-control data before we are authenticated.

        The listener may legitimately send (credit, a bulk stream) right after it sent AuthOk,
        and QUIC may deliver that before AuthOk: a dialer keeps up to ``INITIAL_CREDIT`` bytes
        of it and replays them once authenticated. A listener never receives such data from
        an honest dialer.
        """
        self._early_size += len(data)
        if not self.is_dialer or self._early_size > INITIAL_CREDIT:
            raise AuthenticationError("data before authentication", code="auth.unexpected_frame")
        self._early.append((stream_id, data, end))

    def _flush_auth(self) -> None:
        frames = self._auth.frames_to_send()
        if frames:
            self._link.send(self._control_out, b"".join(wire.encode_frame(f) for f in frames))
        event = self._auth.next_event()
        while event is not None:
            if isinstance(event, Authenticated):
                self._authenticated(event.peer)
            else:
                code = CloseCode.TIMEOUT if event.error.code == "auth.timeout" else None
                self.abort(code or CloseCode.AUTH_FAILED, _reason(event.error))
            event = self._auth.next_event()

    def _on_auth_timer(self) -> None:
        self._auth.handle_timer(self._link.now())
        self._flush_auth()

    def _authenticated(self, peer: PeerId) -> None:
        self.peer_id = peer
        self._auth_timer.cancel()
        self._link.opened()
        self._grant_credit()
        self._worker = self._loop.create_task(self._work(), name=f"peerline-conn-{peer.short()}")
        self._observer.connection_authenticated(self)
        early, self._early = self._early, []
        for stream_id, data, end in early:
            self.stream_data(stream_id, data, end)

    # ------------------------------------------------------------------ control stream

    def _on_control(self, data: bytes) -> None:
        """Frames from the peer's control stream: auth first, then into the inbox.

        Credit: every byte is charged on arrival; the bytes of a chunk are released when the
        last message completed in it has been handled (the per-chunk granularity is enough).
        """
        decoder = self._control_decoder
        before = decoder.buffered
        frames = decoder.feed(data)
        self._recv_credit.received(len(data))
        self._carry += before + len(data) - decoder.buffered
        if self.peer_id is None:
            frames = self._authenticate(frames)
        if not frames or self.closed.done():
            return
        events = self._incoming.receive(frames)
        if events:
            inbox = self._inbox
            for message, request_id in events[:-1]:
                inbox.append((message, request_id, 0))
            message, request_id = events[-1]
            inbox.append((message, request_id, self._carry))
            self._carry = 0
            idle = self._idle
            if idle is not None and not idle.done():
                idle.set_result(None)

    def _authenticate(self, frames: list[wire.Message]) -> list[wire.Message]:
        """Feed frames to the auth machine until it is done; return the frames after that."""
        for index, frame in enumerate(frames):
            self._auth.receive_frame(frame, self._link.now())
            self._flush_auth()
            if self._auth.done:
                return frames[index + 1 :]
        return []

    async def _work(self) -> None:
        """Handle inbound frames in order; credit goes back as they are done."""
        inbox = self._inbox
        while True:
            if not inbox:
                self._idle = self._loop.create_future()
                await self._idle
                continue
            message, request_id, share = inbox.popleft()
            if request_id is not None:
                await self._answer(message, request_id)
            elif isinstance(message, Goodbye):
                self._acknowledge_goodbye(message)
                return
            elif self.handler is not None:  # one-way: handled inline (the hot path)
                try:
                    await self.handler(self, message)
                except Exception:
                    log.exception("one-way handler failed for %r", self)
            if share:
                self._recv_credit.release(share)
                self._grant_credit()  # a Credit goes out once a quarter of the window is free

    async def _answer(self, message: wire.Message, request_id: int) -> None:
        """Run the handler on a request and send its response or failure."""
        handler = self.handler
        try:
            if handler is None:
                raise LocalProtocolError("no request handler", code="request.unhandled")
            result = await handler(self, message)
            if result is None:
                raise LocalProtocolError("the handler gave no response", code="request.unhandled")
            data = wire.encode_frame(Response(request_id)) + self._encode(result)
        except PeerlineError as exc:
            data = wire.encode_frame(Failure(request_id, exc.code[:64], exc.message[:256]))
        except Exception:
            log.exception("request handler failed for %r", self)
            data = wire.encode_frame(Failure(request_id, "internal", "handler failed"))
        if not self.closed.done():
            self._link.send(self._reply_out, data)

    def _acknowledge_goodbye(self, goodbye: Goodbye) -> None:
        """Everything before the peer's Goodbye is handled: echo it and let the peer close.

        The QUIC close comes from the peer within a round trip; if it does not, we close
        ourselves after ``close_timeout``.
        """
        self._link.send(self._reply_out, wire.encode_frame(goodbye))
        self._linger = self._loop.call_later(
            self._config.close_timeout, self._link.close, goodbye.code, goodbye.reason
        )
        self._terminate(CloseInfo(goodbye.code, goodbye.reason, by_peer=True))

    def _grant_credit(self) -> None:
        limit = self._recv_credit.grant_due()
        if limit is not None and not self.closed.done():
            self._link.send(self._reply_out, wire.encode_frame(Credit(limit)))

    # ------------------------------------------------------------------ reply stream

    def _on_reply(self, data: bytes) -> None:
        for frame in self._reply_decoder.feed(data):
            event = self._replies.receive(frame)
            if isinstance(event, Credit):
                if self._send_credit.grant(event.limit):
                    self._wake_credit_waiters()
            elif isinstance(event, Goodbye):
                if self._goodbye is None:  # the peer is aborting: stop using the link now
                    self._terminate(CloseInfo(event.code, event.reason, by_peer=True))
                elif not self._goodbye.done():  # the peer acknowledged our graceful close
                    self._goodbye.set_result(None)
            elif isinstance(event, Reply):
                self._resolve(event)

    def _resolve(self, reply: Reply) -> None:
        pending = self._pending.get(reply.id)
        if pending is None or pending.future.done():
            return  # late reply of a timed-out request: dropped, costs nothing
        if reply.message is not None:
            pending.future.set_result(reply.message)
        else:
            error = RequestFailedError(reply.error_message, code=reply.error_code)
            pending.future.set_exception(error)

    # ------------------------------------------------------------------ sending with credit

    def _encode(self, message: wire.Message) -> bytes:
        data = wire.encode_frame(message)
        if len(data) - wire.LENGTH_PREFIX.size > self._config.max_frame_size:
            raise LocalProtocolError(
                f"{type(message).__name__} frame exceeds max_frame_size", code="limit.frame_size"
            )
        return data

    def _check_open(self) -> None:
        if self.closed.done():
            raise self.closed.result().error()
        if self.peer_id is None:
            raise LocalProtocolError("connection not authenticated yet", code="transport.not_ready")

    async def _send_control(self, data: bytes, timeout: float | None) -> None:
        self._check_open()
        if self._credit_waiters or not self._send_credit.consume(len(data)):
            waiter: asyncio.Future[None] = self._loop.create_future()
            entry = (len(data), waiter)
            self._credit_waiters.append(entry)
            budget = self._config.request_timeout if timeout is None else timeout
            try:
                async with asyncio.timeout(budget):
                    await waiter
            except TimeoutError:
                raise OperationTimeoutError(
                    "peer granted no credit in time", code="transport.credit_timeout"
                ) from None
            finally:
                with contextlib.suppress(ValueError):
                    self._credit_waiters.remove(entry)
            self._check_open()
        self._link.send(self._control_out, data)

    def _wake_credit_waiters(self) -> None:
        waiters = self._credit_waiters
        while waiters:
            size, waiter = waiters[0]
            if waiter.done():
                waiters.popleft()
                continue
            if not self._send_credit.consume(size):
                return
            waiters.popleft()
            waiter.set_result(None)

    # ------------------------------------------------------------------ teardown

    def _fail(self, error: PeerlineError) -> None:
        code = CloseCode.LIMIT if isinstance(error, LimitExceededError) else CloseCode.PROTOCOL
        if isinstance(error, AuthenticationError):
            code = CloseCode.AUTH_FAILED
        log.info("closing %r: %s", self, error.code)
        self.abort(code, _reason(error))

    def _terminate(self, info: CloseInfo) -> None:
        if self.closed.done():
            return
        self._auth_timer.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
        self.closed.set_result(info)
        error = info.error()
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # mark retrieved: nobody may be waiting
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        for _, waiter in self._credit_waiters:
            if not waiter.done():
                waiter.set_result(None)  # the sender re-checks and raises the close error
        self._bulk.close(error)
        if self._worker is not None:
            self._worker.cancel()
        self._inbox.clear()
        self._observer.connection_closed(self)

    async def wait_closed(self) -> CloseInfo:
        """Wait for the end of the connection and for its worker and bulk tasks to finish."""
        info = await asyncio.shield(self.closed)
        tasks = [t for t in (self._worker, *self._bulk.tasks) if t is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return info
