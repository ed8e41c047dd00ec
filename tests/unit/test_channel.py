"""Channel framing (pure): request/response pairing, credit accounting, request ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest

from node import wire
from node.auth import AuthOk
from node.channel import (
    INITIAL_CREDIT,
    MAX_REQUEST_ID,
    BulkData,
    CloseCode,
    CloseInfo,
    Credit,
    Failure,
    Goodbye,
    Incoming,
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
from node.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionClosedError,
    LimitExceededError,
    OperationTimeoutError,
    PeerlineError,
    RemoteProtocolError,
)


@wire.frame(0x7D01)
@dataclass(frozen=True, slots=True)
class Note(wire.Message):
    text: Annotated[str, wire.Str(max=64)]


def test_requests_pair_with_their_bodies_and_one_way_frames_pass() -> None:
    decoder = IncomingDecoder()
    assert decoder.receive([Request(7)]) == []  # a header alone completes nothing
    assert decoder.receive([Note("a"), Note("b"), Goodbye(0, "bye")]) == [
        Incoming(Note("a"), 7),
        Incoming(Note("b"), None),
        Incoming(Goodbye(0, "bye"), None),
    ]


@pytest.mark.parametrize(
    "frames",
    [
        [Request(1), Request(2)],  # two headers in a row
        [AuthOk()],  # transport frame on the control stream after auth
        [Credit(5)],  # credit belongs on the reply stream
        [BulkData(b"x")],
        [Request(1), Goodbye(0, "")],  # a header must be followed by an application message
    ],
)
def test_misplaced_control_frames_are_violations(frames: list[wire.Message]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        IncomingDecoder().receive(frames)
    assert info.value.code == "channel.protocol"


def test_reply_stream_events() -> None:
    decoder = ReplyDecoder()
    assert decoder.receive(Response(3)) is None
    assert decoder.receive(Note("r")) == Reply(3, Note("r"))
    assert decoder.receive(Failure(4, "x.y", "nope")) == Reply(4, None, "x.y", "nope")
    assert decoder.receive(Credit(100)) == Credit(100)
    assert decoder.receive(Goodbye(0, "bye")) == Goodbye(0, "bye")
    with pytest.raises(RemoteProtocolError):
        decoder.receive(Note("unsolicited"))
    with pytest.raises(RemoteProtocolError):
        ReplyDecoder().receive(Request(1))
    header_only = ReplyDecoder()
    header_only.receive(Response(1))
    with pytest.raises(RemoteProtocolError):
        header_only.receive(Credit(1))


def test_send_credit_is_all_or_nothing_and_grants_only_grow() -> None:
    credit = SendCredit()
    assert credit.available() == INITIAL_CREDIT
    assert not credit.consume(INITIAL_CREDIT + 1)
    assert credit.sent == 0
    assert credit.consume(INITIAL_CREDIT)
    assert not credit.consume(1)
    assert credit.grant(INITIAL_CREDIT + 10)
    assert not credit.grant(INITIAL_CREDIT + 5)  # stale grant (reordered) is ignored
    assert credit.consume(10) and credit.available() == 0


def test_receive_credit_refuses_overrun_and_grants_in_quarters() -> None:
    window = 4 * INITIAL_CREDIT
    credit = ReceiveCredit(window)
    assert credit.grant_due() == window  # the first grant announces the whole window
    assert credit.grant_due() is None
    credit.received(window)
    assert credit.held == window
    with pytest.raises(LimitExceededError) as info:
        credit.received(1)
    assert info.value.code == "limit.credit"
    credit.release(window // 4 - 1)
    assert credit.grant_due() is None
    credit.release(1)
    assert credit.grant_due() == window + window // 4
    credit.release(10 * window)  # over-release is clamped to what was received
    assert credit.held == 0


def test_receive_window_below_protocol_minimum_is_refused() -> None:
    with pytest.raises(LimitExceededError):
        ReceiveCredit(INITIAL_CREDIT - 1)


def test_request_ids_skip_pending_and_wrap() -> None:
    ids = RequestIds()
    assert ids.allocate(set()) == 1
    assert ids.allocate({2, 3}) == 4
    ids._next = MAX_REQUEST_ID - 1
    assert ids.allocate(set()) == MAX_REQUEST_ID
    assert ids.allocate({0}) == 1


def test_transport_config_checks_its_limits() -> None:
    assert TransportConfig().keepalive_interval == TransportConfig().idle_timeout / 3
    with pytest.raises(ConfigError):
        TransportConfig(max_connections=0)
    with pytest.raises(ConfigError):
        TransportConfig(handshake_timeout=0)
    with pytest.raises(ConfigError):
        TransportConfig(max_frame_size=1 << 20, control_window=1 << 19)  # window < one frame
    with pytest.raises(ConfigError):
        TransportConfig(max_frame_size=10)


@pytest.mark.parametrize(
    ("info", "kind", "code"),
    [
        (
            CloseInfo(0x133, "bad signature", by_peer=True, transport_error=True),
            AuthenticationError,
            "auth.tls",
        ),
        (
            CloseInfo(CloseCode.AUTH_FAILED, "auth.bad_proof: no", by_peer=True),
            AuthenticationError,
            "auth.bad_proof",
        ),
        (
            CloseInfo(0x2, "limit.connections: full", by_peer=True, transport_error=True),
            LimitExceededError,
            "limit.connections",
        ),
        (
            CloseInfo(CloseCode.TIMEOUT, "auth.timeout: slow", by_peer=False),
            OperationTimeoutError,
            "auth.timeout",
        ),
        (
            CloseInfo(CloseCode.PROTOCOL, "wire.malformed: x", by_peer=True),
            RemoteProtocolError,
            "wire.malformed",
        ),
        (
            CloseInfo(CloseCode.NORMAL, "bye", by_peer=True),
            ConnectionClosedError,
            "transport.closed",
        ),
        (
            CloseInfo(CloseCode.LIMIT, "limit.Not A Code: x", by_peer=True),
            ConnectionClosedError,
            "transport.closed",
        ),
    ],
)
def test_close_reasons_map_to_typed_errors(
    info: CloseInfo, kind: type[PeerlineError], code: str
) -> None:
    error = info.error()
    assert type(error) is kind and error.code == code
