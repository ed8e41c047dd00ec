"""Shared pieces of the transport integration tests: fast config, test frames, a recording
application and a started-transport context manager."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from node import wire
from node.config import TransportConfig
from node.connection import Connection
from node.errors import LocalProtocolError
from node.identity import Identity
from node.transport import Transport

FAST = TransportConfig(
    dial_attempts=1, handshake_timeout=2.0, request_timeout=2.0, close_timeout=0.5
)


@wire.frame(0x7C01)
@dataclass(frozen=True, slots=True)
class Note(wire.Message):
    """A test application frame."""

    text: Annotated[str, wire.Str(max=64)]


@wire.frame(0x7C02)
@dataclass(frozen=True, slots=True)
class Blob(wire.Message):
    """A test frame of any size up to 4 MiB."""

    data: Annotated[bytes, wire.Bytes(max=4 << 20)]


@dataclass
class Spy:
    """Records what reached the application of one node."""

    messages: list[wire.Message] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)

    async def handle(self, conn: Connection, message: wire.Message) -> wire.Message | None:
        self.messages.append(message)
        if isinstance(message, Note) and message.text == "fail":
            raise LocalProtocolError("refused by the test", code="test.refused")
        if isinstance(message, Note) and message.text == "slow":
            await asyncio.sleep(0.5)
        return Note(f"re:{message.text}") if isinstance(message, Note) else message

    def watch(self, node: Transport) -> Transport:
        node.set_handler(self.handle)
        node.on_connection(self.connections.append)
        return node


@contextlib.asynccontextmanager
async def running(
    config: TransportConfig = FAST, identity: Identity | None = None
) -> AsyncIterator[Transport]:
    """A started transport on 127.0.0.1, closed (and checked closed) afterwards."""
    node = Transport(identity or Identity.generate(), config)
    await node.start("127.0.0.1", 0)
    try:
        yield node
    finally:
        await node.aclose()
