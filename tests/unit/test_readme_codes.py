"""Every stable error code raised in the source is documented in README's Protocol section.

Codes are part of the protocol contract (scripts match on them), so a code added without
documentation fails here. The scan reads the AST: ``code="x.y"`` keywords, ``default_code``
class attributes, and dotted string literals passed to an ``...Error(...)`` constructor or
returned by a ``_...`` error helper.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE.match(node.value):
        return node.value
    return None


def codes_in(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "code":
            code = _dotted(node.value)
            if code:
                found.add(code)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            code = _dotted(node.value) if node.value is not None else None
            if code and "default_code" in names:
                found.add(code)
    return found


def project_codes() -> set[str]:
    codes: set[str] = set()
    for package in ("node", "dht", "rendezvous", "cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            codes |= codes_in(path.read_text())
    return codes


def test_scanner_finds_codes() -> None:
    sample = 'class E(X):\n    default_code = "a.b"\nraise E("m", code="c.d")\n'
    assert codes_in(sample) == {"a.b", "c.d"}


def test_every_error_code_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(code for code in project_codes() if f"`{code}`" not in readme)
    assert not missing, f"error codes missing from README (write them as `code`): {missing}"
