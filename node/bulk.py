"""Bulk streams: one QUIC bidirectional stream per transfer, bounded both ways.

A bulk stream is a byte stream (``write`` / ``read`` / ``close``) carried as
:class:`~node.channel.BulkData` frames of at most :data:`CHUNK` bytes. Each direction is
credit-controlled (:class:`~node.channel.Credit` frames travel back on the same stream), so a
receiver holds at most ``bulk_window`` unread bytes per stream: a slow reader slows the writer
instead of filling memory. Credit is granted only while our own side is open, so **finish
reading before** :meth:`BulkStream.close` if the peer still has more than a window to send.

The opener's first frame is an application header message, handed to the peer's bulk handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from node import wire
from node.channel import (
    FIRST_APPLICATION_TYPE,
    BulkData,
    CloseCode,
    Credit,
    ReceiveCredit,
    SendCredit,
)
from node.config import TransportConfig
from node.errors import ConnectionClosedError, OperationTimeoutError, PeerlineError
from node.errors import RemoteProtocolError as _Remote

__all__ = ["CHUNK", "BulkStream", "BulkStreams", "Link", "StreamHandler"]

log = logging.getLogger(__name__)
_LIMIT_CODE, _PROTOCOL_CODE, _INTERNAL_CODE = (
    CloseCode.LIMIT,
    CloseCode.PROTOCOL,
    CloseCode.INTERNAL,
)

CHUNK = 32 * 1024
"""Largest :class:`BulkData` payload a writer sends (fits the initial credit)."""

HeaderCallback = Callable[[wire.Message, "BulkStream"], None]


class Link(Protocol):
    """What a connection needs from the QUIC adapter."""

    def now(self) -> float: ...

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None: ...

    def flush(self) -> None: ...

    def opened(self) -> None: ...

    def open_bidi_stream(self) -> int: ...

    def reset(self, stream_id: int, code: int) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class BulkStream:
    """One side of a bulk transfer. Not thread-safe; one reader and one writer at a time."""

    def __init__(
        self,
        link: Link,
        stream_id: int,
        config: TransportConfig,
        *,
        on_done: Callable[[int], None],
    ) -> None:
        self.stream_id = stream_id
        self._link = link
        self._timeout = config.request_timeout
        self._chunk = min(CHUNK, config.max_frame_size - 64)
        self._on_done = on_done
        self._decoder = wire.FrameDecoder(max_frame=config.max_frame_size)
        self._recv = ReceiveCredit(config.bulk_window)
        self._send = SendCredit()
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._carry = 0
        self._readable = asyncio.Event()
        self._credited = asyncio.Event()
        self._eof = False
        self._finished = False
        self._error: PeerlineError | None = None
        self._on_header: HeaderCallback | None = None

    def __repr__(self) -> str:
        return f"BulkStream({self.stream_id})"

    async def __aenter__(self) -> BulkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ reading

    async def read(self) -> bytes:
        """The next chunk of bytes (at most :data:`CHUNK`), or ``b""`` once the peer finished."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data, share = self._chunks.popleft()
        self._recv.release(share)
        self._grant()
        self._check_done()
        return data

    async def read_all(self, limit: int) -> bytes:
        """Everything until the peer finishes; refuses more than ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if size > limit:
                self.abort(0)
                raise _Remote(f"bulk data exceeds {limit} bytes", code="limit.bulk_size")
            parts.append(chunk)
        return b"".join(parts)

    # ------------------------------------------------------------------ writing

    async def write(self, data: bytes) -> None:
        """Send ``data``; waits for credit (``OperationTimeoutError`` after request_timeout)."""
        view = memoryview(data)
        for start in range(0, len(view), self._chunk):
            chunk = bytes(view[start : start + self._chunk])
            await self.write_frame(wire.encode_frame(BulkData(chunk)))

    async def write_frame(self, frame: bytes) -> None:
        """Send one encoded frame once the peer's credit allows it."""
        while True:
            self._check_writable()
            if self._send.consume(len(frame)):
                break
            self._credited.clear()
            try:
                async with asyncio.timeout(self._timeout):
                    await self._credited.wait()
            except TimeoutError:
                raise OperationTimeoutError(
                    "bulk peer granted no credit in time", code="transport.credit_timeout"
                ) from None
        self._link.send(self.stream_id, frame)

    async def close(self) -> None:
        """Finish our side (the peer reads ``b""``). Idempotent; no effect after a failure."""
        if not self._finished and self._error is None:
            self._finished = True
            self._link.send(self.stream_id, b"", end=True)
            self._check_done()

    def abort(self, code: int) -> None:
        """Reset the stream both ways; both sides' pending calls fail."""
        if self._error is None:
            self._link.reset(self.stream_id, code)
            self.fail(ConnectionClosedError("bulk stream aborted", code="bulk.reset"))

    # ------------------------------------------------------------------ from the connection

    def expect_header(self, callback: HeaderCallback) -> None:
        """The peer opened this stream: its first frame is a header for ``callback``."""
        self._on_header = callback

    def receive(self, data: bytes, end: bool) -> None:
        """Bytes from QUIC; raises :class:`RemoteProtocolError` on a protocol violation."""
        decoder = self._decoder
        before = decoder.buffered
        frames = decoder.feed(data)
        self._recv.received(len(data))
        self._carry += before + len(data) - decoder.buffered
        queued = len(self._chunks)
        for frame in frames:
            self._receive_frame(frame)
        if len(self._chunks) > queued:
            # The bytes of completed frames are released when the last new chunk is read.
            chunk, _ = self._chunks[-1]
            self._chunks[-1] = (chunk, self._carry)
            self._carry = 0
        elif frames:
            self._recv.release(self._carry)  # only header/credit frames: nothing is held
            self._carry = 0
        if end:
            if decoder.buffered:
                raise _Remote("bulk stream ended inside a frame", code="channel.protocol")
            self._eof = True
            self._check_done()
        self._readable.set()

    def _receive_frame(self, frame: wire.Message) -> None:
        if self._on_header is not None:
            callback, self._on_header = self._on_header, None
            if frame.type_id < FIRST_APPLICATION_TYPE:
                raise _Remote("bulk stream must start with a header", code="channel.protocol")
            callback(frame, self)
        elif isinstance(frame, BulkData):
            self._chunks.append((frame.data, 0))
        elif isinstance(frame, Credit):
            if self._send.grant(frame.limit):
                self._credited.set()
        else:
            raise _Remote(f"{type(frame).__name__} on a bulk stream", code="channel.protocol")

    def fail(self, error: PeerlineError) -> None:
        if self._error is None:
            self._error = error
            self._chunks.clear()
            self._readable.set()
            self._credited.set()
            self._on_done(self.stream_id)

    # ------------------------------------------------------------------ internals

    def announce(self) -> None:
        """Send our initial credit (after the header, on the opener's side)."""
        self._grant()

    def _grant(self) -> None:
        limit = self._recv.grant_due()
        if limit is not None and not self._finished and self._error is None:
            self._link.send(self.stream_id, wire.encode_frame(Credit(limit)))

    def _check_writable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._finished:
            raise ConnectionClosedError("bulk stream already closed", code="bulk.closed")

    def _check_done(self) -> None:
        if self._eof and self._finished and not self._chunks:
            self._on_done(self.stream_id)


