"""Fuzz targets: one callable per decoder that faces the outside world.

A target takes arbitrary bytes and either returns or raises a :class:`PeerlineError` whose
fault is ``"remote"`` (the input was garbage). Anything else — another exception type, a hang,
unbounded memory — is a crash. ``seeds()`` gives valid inputs that the mutator starts from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node import wire


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    seeds: Callable[[], list[bytes]]


def _wire_frame(data: bytes) -> object:
    decoder = wire.FrameDecoder(max_frame=64 * 1024)
    return decoder.feed(data)


def _wire_value(data: bytes) -> object:
    return wire.decode(data, max_size=64 * 1024)


def _wire_seeds() -> list[bytes]:
    return [
        wire.LENGTH_PREFIX.pack(3) + wire.encode([wire.VERSION, 1, []])[:3],
        wire.encode({"a": [1, b"x", None, True, "s", 1.5]}),
    ]


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("wire_frame", _wire_frame, _wire_seeds),
        Target("wire_value", _wire_value, _wire_seeds),
    )
}
