"""The README Performance generator: replaces only its own section, idempotently."""

from __future__ import annotations

from bench.readme import END, START, rewrite, section

RESULTS = {
    "machine": {
        "date": "2026-11-22T05:00:00+00:00",
        "cpu": "cpu",
        "cores": 2,
        "implementation": "CPython",
        "python": "3.11.7",
        "platform": "Linux",
    },
    "rows": [
        {
            "name": "x",
            "value": 2.0,
            "unit": "op/s",
            "ceiling": 4.0,
            "ceiling_name": "raw",
            "ratio": 0.5,
            "target": 3.0,
            "ok": "MISS",
        }
    ],
}


def test_rewrite_replaces_only_the_section() -> None:
    readme = f"# title\n\n{START}\nold\n{END}\n\n## Next\n"
    once = rewrite(readme, section(RESULTS))
    assert once.startswith("# title\n") and once.endswith("\n\n## Next\n")
    assert "| x | 2.00 | op/s |" in once or "| x | 2 | op/s |" in once
    assert "**no**" in once and "old" not in once
    assert rewrite(once, section(RESULTS)) == once