StreamHandler = Callable[[wire.Message, BulkStream], Awaitable[None]]
"""``async handler(header, stream)`` for a stream the peer opened (the connection binds it)."""


class BulkStreams:
    """The bulk streams of one connection: ours, and at most ``max_streams_per_connection``
    concurrently open ones from the peer (more are reset with ``CloseCode.LIMIT``: refused,
    the connection goes on). Each peer-opened stream gets its handler in a task owned here."""

    def __init__(self, link: Link, config: TransportConfig, *, peer_opens_odd: bool) -> None:
        self._link = link
        self._config = config
        self._peer_parity = 1 if peer_opens_odd else 0
        self._streams: dict[int, BulkStream] = {}
        self._last_peer_stream = -1
        self.tasks: set[asyncio.Task[None]] = set()
        self.handler: StreamHandler | None = None

    def open(self) -> BulkStream:
        """A new stream of ours (the caller writes the header, then announces credit)."""
        return self._add(self._link.open_bidi_stream())

    def receive(self, stream_id: int, data: bytes, end: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id % 2 != self._peer_parity or stream_id <= self._last_peer_stream:
                return  # a stream that already ended or was refused: late data is dropped
            self._last_peer_stream = stream_id
            if len(self._streams) >= self._config.max_streams_per_connection:
                self._link.reset(stream_id, _LIMIT_CODE)
                return
            stream = self._add(stream_id)
            stream.expect_header(self._start_handler)
            stream.announce()
        stream.receive(data, end)

    def reset(self, stream_id: int, code: int) -> bool:
        """The peer reset ``stream_id``; ``False`` if it is not one of ours."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return False
        stream.fail(ConnectionClosedError(f"bulk stream reset ({code})", code="bulk.reset"))
        return True

    def close(self, error: PeerlineError) -> None:
        """The connection ended: every stream fails with ``error``, handler tasks are cancelled."""
        for stream in list(self._streams.values()):
            stream.fail(error)
        self._streams.clear()
        for task in self.tasks:
            task.cancel()

    def _add(self, stream_id: int) -> BulkStream:
        stream = BulkStream(self._link, stream_id, self._config, on_done=self._forget)
        self._streams[stream_id] = stream
        return stream

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def _start_handler(self, header: wire.Message, stream: BulkStream) -> None:
        if self.handler is None:
            stream.abort(_PROTOCOL_CODE)
            return
        task = asyncio.get_running_loop().create_task(self._run(self.handler, header, stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _run(handler: StreamHandler, header: wire.Message, stream: BulkStream) -> None:
        try:
            await handler(header, stream)
        except PeerlineError as exc:
            log.info("bulk handler of %r ended: %s", stream, exc.code)
            stream.abort(_PROTOCOL_CODE)
        except Exception:
            log.exception("bulk handler of %r failed", stream)
            stream.abort(_INTERNAL_CODE)
