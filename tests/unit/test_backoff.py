"""Reconnect backoff, handshake token buckets and connection admission (pure)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.admission import Admission
from node.backoff import Backoff, TokenBuckets
from node.config import TransportConfig
from node.errors import ConfigError


def _rng(byte: int) -> Callable[[int], bytes]:
    return lambda n: bytes([byte]) * n


def test_exponential_sequence_without_jitter_saturates_at_maximum() -> None:
    policy = Backoff(initial=0.1, maximum=1.0, factor=2.0, jitter=0.0)
    assert [policy.delay(i, _rng(0xFF)) for i in range(6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert policy.base(10_000) == 1.0  # no float overflow for huge attempt numbers


def test_jitter_spans_the_configured_fraction() -> None:
    policy = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.5)
    assert policy.delay(2, _rng(0x00)) == pytest.approx(4.0)  # u = 0: the full base
    assert policy.delay(2, _rng(0xFF)) == pytest.approx(2.0, rel=1e-6)  # u ~ 1: half


@given(st.integers(0, 200), st.binary(min_size=7, max_size=7), st.floats(0, 1))
def test_delays_stay_within_bounds(attempt: int, noise: bytes, jitter: float) -> None:
    policy = Backoff(initial=0.2, maximum=30.0, factor=2.0, jitter=jitter)
    delay = policy.delay(attempt, lambda n: noise[:n])
    assert policy.initial * (1 - jitter) - 1e-9 <= delay <= policy.maximum


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"initial": 2.0, "maximum": 1.0},
        {"factor": 0.5},
        {"jitter": 1.5},
    ],
)
def test_invalid_policies_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kwargs)


def test_negative_attempt_is_refused() -> None:
    with pytest.raises(ConfigError):
        Backoff().base(-1)


def test_token_bucket_allows_burst_then_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=10)
    assert [buckets.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.allow("b", 0.0)  # other keys are independent
    assert not buckets.allow("a", 0.2)
    assert buckets.allow("a", 0.5)  # one token refilled after 0.5 s at 2/s
    assert not buckets.allow("a", 0.5)


def test_token_bucket_table_is_bounded() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=3)
    for i in range(100):
        buckets.allow(str(i), 0.0)
    assert len(buckets) == 3


def test_token_bucket_refuses_bad_parameters() -> None:
    with pytest.raises(ConfigError):
        TokenBuckets(rate=0.0, burst=1, max_keys=1)


def test_admission_counts_connections_and_rate_limits_inbound_handshakes() -> None:
    config = TransportConfig(
        max_connections=3,
        max_connections_per_ip=2,
        max_handshakes_per_second_per_ip=1.0,
        handshake_burst=2,
    )
    admission = Admission(config)
    assert admission.refusal("10.0.0.1", inbound=True, now=0.0) is None
    admission.add("10.0.0.1")
    assert admission.refusal("10.0.0.1", inbound=True, now=0.0) is None
    admission.add("10.0.0.1")
    refusal = admission.refusal("10.0.0.1", inbound=False, now=0.0)
    assert refusal is not None and refusal.startswith("limit.connections_per_ip")
    admission.remove("10.0.0.1")
    refusal = admission.refusal("10.0.0.1", inbound=True, now=0.0)  # burst of 2 used up
    assert refusal is not None and refusal.startswith("limit.handshake_rate")
    assert admission.refusal("10.0.0.1", inbound=False, now=0.0) is None  # dialing: no bucket
    admission.add("10.0.0.2")
    admission.add("10.0.0.3")
    refusal = admission.refusal("10.0.0.4", inbound=True, now=5.0)
    assert refusal is not None and refusal.startswith("limit.connections:")
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        admission.remove(ip)
    assert len(admission) == 0 and admission.tracked_ips() == 0
