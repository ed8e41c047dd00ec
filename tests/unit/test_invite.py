"""Invite links: round trip, tamper detection, malformed input, host:port parsing."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.errors import UsageError
from node.identity import Identity
from node.invite import INVITE_PREFIX, format_invite, make_invite, parse_invite
from node.messaging import parse_hostport

_R = random.Random(7)
ALICE = Identity.generate(_R.randbytes)


def test_round_trip_keeps_peer_name_and_hints() -> None:
    invite = make_invite(ALICE, "Alice 🌻", ["127.0.0.1:4433", "[::1]:4433"], ["127.0.0.1:7000"])
    link = format_invite(invite)
    assert link.startswith(INVITE_PREFIX) and link == link.lower()
    parsed = parse_invite(link)
    assert parsed.peer_id == ALICE.peer_id
    assert parsed.name == "Alice 🌻"
    assert parsed.body.addresses == ["127.0.0.1:4433", "[::1]:4433"]
    assert parsed.body.rendezvous == ["127.0.0.1:7000"]
    assert parse_invite("  " + link.upper().replace("PEERLINE://INVITE/", INVITE_PREFIX) + "\n")


def test_every_single_character_change_is_refused() -> None:
    link = format_invite(make_invite(ALICE, "a", ["127.0.0.1:1"]))
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    payload_start = len(INVITE_PREFIX)
    for i in range(payload_start, len(link)):
        replacement = alphabet[(alphabet.index(link[i]) + 1) % 32]
        with pytest.raises(UsageError) as info:
            parse_invite(link[:i] + replacement + link[i + 1 :])
        assert info.value.code in ("invite.malformed", "invite.bad_signature")


@pytest.mark.parametrize(
    "text",
    ["", "hello", INVITE_PREFIX, INVITE_PREFIX + "!!!!", INVITE_PREFIX + "a" * 10000, "pl" * 29],
)
def test_malformed_links(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_invite(text)
    assert info.value.code == "invite.malformed"


@given(st.text(max_size=300))
def test_arbitrary_text_is_an_invite_or_a_usage_error(text: str) -> None:
    with contextlib.suppress(UsageError):
        parse_invite(INVITE_PREFIX + text)


def test_hostport() -> None:
    assert parse_hostport("127.0.0.1:4433") == ("127.0.0.1", 4433)
    assert parse_hostport("[::1]:1") == ("::1", 1)
    assert parse_hostport("example.org:65535") == ("example.org", 65535)
    for bad in ["", "host", ":1", "h:0", "h:65536", "h:x", "h:-1"]:
        with pytest.raises(UsageError):
            parse_hostport(bad)
