"""Wire codec: canonical encoding, strict typed decoding, bounded streaming, fuzz property."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Annotated

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import wire
from node.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError

TEST_REGISTRY = wire.Registry()


@dataclass(frozen=True, slots=True)
class Inner(wire.Message):
    label: Annotated[str, wire.Str(max=8)]


@wire.frame(0x7F01, TEST_REGISTRY)
@dataclass(frozen=True, slots=True)
class Sample(wire.Message):
    key: Annotated[bytes, wire.Bytes(size=4)]
    count: Annotated[int, wire.Int(max=1000)]
    note: Annotated[str | None, wire.Maybe(wire.Str(max=16))]
    flags: Annotated[list[bool], wire.ListOf(wire.Bool(), max_items=3)]
    inner: Annotated[Inner, wire.Nested(Inner)]
    ratio: Annotated[float, wire.Float(max=1.0)]


SAMPLE = Sample(b"abcd", 7, None, [True, False], Inner("x"), 0.5)


def test_frame_round_trip() -> None:
    data = wire.encode_frame(SAMPLE)
    decoder = wire.FrameDecoder(TEST_REGISTRY)
    assert decoder.feed(data) == [SAMPLE]
    assert decoder.buffered == 0


def test_frames_split_at_every_byte_boundary() -> None:
    data = wire.encode_frame(SAMPLE) * 3
    decoder = wire.FrameDecoder(TEST_REGISTRY)
    out: list[wire.Message] = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    assert out == [SAMPLE] * 3


def test_message_encoding_is_canonical_and_checked() -> None:
    data = wire.encode_message(SAMPLE)
    assert wire.decode_message(Sample, data) == SAMPLE
    # The same value with a non-minimal integer width is refused.
    longer = data.replace(b"\x07", b"\xcd\x00\x07", 1)
    with pytest.raises(RemoteProtocolError):
        wire.decode_message(Sample, longer)


@pytest.mark.parametrize(
    "body",
    [
        [b"abc", 7, None, [], ["x"], 0.5],  # bytes too short
        [b"abcd", 1001, None, [], ["x"], 0.5],  # int out of range
        [b"abcd", True, None, [], ["x"], 0.5],  # bool is not an int
        [b"abcd", 7, "x" * 17, [], ["x"], 0.5],  # string too long
        [b"abcd", 7, None, [True] * 4, ["x"], 0.5],  # too many items
        [b"abcd", 7, None, [], ["x", "y"], 0.5],  # nested arity
        [b"abcd", 7, None, [], ["x"], float("nan")],  # NaN
        [b"abcd", 7, None, []],  # missing fields
        ["abcd", 7, None, [], ["x"], 0.5],  # str where bytes expected
    ],
)
def test_schema_violations_are_remote_errors(body: list[object]) -> None:
    raw = wire.encode([wire.VERSION, Sample.type_id, body])
    with pytest.raises(RemoteProtocolError, match=r"Sample|out of range|expected|length|items"):
        wire.decode_frame(raw, TEST_REGISTRY)


def test_unknown_type_and_version_are_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown frame type"):
        wire.decode_frame(wire.encode([wire.VERSION, 0x7F02, []]), TEST_REGISTRY)
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode_frame(wire.encode([99, Sample.type_id, []]), TEST_REGISTRY)
    assert info.value.code == "wire.version"


def test_oversized_length_prefix_refused_before_buffering() -> None:
    decoder = wire.FrameDecoder(TEST_REGISTRY, max_frame=64)
    with pytest.raises(LimitExceededError) as info:
        decoder.feed(wire.LENGTH_PREFIX.pack(65) + b"\x00")
    assert info.value.code == "wire.too_large"
    assert decoder.buffered == 0
    with pytest.raises(RemoteProtocolError):
        decoder.feed(wire.encode_frame(SAMPLE))  # poisoned after an error


def test_ext_types_and_timestamps_refused() -> None:
    ext = b"\xd4\x05\x00"  # fixext1, type 5
    timestamp = b"\xd6\xff\x00\x00\x00\x01"  # ext -1: Timestamp
    for data in (ext, timestamp):
        with pytest.raises(RemoteProtocolError):
            wire.decode(data, max_size=64)


def test_plain_values_round_trip_canonically() -> None:
    value = {"b": [1, b"x", None], "a": {"z": True, "y": "é"}}
    data = wire.encode(value)
    assert data == wire.encode({"a": {"y": "é", "z": True}, "b": [1, b"x", None]})
    assert wire.decode(data, max_size=100) == value
    with pytest.raises(LimitExceededError):
        wire.decode(data, max_size=len(data) - 1)


def test_encode_refuses_unknown_types_as_local_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        wire.encode({"a": object()})
    with pytest.raises(LocalProtocolError):
        wire.encode({1: "non-str key"})


def test_registry_refuses_duplicate_ids() -> None:
    registry = wire.Registry()
    registry.add(5, Sample)
    with pytest.raises(LocalProtocolError):
        registry.add(5, Inner)


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_arbitrary_bytes_give_frames_or_remote_errors(data: bytes) -> None:
    decoder = wire.FrameDecoder(TEST_REGISTRY, max_frame=4096)
    try:
        frames = decoder.feed(wire.LENGTH_PREFIX.pack(len(data)) + data)
    except RemoteProtocolError:
        return
    assert all(isinstance(f, Sample) for f in frames)
    with contextlib.suppress(RemoteProtocolError):
        wire.decode(data, max_size=4096)


@settings(max_examples=500, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary() | st.text(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=4), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_plain_encode_decode_is_identity(value: wire.Value) -> None:
    assert wire.decode(wire.encode(value), max_size=1 << 20) == value


@settings(max_examples=2_000, deadline=None)
@given(st.data())
def test_mutated_valid_frames_give_frames_or_remote_errors(data: st.DataObject) -> None:
    encoded = bytearray(wire.encode_frame(SAMPLE))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    decoder = wire.FrameDecoder(TEST_REGISTRY, max_frame=4096)
    try:
        frames = decoder.feed(bytes(encoded))
    except RemoteProtocolError:
        return
    assert all(isinstance(f, Sample) for f in frames)
