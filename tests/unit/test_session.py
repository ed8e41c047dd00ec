"""Sessions: offline first messages, routing, crash safety (persist before send), key changes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from node import prekeys, session
from node.errors import (
    CryptoError,
    LimitExceededError,
    LocalProtocolError,
    PeerlineError,
    RemoteProtocolError,
    ReplayError,
)
from node.identity import Identity, safety_number
from node.prekeys import PrekeyState
from node.session import Session

NOW = 1_700_000_000.0
RNG = random.Random(42).randbytes


@dataclass
class Party:
    identity: Identity
    prekeys: PrekeyState
    session: Session | None = None


def parties(seed: int = 1) -> tuple[Party, Party]:
    rng = random.Random(seed).randbytes
    alice, bob = Identity.generate(rng), Identity.generate(rng)
    alice_party = Party(alice, prekeys.generate(alice, now=NOW, rng=rng))
    bob_party = Party(bob, prekeys.generate(bob, now=NOW, rng=rng))
    return alice_party, bob_party


def bundle_of(party: Party) -> prekeys.PrekeyBundle:
    data = prekeys.make_bundle(party.prekeys, party.identity, now=NOW).to_bytes()
    return prekeys.verify_bundle(data, now=NOW, expected=party.identity.peer_id)


def send(party: Party, text: bytes) -> bytes:
    assert party.session is not None
    party.session, data = session.encrypt(party.session, text)
    return data


def deliver(receiver: Party, sender: Party, data: bytes) -> session.Received:
    got = session.receive(
        receiver.identity,
        receiver.prekeys,
        receiver.session,
        data,
        sender=sender.identity.peer_id,
        now=NOW,
        rng=RNG,
    )
    receiver.session, receiver.prekeys = got.session, got.prekeys
    return got


def test_first_messages_reach_an_offline_peer_in_any_order() -> None:
    alice, bob = parties()
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)
    first = [send(alice, b"m%d" % i) for i in range(3)]
    assert all(data[0] == session.KIND_PREKEY for data in first)
    got = deliver(bob, alice, first[2])
    assert (got.plaintext, got.new_session) == (b"m2", True)
    assert deliver(bob, alice, first[0]).plaintext == b"m0"
    assert deliver(bob, alice, first[1]).new_session is False
    reply = send(bob, b"reply")
    assert reply[0] == session.KIND_NORMAL
    assert deliver(alice, bob, reply).plaintext == b"reply"
    assert alice.session is not None and alice.session.pending_init is None
    assert send(alice, b"now normal")[0] == session.KIND_NORMAL


def test_replayed_first_message_is_refused_after_restart() -> None:
    alice, bob = parties()
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)
    first = send(alice, b"hello")
    deliver(bob, alice, first)
    assert bob.session is not None
    restarted = Party(
        bob.identity,
        PrekeyState.from_bytes(bob.prekeys.to_bytes()),
        Session.from_bytes(bob.session.to_bytes()),
    )
    with pytest.raises(ReplayError):
        deliver(restarted, alice, first)
    restarted.session = None  # even with the session lost, the base key is remembered
    with pytest.raises(ReplayError):
        deliver(restarted, alice, first)


def test_forged_first_message_consumes_no_one_time_prekey() -> None:
    alice, bob = parties()
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)
    first = bytearray(send(alice, b"hello"))
    first[-1] ^= 1
    before = bob.prekeys
    with pytest.raises(CryptoError):
        deliver(bob, alice, bytes(first))
    assert bob.prekeys is before and bob.session is None
    first[-1] ^= 1
    assert deliver(bob, alice, bytes(first)).plaintext == b"hello"


def test_message_without_session_and_from_wrong_sender() -> None:
    alice, bob = parties()
    carol, _ = parties(seed=2)
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)
    first = send(alice, b"hello")
    with pytest.raises(RemoteProtocolError):
        deliver(bob, carol, first)  # the X3DH header names Alice, the envelope says Carol
    deliver(bob, alice, first)
    reply = send(bob, b"hi")
    deliver(alice, bob, reply)
    normal = send(alice, b"normal")
    with pytest.raises(RemoteProtocolError):
        deliver(bob, carol, normal)  # Bob's session is with Alice
    bob.session = None
    with pytest.raises(CryptoError) as info:
        deliver(bob, alice, normal)
    assert info.value.code == "session.unknown"


def test_simultaneous_start_converges_on_one_session() -> None:
    alice, bob = parties()
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)
    bob.session = session.start(bob.identity, bundle_of(alice), rng=RNG)
    from_alice, from_bob = send(alice, b"hi bob"), send(bob, b"hi alice")
    assert deliver(bob, alice, from_alice).plaintext == b"hi bob"
    assert deliver(alice, bob, from_bob).plaintext == b"hi alice"
    assert alice.session is not None and bob.session is not None
    assert alice.session.base_key == bob.session.base_key
    for i in range(3):
        assert deliver(bob, alice, send(alice, b"a%d" % i)).plaintext == b"a%d" % i
        assert deliver(alice, bob, send(bob, b"b%d" % i)).plaintext == b"b%d" % i


def test_a_peer_that_restarted_its_session_replaces_ours() -> None:
    alice, bob = parties()
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)
    deliver(bob, alice, send(alice, b"hello"))
    deliver(alice, bob, send(bob, b"hi"))
    old_base = bob.session.base_key if bob.session else b""
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)  # lost its state
    got = deliver(bob, alice, send(alice, b"again"))
    assert (got.plaintext, got.new_session) == (b"again", True)
    assert got.session.base_key != old_base
    assert deliver(alice, bob, send(bob, b"welcome back")).plaintext == b"welcome back"


def test_contact_key_change_is_an_event_never_silent() -> None:
    alice, bob = parties()
    carol, _ = parties(seed=3)
    own, old, new = alice.identity.peer_id, bob.identity.peer_id, carol.identity.peer_id
    assert session.check_contact_key(own, None, old) is None
    assert session.check_contact_key(own, old, old) is None
    event = session.check_contact_key(own, old, new)
    assert event is not None
    assert (event.old_key, event.new_key) == (old, new)
    assert event.old_safety_number == safety_number(own, old)
    assert event.new_safety_number == safety_number(own, new) != event.old_safety_number


def test_parse_refuses_garbage_and_oversize() -> None:
    for data in (b"", b"\x00", b"\x03abc", b"\x02" + bytes(10)):
        with pytest.raises(RemoteProtocolError):
            session.parse_message(data)
    with pytest.raises(LimitExceededError):
        session.parse_message(b"\x01" + bytes(session.MAX_WIRE_MESSAGE))
    alice, bob = parties()
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)
    with pytest.raises(LocalProtocolError):
        session.encrypt(alice.session, bytes(session.MAX_PLAINTEXT + 1))
    biggest = send(alice, bytes(session.MAX_PLAINTEXT))
    assert len(biggest) == session.MAX_WIRE_MESSAGE
    assert deliver(bob, alice, biggest).plaintext == bytes(session.MAX_PLAINTEXT)


def test_session_bytes_round_trip_and_repr_hides_keys() -> None:
    alice, bob = parties()
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)
    data = alice.session.to_bytes()
    assert Session.from_bytes(data) == alice.session
    assert alice.session.ratchet.root_key.hex() not in repr(alice.session)
    for cut in (0, 5, len(data) - 1):
        with pytest.raises(RemoteProtocolError):
            Session.from_bytes(data[:cut])


# ------------------------------------------------------------------ kill -9 around a send


@dataclass
class Disk:
    """What survives a kill -9: one atomic record (session bytes + outbox)."""

    session: bytes
    outbox: list[bytes] = field(default_factory=list)


@pytest.mark.parametrize("crash_at", ["after_encrypt", "after_store", "after_send"])
def test_persist_before_send_no_number_reuse_no_lost_message(crash_at: str) -> None:
    """The sender stores (new session, ciphertext in outbox) atomically, then sends. Whatever
    the crash point, the receiver never sees two ciphertexts with the same message number and
    every message whose send call returned (it was stored) is delivered after restart."""
    alice, bob = parties()
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)
    deliver(bob, alice, send(alice, b"hello"))
    deliver(alice, bob, send(bob, b"hi"))
    disk = Disk(alice.session.to_bytes())
    seen_numbers: dict[tuple[bytes, int], bytes] = {}
    accepted: list[bytes] = []
    network: list[bytes] = []

    def transmit(data: bytes) -> None:
        header = session.parse_message(data).ratchet_message[:40]
        key = (header[:32], int.from_bytes(header[36:40], "big"))
        assert seen_numbers.setdefault(key, data) == data, "message number reused"
        network.append(data)

    live = Session.from_bytes(disk.session)
    for i in range(4):
        text = b"msg %d" % i
        new, data = session.encrypt(live, text)
        if i == 2 and crash_at == "after_encrypt":
            break  # nothing stored, nothing sent: the send call never returned
        disk = Disk(new.to_bytes(), [*disk.outbox, data])
        accepted.append(text)
        if i == 2 and crash_at == "after_store":
            break
        transmit(data)
        live = new
        if i == 2 and crash_at == "after_send":
            break
        disk = Disk(disk.session, [])  # delivered: outbox row removed
    # restart: reload, re-send what the outbox holds, then carry on
    live = Session.from_bytes(disk.session)
    for data in disk.outbox:
        transmit(data)
    for i in range(4, 6):
        live, data = session.encrypt(live, b"msg %d" % i)
        accepted.append(b"msg %d" % i)
        transmit(data)
    delivered, replays = [], 0
    for data in network:
        try:
            delivered.append(deliver(bob, alice, data).plaintext)
        except ReplayError:
            replays += 1  # the re-send of a message that had left before the crash
    assert delivered == accepted
    assert replays == (1 if crash_at == "after_send" else 0)


@pytest.mark.parametrize("which", ["first", "second_first", "normal"])
def test_bit_flips_in_session_messages_are_rejected_without_state_change(which: str) -> None:
    """ "second_first": a prekey message for a session Bob already has; a flipped prekey id
    in its X3DH header once slipped through (found by the state machine)."""
    alice, bob = parties()
    alice.session = session.start(alice.identity, bundle_of(bob), rng=RNG)
    data = send(alice, b"x")
    if which == "second_first":
        deliver(bob, alice, data)
        data = send(alice, b"x")
    if which == "normal":
        deliver(bob, alice, data)
        deliver(alice, bob, send(bob, b"y"))
        data = send(alice, b"x")
    before = (bob.session, bob.prekeys)
    for bit in range(len(data) * 8):
        corrupted = bytearray(data)
        corrupted[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(PeerlineError):
            deliver(bob, alice, bytes(corrupted))
        assert (bob.session, bob.prekeys) == before
    assert deliver(bob, alice, data).plaintext == b"x"
