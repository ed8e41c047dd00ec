"""The benchmark table code on fake rows: verdicts, ratios, alignment, JSON. No timing here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import available_modules, main
from bench.table import (
    Row,
    format_number,
    format_table,
    machine_info,
    ratio,
    verdict,
    write_results,
)


def _row(value: float, **extra: object) -> Row:
    row: Row = {
        "name": "fake.op",
        "value": value,
        "unit": "ops/s",
        "ceiling": None,
        "ceiling_name": None,
        "target": None,
    }
    row.update(extra)  # type: ignore[typeddict-item]
    return row


ROWS = [
    _row(48_000.0, ceiling=50_000.0, ceiling_name="raw", target=40_000.0),
    _row(0.42, name="fake.rtt_p50", unit="ms", target=0.5, higher_is_better=False),
    _row(0.9, name="fake.rtt_p99", unit="ms", target=0.7, higher_is_better=False),
    _row(1_234_567.0, name="fake.a_much_longer_name", ceiling=2_000_000.0, target=1_500_000.0),
    _row(12.5, name="fake.no_target", unit="MB/s"),
]


def test_ratio_and_verdict() -> None:
    assert ratio(ROWS[0]) == pytest.approx(0.96)
    assert ratio(ROWS[1]) is None
    assert [verdict(row) for row in ROWS] == ["ok", "ok", "MISS", "MISS", "-"]


def test_format_number() -> None:
    assert format_number(None) == "-"
    assert format_number(48_213.4) == "48,213"
    assert format_number(812.44) == "812.4"
    assert format_number(0.4212) == "0.421"
    assert format_number(-1500.0) == "-1,500"


def test_table_is_aligned() -> None:
    lines = format_table(ROWS).splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert lines[0].split(" | ")[:3] == ["name                   ", "    value", "unit "]
    assert set(lines[1]) <= {"-", "+"}
    separators = {tuple(i for i, ch in enumerate(line) if ch == "|") for line in lines[2:]}
    assert separators == {tuple(i for i, ch in enumerate(lines[0]) if ch == "|")}
    assert "1,234,567" in lines[5] and "MISS" in lines[5]
    assert lines[6].rstrip().endswith("-")


def test_empty_table_has_header() -> None:
    assert format_table([]).splitlines()[0].startswith("name | value | unit")


def test_results_json(tmp_path: Path) -> None:
    machine = machine_info()
    assert {"cpu", "cores", "python", "platform", "date"} <= machine.keys()
    path = tmp_path / "results.json"
    write_results(path, ROWS, machine)
    data = json.loads(path.read_text())
    assert data["machine"] == machine
    assert [row["ok"] for row in data["rows"]] == ["ok", "ok", "MISS", "MISS", "-"]
    assert data["rows"][0]["ratio"] == pytest.approx(0.96)
    assert data["rows"][4]["ratio"] is None


def test_harness_lists_existing_modules_only() -> None:
    assert "bench.crypto" in available_modules()


def test_unknown_module_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--only", "no-such-benchmark"])
    assert exited.value.code == 2
    assert "available: crypto" in capsys.readouterr().err
