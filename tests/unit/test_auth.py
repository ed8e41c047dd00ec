"""Peer authentication machines as pairs over links that drop, reorder and duplicate frames."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from node import wire
from node.auth import (
    AUTH_DOMAIN,
    CHALLENGE_SIZE,
    AuthChallenge,
    Authenticated,
    AuthEvent,
    AuthFailed,
    AuthOk,
    AuthProof,
    DialerAuth,
    ListenerAuth,
    proof_message,
)
from node.crypto import SigningKey
from node.identity import Identity, PeerId

TIMEOUT = 5.0


def _identity(n: int) -> Identity:
    return Identity(SigningKey(bytes([n]) * 32))


DIALER, LISTENER, OTHER = _identity(1), _identity(2), _identity(3)


def _listener(now: float = 0.0, seed: int = 0) -> ListenerAuth:
    return ListenerAuth(LISTENER, now=now, timeout=TIMEOUT, rng=lambda n: bytes([seed]) * n)


def _dialer(expected: PeerId = LISTENER.peer_id, identity: Identity = DIALER) -> DialerAuth:
    return DialerAuth(identity, expected, now=0.0, timeout=TIMEOUT)


def _events(machine: DialerAuth | ListenerAuth) -> list[AuthEvent]:
    events = []
    while (event := machine.next_event()) is not None:
        events.append(event)
    return events


def _codes(events: list[AuthEvent]) -> list[str]:
    return [e.error.code for e in events if isinstance(e, AuthFailed)]


def test_honest_pair_authenticates_both_ways() -> None:
    listener, dialer = _listener(), _dialer()
    dialer.certificate_received(LISTENER.peer_id.key, 0.1)
    for frame in listener.frames_to_send():
        dialer.receive_frame(frame, 0.2)
    proof = dialer.frames_to_send()
    assert [type(f) for f in proof] == [AuthProof]
    listener.receive_frame(proof[0], 0.3)
    assert _events(listener) == [Authenticated(DIALER.peer_id)]
    for frame in listener.frames_to_send():
        dialer.receive_frame(frame, 0.4)
    assert _events(dialer) == [Authenticated(LISTENER.peer_id)]
    assert dialer.get_timer() is None and listener.get_timer() is None


def test_pin_mismatch_fails_before_any_proof_is_sent() -> None:
    dialer = _dialer()
    dialer.receive_frame(AuthChallenge(bytes(CHALLENGE_SIZE)), 0.0)
    dialer.certificate_received(OTHER.peer_id.key, 0.1)
    assert _codes(_events(dialer)) == ["auth.pin_mismatch"]
    assert dialer.frames_to_send() == []
    dialer.certificate_received(None, 0.2)  # terminal: later inputs change nothing
    assert _events(dialer) == []


def test_missing_certificate_key_is_a_mismatch() -> None:
    dialer = _dialer()
    dialer.certificate_received(None, 0.0)
    assert _codes(_events(dialer)) == ["auth.pin_mismatch"]


def test_listener_refuses_anything_but_a_proof_first() -> None:
    listener = _listener()
    listener.receive_frame(AuthOk(), 0.1)
    assert _codes(_events(listener)) == ["auth.unexpected_frame"]
    assert listener.peer is None


def _valid_proof(signer: Identity, listener: PeerId, challenge: bytes) -> AuthProof:
    signature = signer.sign(AUTH_DOMAIN, proof_message(listener, challenge, signer.peer_id))
    return AuthProof(signer.peer_id.key, signature)


def test_replayed_proof_from_another_connection_fails() -> None:
    first, second = _listener(seed=1), _listener(seed=2)
    challenge = first.frames_to_send()[0]
    assert isinstance(challenge, AuthChallenge)
    proof = _valid_proof(DIALER, LISTENER.peer_id, challenge.nonce)
    first.receive_frame(proof, 0.1)
    assert _events(first) == [Authenticated(DIALER.peer_id)]
    second.receive_frame(proof, 0.1)
    assert _codes(_events(second)) == ["auth.bad_proof"]


def test_proof_for_another_listener_fails() -> None:
    listener = _listener()
    challenge = listener.frames_to_send()[0]
    assert isinstance(challenge, AuthChallenge)
    listener.receive_frame(_valid_proof(DIALER, OTHER.peer_id, challenge.nonce), 0.1)
    assert _codes(_events(listener)) == ["auth.bad_proof"]


def test_proof_with_another_domain_or_claimed_key_fails() -> None:
    listener = _listener()
    nonce = bytes(CHALLENGE_SIZE)  # the seed-0 challenge
    message = proof_message(LISTENER.peer_id, nonce, DIALER.peer_id)
    wrong_domain = DIALER.sign("peerline/other/v1", message)
    listener.receive_frame(AuthProof(DIALER.peer_id.key, wrong_domain), 0.1)
    assert _codes(_events(listener)) == ["auth.bad_proof"]
    claimed = _listener()
    stolen = _valid_proof(DIALER, LISTENER.peer_id, nonce)
    claimed.receive_frame(AuthProof(OTHER.peer_id.key, stolen.signature), 0.1)
    assert _codes(_events(claimed)) == ["auth.bad_proof"]


def test_listener_refuses_its_own_identity() -> None:
    listener = _listener()
    listener.receive_frame(_valid_proof(LISTENER, LISTENER.peer_id, bytes(CHALLENGE_SIZE)), 0.1)
    assert _codes(_events(listener)) == ["auth.self"]


def test_changed_challenge_fails_the_dialer() -> None:
    dialer = _dialer()
    dialer.receive_frame(AuthChallenge(bytes(32)), 0.0)
    dialer.receive_frame(AuthChallenge(bytes(32)), 0.0)  # exact duplicate: ignored
    assert _events(dialer) == []
    dialer.receive_frame(AuthChallenge(b"\x01" * 32), 0.0)
    assert _codes(_events(dialer)) == ["auth.bad_challenge"]


def test_timeouts_fail_both_sides() -> None:
    listener, dialer = _listener(), _dialer()
    assert listener.get_timer() == TIMEOUT and dialer.get_timer() == TIMEOUT
    listener.handle_timer(TIMEOUT - 0.01)
    assert _events(listener) == []
    listener.handle_timer(TIMEOUT)
    dialer.handle_timer(TIMEOUT)
    assert _codes(_events(listener)) == ["auth.timeout"]
    assert _codes(_events(dialer)) == ["auth.timeout"]
    late = _valid_proof(DIALER, LISTENER.peer_id, bytes(CHALLENGE_SIZE))
    listener.receive_frame(late, TIMEOUT + 1)
    assert listener.peer is None and _events(listener) == []


def test_late_proof_is_refused_by_deadline_not_by_timer_call() -> None:
    listener = _listener()
    listener.receive_frame(_valid_proof(DIALER, LISTENER.peer_id, bytes(32)), TIMEOUT + 0.1)
    assert _codes(_events(listener)) == ["auth.timeout"]


# --------------------------------------------------------------------------- link properties


@dataclass
class _Net:
    """Frames in flight both ways; the test schedule decides what happens to each."""

    to_dialer: list[wire.Message] = field(default_factory=list)
    to_listener: list[wire.Message] = field(default_factory=list)
    dropped: int = 0


def _pump(net: _Net, dialer: DialerAuth, listener: ListenerAuth) -> None:
    net.to_dialer.extend(listener.frames_to_send())
    net.to_listener.extend(dialer.frames_to_send())


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["deliver", "duplicate", "drop", "tick"]),
        st.booleans(),  # direction: to the dialer?
        st.integers(0, 7),  # which in-flight frame (reordering)
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(ACTIONS, st.booleans())
def test_lossy_links_never_authenticate_wrongly_or_crash(
    actions: list[tuple[str, bool, int]], pin_right: bool
) -> None:
    listener, dialer = _listener(seed=7), _dialer()
    net, now = _Net(), 0.0
    dialer.certificate_received((LISTENER if pin_right else OTHER).peer_id.key, now)
    _pump(net, dialer, listener)
    events: dict[str, list[AuthEvent]] = {"dialer": [], "listener": []}
    for action, to_dialer, index in actions:
        queue = net.to_dialer if to_dialer else net.to_listener
        if action == "tick":
            now += 1.0
            dialer.handle_timer(now)
            listener.handle_timer(now)
        elif queue:
            frame = queue[index % len(queue)]
            if action != "duplicate":
                queue.remove(frame)
            if action == "drop":
                net.dropped += 1
            elif to_dialer:
                dialer.receive_frame(frame, now)
            else:
                listener.receive_frame(frame, now)
        _pump(net, dialer, listener)
        events["dialer"] += _events(dialer)
        events["listener"] += _events(listener)
    # Deliver what is left, then let every deadline pass: both machines must end.
    while net.to_dialer or net.to_listener:
        for frame in net.to_listener[:]:
            net.to_listener.remove(frame)
            listener.receive_frame(frame, now)
        for frame in net.to_dialer[:]:
            net.to_dialer.remove(frame)
            dialer.receive_frame(frame, now)
        _pump(net, dialer, listener)
    dialer.handle_timer(now + TIMEOUT)
    listener.handle_timer(now + TIMEOUT)
    events["dialer"] += _events(dialer)
    events["listener"] += _events(listener)
    assert dialer.done and listener.done
    assert len(events["dialer"]) == 1 and len(events["listener"]) == 1
    for event in events["listener"]:
        if isinstance(event, Authenticated):
            assert event.peer == DIALER.peer_id and pin_right
    for event in events["dialer"]:
        if isinstance(event, Authenticated):
            assert event.peer == LISTENER.peer_id and pin_right
            assert listener.peer == DIALER.peer_id
    if not pin_right:
        assert _codes(events["dialer"]) == ["auth.pin_mismatch"]
    elif net.dropped == 0 and now < TIMEOUT:  # reordered and duplicated, but all delivered
        assert events["dialer"] == [Authenticated(LISTENER.peer_id)]
        assert events["listener"] == [Authenticated(DIALER.peer_id)]


FRAMES = st.one_of(
    st.builds(AuthChallenge, st.binary(min_size=32, max_size=32)),
    st.builds(
        AuthProof,
        st.sampled_from([DIALER.peer_id.key, OTHER.peer_id.key, LISTENER.peer_id.key]),
        st.binary(min_size=64, max_size=64),
    ),
    st.just(AuthOk()),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAMES, max_size=12), st.lists(FRAMES, max_size=12))
def test_forged_frames_never_authenticate(
    to_listener: list[wire.Message], to_dialer: list[wire.Message]
) -> None:
    """An attacker without the dialer's key (random signatures) never gets accepted."""
    listener = _listener(seed=9)
    for frame in to_listener:
        listener.receive_frame(frame, 0.5)
    assert listener.peer is None
    assert all(isinstance(e, AuthFailed) for e in _events(listener))
    dialer = _dialer()
    for frame in to_dialer:
        dialer.receive_frame(frame, 0.5)
    assert dialer.peer is None  # no pin yet: AuthOk alone never authenticates
