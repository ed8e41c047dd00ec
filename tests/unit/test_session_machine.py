"""Hypothesis state machine: two parties, random sends both ways over a link that drops,
reorders, duplicates and corrupts, with restarts (state reloaded from its serialized bytes).

Invariants: every message delivered decrypts exactly once to its plaintext (a second delivery
is a ReplayError), a corrupted copy is refused with one of our errors and changes no state, and
nothing ever raises anything but a PeerlineError.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from node import prekeys, session
from node.errors import PeerlineError, ReplayError
from node.identity import Identity
from node.prekeys import PrekeyState
from node.session import Session

NOW = 1_700_000_000.0
NAMES = ("alice", "bob")


@dataclass
class Party:
    identity: Identity
    prekeys: PrekeyState
    session: Session | None = None

    def reload(self) -> None:
        self.prekeys = PrekeyState.from_bytes(self.prekeys.to_bytes())
        if self.session is not None:
            self.session = Session.from_bytes(self.session.to_bytes())


@dataclass(frozen=True)
class InFlight:
    number: int
    sender: str
    data: bytes


class TwoParties(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random(0).randbytes
        self.parties: dict[str, Party] = {}
        self.network: list[InFlight] = []
        self.sent: dict[int, bytes] = {}
        self.delivered: set[int] = set()
        self.now = NOW

    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed: int) -> None:
        self.rng = random.Random(seed).randbytes
        for name in NAMES:
            identity = Identity.generate(self.rng)
            state = prekeys.generate(identity, now=NOW, rng=self.rng)
            self.parties[name] = Party(identity, state)
        bob = self.parties["bob"]
        data = prekeys.make_bundle(bob.prekeys, bob.identity, now=NOW).to_bytes()
        bundle = prekeys.verify_bundle(data, now=NOW, expected=bob.identity.peer_id)
        self.parties["alice"].session = session.start(
            self.parties["alice"].identity, bundle, rng=self.rng
        )

    def can_send(self, name: str) -> bool:
        party = self.parties[name]
        return party.session is not None and party.session.ratchet.cks is not None

    @rule(sender=st.sampled_from(NAMES), size=st.integers(0, 300))
    def send(self, sender: str, size: int) -> None:
        if not self.can_send(sender):
            sender = "alice"  # Alice (the initiator) can always send; Bob only once reached
        party = self.parties[sender]
        assert party.session is not None
        number = len(self.sent)
        text = b"%s:%d:" % (sender.encode(), number) + bytes(size)
        party.session, data = session.encrypt(party.session, text)
        self.sent[number] = text
        self.network.append(InFlight(number, sender, data))

    def _receive(self, item: InFlight, data: bytes) -> session.Received:
        receiver = self.parties["bob" if item.sender == "alice" else "alice"]
        return session.receive(
            receiver.identity,
            receiver.prekeys,
            receiver.session,
            data,
            sender=self.parties[item.sender].identity.peer_id,
            now=self.now,
            rng=self.rng,
        )

    @precondition(lambda self: bool(self.network))
    @rule(pick=st.integers(0, 10**6), keep_copy=st.booleans())
    def deliver(self, pick: int, keep_copy: bool) -> None:
        item = self.network[pick % len(self.network)]
        if not keep_copy:
            self.network.remove(item)
        receiver = self.parties["bob" if item.sender == "alice" else "alice"]
        if item.number in self.delivered:
            with pytest.raises(ReplayError):
                self._receive(item, item.data)
            event("duplicate refused")
            return
        got = self._receive(item, item.data)
        assert got.plaintext == self.sent[item.number]
        self.delivered.add(item.number)
        event("new session" if got.new_session else "delivered")
        receiver.session, receiver.prekeys = got.session, got.prekeys

    @precondition(lambda self: bool(self.network))
    @rule(pick=st.integers(0, 10**6))
    def drop(self, pick: int) -> None:
        self.network.pop(pick % len(self.network))

    @precondition(lambda self: bool(self.network))
    @rule(pick=st.integers(0, 10**6), bit=st.integers(0, 10**6))
    def corrupt(self, pick: int, bit: int) -> None:
        item = self.network[pick % len(self.network)]
        data = bytearray(item.data)
        bit %= len(data) * 8
        data[bit // 8] ^= 1 << (bit % 8)
        receiver = self.parties["bob" if item.sender == "alice" else "alice"]
        before = (receiver.session, receiver.prekeys)
        with pytest.raises(PeerlineError):
            self._receive(item, bytes(data))
        assert (receiver.session, receiver.prekeys) == before

    @rule(name=st.sampled_from(NAMES))
    def restart(self, name: str) -> None:
        self.parties[name].reload()

    @rule(seconds=st.floats(0, 3600))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def nothing_delivered_that_was_not_sent(self) -> None:
        assert self.delivered <= set(self.sent)


TwoParties.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_two_parties = TwoParties.TestCase
