"""Wire format: the only module that imports ``msgpack``.

Two layers:

1. **Plain values** — :func:`encode` / :func:`decode` for ``None``, ``bool``, ``int``, ``float``,
   ``str``, ``bytes``, lists and ``str``-keyed maps. Encoding is canonical (map keys sorted,
   minimal integer widths, ``bytes`` as msgpack bin), so signed objects have exactly one byte form.
   Decoding is strict (size checked before parsing, ext types and non-``str`` map keys refused)
   and turns every failure into :class:`RemoteProtocolError`.
2. **Typed messages** — frozen dataclasses whose every field is ``Annotated[T, Spec]``. A message
   is encoded as a msgpack *array* of its fields in declaration order (compact and canonical by
   construction). A **frame** is ``[VERSION, type_id, body_array]`` behind a 4-byte big-endian
   length prefix; :class:`FrameDecoder` checks the prefix against the maximum frame size *before*
   buffering the body, then validates every field's type and range.

Type ids are registered once per process in :data:`REGISTRY`; the ranges are listed in README's
Protocol section. Arbitrary bytes in ⇒ messages or :class:`RemoteProtocolError`, nothing else.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar, get_type_hints

import msgpack

from node.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "LENGTH_PREFIX",
    "REGISTRY",
    "VERSION",
    "Bool",
    "Bytes",
    "Float",
    "FrameDecoder",
    "Int",
    "ListOf",
    "Maybe",
    "Message",
    "Nested",
    "Registry",
    "Spec",
    "Str",
    "Value",
    "decode",
    "decode_frame",
    "decode_message",
    "encode",
    "encode_frame",
    "encode_message",
    "frame",
]

VERSION = 1
DEFAULT_MAX_FRAME = 1 << 20
LENGTH_PREFIX = struct.Struct(">I")
_MAX_DEPTH = 32

Value = None | bool | int | float | str | bytes | list["Value"] | dict[str, "Value"]
T = TypeVar("T")
M = TypeVar("M", bound="Message")


def _malformed(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code="wire.malformed")


def _refuse_ext(code: int, data: bytes) -> object:
    raise _malformed(f"msgpack ext type {code} is not allowed")


def _canonical(value: object, depth: int = 0) -> object:
    """Sort map keys recursively so equal values have equal bytes; refuse unknown types."""
    if depth > _MAX_DEPTH:
        raise LocalProtocolError("value nested too deeply", code="wire.too_deep")
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise LocalProtocolError("map keys must be str", code="wire.bad_value")
        return {key: _canonical(value[key], depth + 1) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [_canonical(item, depth + 1) for item in value]
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    raise LocalProtocolError(f"cannot encode {type(value).__name__}", code="wire.bad_value")


def encode(value: object) -> bytes:
    """Canonical msgpack bytes of a plain value."""
    try:
        return msgpack.packb(_canonical(value), use_bin_type=True)
    except (OverflowError, ValueError, TypeError) as exc:
        raise LocalProtocolError(f"cannot encode value: {exc}", code="wire.bad_value") from None


def _unpack(data: bytes, max_size: int) -> object:
    if len(data) > max_size:
        raise LimitExceededError(
            f"{len(data)} bytes exceed the limit of {max_size}", code="wire.too_large"
        )
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, ext_hook=_refuse_ext
        )
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as exc:
        raise _malformed(f"invalid msgpack: {type(exc).__name__}") from None
    except RecursionError:
        raise _malformed("msgpack nested too deeply") from None


def _check_plain(value: object, depth: int = 0) -> Value:
    """Refuse what msgpack may produce but we never send (ext objects, Timestamps)."""
    if depth > _MAX_DEPTH:
        raise _malformed("value nested too deeply")
    if isinstance(value, list):
        return [_check_plain(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {key: _check_plain(item, depth + 1) for key, item in value.items()}
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    raise _malformed(f"unexpected {type(value).__name__} in msgpack data")


def decode(data: bytes, *, max_size: int) -> Value:
    """Strictly decode plain-value msgpack of at most ``max_size`` bytes."""
    return _check_plain(_unpack(bytes(data), max_size))


# --------------------------------------------------------------------------- field specs


class Spec(Generic[T]):
    """How one field travels: ``check`` validates a decoded value, ``to_wire`` prepares one."""

    def check(self, value: object, name: str) -> T:
        raise NotImplementedError

    def to_wire(self, value: T) -> object:
        return value


class Bytes(Spec[bytes]):
    """A byte string of ``min``..``max`` bytes (``size`` sets both)."""

    def __init__(self, *, size: int | None = None, min: int = 0, max: int | None = None) -> None:
        self.min = size if size is not None else min
        self.max = size if size is not None else max
        if self.max is None:
            raise LocalProtocolError("Bytes spec needs a max or a size", code="wire.bad_spec")

    def check(self, value: object, name: str) -> bytes:
        if type(value) is not bytes:
            raise _malformed(f"{name}: expected bytes")
        if not self.min <= len(value) <= typing.cast(int, self.max):
            raise _malformed(f"{name}: length {len(value)} out of range")
        return value


class Str(Spec[str]):
    """A UTF-8 string of ``min``..``max`` *characters* (checked after decoding)."""

    def __init__(self, *, max: int, min: int = 0) -> None:
        self.min, self.max = min, max

    def check(self, value: object, name: str) -> str:
        if type(value) is not str:
            raise _malformed(f"{name}: expected a string")
        if not self.min <= len(value) <= self.max:
            raise _malformed(f"{name}: length {len(value)} out of range")
        return value


class Int(Spec[int]):
    """An integer in ``min``..``max`` inclusive (``bool`` is not an int here)."""

    def __init__(self, *, min: int = 0, max: int = 2**64 - 1) -> None:
        self.min, self.max = min, max

    def check(self, value: object, name: str) -> int:
        if type(value) is not int:
            raise _malformed(f"{name}: expected an integer")
        if not self.min <= value <= self.max:
            raise _malformed(f"{name}: {value} out of range")
        return value


class Float(Spec[float]):
    """A finite float in ``min``..``max`` (ints are accepted and converted)."""

    def __init__(self, *, min: float = 0.0, max: float = 2.0**53) -> None:
        self.min, self.max = min, max

    def check(self, value: object, name: str) -> float:
        if type(value) not in (float, int):
            raise _malformed(f"{name}: expected a number")
        number = float(typing.cast(float, value))
        if not self.min <= number <= self.max:  # also false for NaN
            raise _malformed(f"{name}: {number} out of range")
        return number


class Bool(Spec[bool]):
    def check(self, value: object, name: str) -> bool:
        if type(value) is not bool:
            raise _malformed(f"{name}: expected a boolean")
        return value


class Maybe(Spec["T | None"]):
    """``None`` or a value of the inner spec."""

    def __init__(self, inner: Spec[T]) -> None:
        self.inner = inner

    def check(self, value: object, name: str) -> T | None:
        return None if value is None else self.inner.check(value, name)

    def to_wire(self, value: T | None) -> object:
        return None if value is None else self.inner.to_wire(value)


class ListOf(Spec[list[T]]):
    """A list of at most ``max_items`` values of the inner spec."""

    def __init__(self, inner: Spec[T], *, max_items: int) -> None:
        self.inner, self.max_items = inner, max_items

    def check(self, value: object, name: str) -> list[T]:
        if type(value) is not list:
            raise _malformed(f"{name}: expected a list")
        if len(value) > self.max_items:
            raise _malformed(f"{name}: {len(value)} items exceed {self.max_items}")
        return [self.inner.check(item, name) for item in value]

    def to_wire(self, value: list[T]) -> object:
        return [self.inner.to_wire(item) for item in value]


class Nested(Spec[M]):
    """Another :class:`Message`, encoded as its field array."""

    def __init__(self, cls: type[M]) -> None:
        self.cls = cls

    def check(self, value: object, name: str) -> M:
        return self.cls.from_wire(value)

    def to_wire(self, value: M) -> object:
        return value.to_wire()


# --------------------------------------------------------------------------- messages


class Message:
    """Base of typed messages: subclass as a frozen dataclass with ``Annotated`` fields.

    ``__init_subclass__`` cannot see dataclass fields yet (the decorator runs after), so the
    field specs are compiled lazily on first use and cached per class.
    """

    _specs: ClassVar[tuple[tuple[str, Spec[Any]], ...] | None] = None
    type_id: ClassVar[int] = -1

    @classmethod
    def _compiled(cls) -> tuple[tuple[str, Spec[Any]], ...]:
        specs = cls.__dict__.get("_specs")
        if specs is None:
            specs = _compile_specs(cls)
            cls._specs = specs
        return typing.cast(tuple[tuple[str, Spec[Any]], ...], specs)

    def to_wire(self) -> list[object]:
        return [spec.to_wire(getattr(self, name)) for name, spec in self._compiled()]

    @classmethod
    def from_wire(cls: type[M], value: object) -> M:
        specs = cls._compiled()
        if type(value) is not list or len(value) != len(specs):
            raise _malformed(f"{cls.__name__}: expected {len(specs)} fields")
        args = [spec.check(item, name) for (name, spec), item in zip(specs, value, strict=True)]
        return cls(*args)


def _compile_specs(cls: type[Message]) -> tuple[tuple[str, Spec[Any]], ...]:
    if not dataclasses.is_dataclass(cls):
        raise LocalProtocolError(f"{cls.__name__} must be a dataclass", code="wire.bad_spec")
    hints = get_type_hints(cls, include_extras=True)
    compiled: list[tuple[str, Spec[Any]]] = []
    for field in dataclasses.fields(cls):
        specs = [m for m in getattr(hints[field.name], "__metadata__", ()) if isinstance(m, Spec)]
        if len(specs) != 1:
            raise LocalProtocolError(
                f"{cls.__name__}.{field.name} needs exactly one wire Spec", code="wire.bad_spec"
            )
        compiled.append((field.name, specs[0]))
    return tuple(compiled)


def encode_message(message: Message) -> bytes:
    """Canonical bytes of one message (used for signing and hashing)."""
    return msgpack.packb(message.to_wire(), use_bin_type=True)


def decode_message(cls: type[M], data: bytes, *, max_size: int = DEFAULT_MAX_FRAME) -> M:
    """Decode bytes made by :func:`encode_message`; refuses non-canonical re-encodings too."""
    message = cls.from_wire(_unpack(bytes(data), max_size))
    if encode_message(message) != data:
        raise _malformed(f"{cls.__name__}: non-canonical encoding")
    return message


# --------------------------------------------------------------------------- frames


class Registry:
    """Type ids of frame messages. Ids are unique per registry; registration is at import."""

    def __init__(self) -> None:
        self._by_id: dict[int, type[Message]] = {}

    def add(self, type_id: int, cls: type[Message]) -> None:
        if not 0 < type_id < 2**16:
            raise LocalProtocolError(f"frame type id {type_id} out of range", code="wire.bad_spec")
        existing = self._by_id.get(type_id)
        if existing is not None and existing is not cls:
            raise LocalProtocolError(
                f"frame type id {type_id:#x} used by {existing.__name__} and {cls.__name__}",
                code="wire.bad_spec",
            )
        self._by_id[type_id] = cls
        cls.type_id = type_id

    def lookup(self, type_id: int) -> type[Message]:
        cls = self._by_id.get(type_id)
        if cls is None:
            raise _malformed(f"unknown frame type {type_id}")
        return cls

    def types(self) -> dict[int, type[Message]]:
        return dict(self._by_id)


REGISTRY = Registry()


def frame(type_id: int, registry: Registry = REGISTRY) -> Callable[[type[M]], type[M]]:
    """Class decorator (apply *above* ``@dataclass``) that registers a frame type."""

    def register(cls: type[M]) -> type[M]:
        registry.add(type_id, cls)
        cls._compiled()  # fail at import, not on the first packet
        return cls

    return register


def encode_frame(message: Message) -> bytes:
    """Length prefix + ``[VERSION, type_id, body]``."""
    if message.type_id < 0:
        raise LocalProtocolError(f"{type(message).__name__} is not a frame", code="wire.bad_spec")
    body = msgpack.packb([VERSION, message.type_id, message.to_wire()], use_bin_type=True)
    return LENGTH_PREFIX.pack(len(body)) + body


def decode_frame(
    body: bytes, registry: Registry = REGISTRY, *, max_size: int = DEFAULT_MAX_FRAME
) -> Message:
    """Decode one frame body (without its length prefix)."""
    value = _unpack(body, max_size)
    if type(value) is not list or len(value) != 3:
        raise _malformed("a frame is [version, type, body]")
    version, type_id, payload = value
    if version != VERSION or type(version) is not int:
        raise RemoteProtocolError(f"unsupported wire version {version!r}", code="wire.version")
    if type(type_id) is not int:
        raise _malformed("frame type must be an integer")
    return registry.lookup(type_id).from_wire(payload)


class FrameDecoder:
    """Streaming decoder for length-prefixed frames with a bounded buffer.

    ``feed(data)`` returns the complete frames so far. A declared length above ``max_frame``
    raises :class:`LimitExceededError` before anything of the body is buffered, so a peer can
    make us hold at most ``max_frame + 4`` bytes. After any error the decoder is poisoned: the
    caller must close the stream.
    """

    def __init__(self, registry: Registry = REGISTRY, *, max_frame: int = DEFAULT_MAX_FRAME):
        self._registry = registry
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._failed = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        if self._failed:
            raise _malformed("stream already failed")
        self._buffer += data
        try:
            return self._drain()
        except RemoteProtocolError:
            self._failed = True
            self._buffer.clear()
            raise

    def _drain(self) -> list[Message]:
        frames: list[Message] = []
        prefix = LENGTH_PREFIX.size
        while len(self._buffer) >= prefix:
            (length,) = LENGTH_PREFIX.unpack_from(self._buffer)
            if length > self._max_frame:
                raise LimitExceededError(
                    f"frame of {length} bytes exceeds {self._max_frame}", code="wire.too_large"
                )
            if len(self._buffer) < prefix + length:
                break
            body = bytes(self._buffer[prefix : prefix + length])
            del self._buffer[: prefix + length]
            frames.append(decode_frame(body, self._registry, max_size=self._max_frame))
        return frames
