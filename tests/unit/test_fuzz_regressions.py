"""Replays the stored fuzz corpus and every saved crasher, plus a short campaign per target."""

from __future__ import annotations

import pytest

from tests.fuzz.__main__ import campaign, is_expected, load_inputs
from tests.fuzz.targets import TARGETS


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_stored_inputs_never_crash(name: str) -> None:
    for data in load_inputs("corpus", name) + load_inputs("crashers", name):
        try:
            TARGETS[name].run(data)
        except Exception as exc:
            assert is_expected(exc, TARGETS[name].faults), f"{name}: {type(exc).__name__}: {exc}"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_campaign_has_no_crash(name: str) -> None:
    assert campaign(TARGETS[name], 3_000, seed=7)["crashes"] == 0
