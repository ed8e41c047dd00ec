"""Import rules of DESIGN.md section 2, enforced on the source tree by reading its AST.

Scope: the shipped packages ``node/``, ``dht/``, ``rendezvous/``, ``cli/`` (not ``tests/``,
not ``bench/``, which may call libraries directly to measure their raw speed).

Rules:

(a) each third-party I/O or crypto library is imported only by its one adapter module
    (:data:`LIBRARY_OWNERS`);
(b) pure (L0) modules, listed as glob patterns in :data:`PURE_PATTERNS`, import none of
    :data:`IMPURE_STDLIB` and no project module that is not itself pure; that includes a
    package ``__init__`` (it may re-export orchestration), so import from the defining module.
    Add your module's path to :data:`PURE_PATTERNS` when you write a sans-I/O module;
(c) package direction: ``cli -> node, rendezvous``; ``rendezvous -> node``; ``node -> dht``;
    ``dht`` imports only :data:`DHT_MAY_IMPORT` from ``node`` (validators are passed in) and
    never ``rendezvous``/``cli``; ``node`` never imports ``rendezvous``/``cli``;
    ``rendezvous`` never imports ``cli``.

Every import form counts: ``import a.b``, ``from a import b`` (recorded as ``a.b``, since
``b`` may be a submodule or a re-export), relative imports (resolved against the importing
module's package), imports nested in functions or ``if`` blocks, and
``importlib.import_module("x")`` / ``__import__("x")`` with a literal name. The checker is
tested on synthetic trees too, so it cannot pass by finding nothing.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "dht", "rendezvous", "cli")

LIBRARY_OWNERS: dict[str, tuple[str, ...]] = {
    "nacl": ("node/crypto.py",),
    "msgpack": ("node/wire.py",),
    "aiosqlite": ("node/store.py",),
    "sqlite3": ("node/store.py",),
    "aioquic": ("node/transport.py",),
    "zeroconf": ("node/mdns.py",),
    "kademlia": ("dht/*",),
    "rpcudp": ("dht/*",),
    "umsgpack": ("dht/*",),
    "click": ("cli/*",),
    "prometheus_client": ("rendezvous/metrics.py",),
}

PURE_PATTERNS: tuple[str, ...] = (
    "node/errors.py",
    "node/crypto.py",
    "node/identity.py",
    "node/wire.py",
    "node/records.py",
    "node/session.py",
    "node/ratchet.py",
    "node/x3dh.py",
    "node/prekeys.py",
    "node/envelope.py",
    "node/auth.py",
    "node/feeds.py",
    "node/chunks.py",
    "node/merkle.py",
    "node/mailbox.py",
    "node/registry.py",
    "node/framing.py",
    "node/config.py",
    "node/backoff.py",
    "node/admission.py",
    "node/channel.py",
    "node/replication.py",
    "node/messaging.py",
    "node/invite.py",
)

IMPURE_STDLIB = (
    "asyncio",
    "socket",
    "sqlite3",
    "aiosqlite",
    "time",
    "random",
    "os",
    "threading",
    "subprocess",
    "selectors",
)

DHT_MAY_IMPORT = ("node.errors", "node.wire", "node.records", "node.identity", "node.crypto")

FORBIDDEN_PACKAGES: dict[str, tuple[str, ...]] = {
    "node": ("cli", "rendezvous"),
    "dht": ("cli", "rendezvous"),
    "rendezvous": ("cli",),
}


@dataclass(frozen=True)
class Import:
    """One imported name: ``target`` is a dotted module (or ``module.attribute``) path."""

    path: str
    line: int
    target: str


def _module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: str) -> str:
    module = _module_name(path)
    return module if path.endswith("__init__.py") else module.rpartition(".")[0]


def _resolve(path: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = _package_of(path).split(".")
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, module] if module else base)


def _literal_import(node: ast.Call) -> str | None:
    """``importlib.import_module("x")`` or ``__import__("x")`` with a literal name."""
    func = node.func
    named = (isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )
    if named and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


def imports_of(path: str, source: str) -> Iterator[Import]:
    """Every import in ``source`` (at any depth), as absolute dotted targets."""
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(path, node.module, node.level)
            for alias in node.names:
                yield Import(path, node.lineno, f"{base}.{alias.name}")
        elif isinstance(node, ast.Call) and (target := _literal_import(node)):
            yield Import(path, node.lineno, target)


def _within(target: str, module: str) -> bool:
    return target == module or target.startswith(module + ".")


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch(path, pattern) for pattern in patterns)


def _project_module(target: str, modules: Mapping[str, str]) -> str | None:
    """The path of the project module a target names (longest dotted prefix), if any."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        path = modules.get(".".join(parts[:end]))
        if path is not None:
            return path
    return None


def _library_rule(imp: Import) -> str | None:
    for library, owners in LIBRARY_OWNERS.items():
        if _within(imp.target, library) and not _matches(imp.path, owners):
            return f"{library} may only be imported by {', '.join(owners)}"
    return None


def _purity_rule(imp: Import, modules: Mapping[str, str]) -> str | None:
    if not _matches(imp.path, PURE_PATTERNS):
        return None
    for name in IMPURE_STDLIB:
        if _within(imp.target, name):
            return f"pure module imports {name}"
    imported = _project_module(imp.target, modules)
    if imported is not None and not _matches(imported, PURE_PATTERNS):
        return f"pure module imports non-pure {imported}"
    return None


def _package_rule(imp: Import) -> str | None:
    package = imp.path.split("/")[0]
    for forbidden in FORBIDDEN_PACKAGES.get(package, ()):
        if _within(imp.target, forbidden):
            return f"{package} must not import {forbidden}"
    allowed = any(_within(imp.target, module) for module in DHT_MAY_IMPORT)
    if package == "dht" and _within(imp.target, "node") and not allowed:
        return f"dht may import from node only {', '.join(DHT_MAY_IMPORT)}"
    return None


def violations(sources: Mapping[str, str]) -> list[str]:
    """All rule violations in a tree given as ``{"node/x.py": source}``, one line each."""
    modules = {_module_name(path): path for path in sources}
    found = []
    for path, source in sorted(sources.items()):
        for imp in imports_of(path, source):
            for problem in (_library_rule(imp), _purity_rule(imp, modules), _package_rule(imp)):
                if problem:
                    found.append(f"{imp.path}:{imp.line}: import {imp.target}: {problem}")
    return found


def project_sources() -> dict[str, str]:
    return {
        path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


# --- the real tree ---------------------------------------------------------------------------


def test_project_follows_layering() -> None:
    sources = project_sources()
    assert "node/crypto.py" in sources, "the checker must see the project"
    assert violations(sources) == []


def test_known_adapters_really_import_their_library() -> None:
    """Sanity: the checker sees the imports it is supposed to police."""
    targets = {
        imp.target for imp in imports_of("node/crypto.py", project_sources()["node/crypto.py"])
    }
    assert any(_within(target, "nacl") for target in targets)


# --- the checker itself, on synthetic trees ---------------------------------------------------

BAD_TREES = {
    "library in wrong module": {"node/wire.py": "import nacl.bindings\n"},
    "from-import of library": {"node/store.py": "from msgpack import packb\n"},
    "import inside function": {"node/node.py": "def f():\n    import aioquic.asyncio\n"},
    "sqlite3 outside store": {"rendezvous/server.py": "import sqlite3\n"},
    "click outside cli": {"node/node.py": "from click import echo\n"},
    "kademlia outside dht": {"node/dialer.py": "import kademlia.network\n"},
    "prometheus outside metrics": {"rendezvous/server.py": "import prometheus_client\n"},
    "dynamic import": {"node/node.py": "import importlib\nimportlib.import_module('zeroconf')\n"},
    "pure imports time": {"node/crypto.py": "import time\n"},
    "pure imports os.path": {"node/identity.py": "from os import path\n"},
    "pure imports asyncio in if": {"node/wire.py": "if True:\n    import asyncio\n"},
    "pure imports impure project module": {
        "node/wire.py": "from node.store import Store\n",
        "node/store.py": "",
    },
    "pure imports through package init": {
        "node/wire.py": "from node import Identity\n",
        "node/__init__.py": "from node.node import Node\n",
    },
    "pure relative import of impure module": {
        "node/records.py": "from .transport import Link\n",
        "node/transport.py": "",
    },
    "node imports cli": {"node/node.py": "from cli.main import main\n"},
    "node imports rendezvous relatively": {"node/sub/x.py": "from ...rendezvous import server\n"},
    "rendezvous imports cli": {"rendezvous/server.py": "import cli\n"},
    "dht imports orchestration": {"dht/network.py": "from node.node import Node\n"},
    "dht imports node facade": {"dht/network.py": "from node import Node\n"},
    "dht relative to node": {"dht/network.py": "from ..node import dialer\n"},
}


@pytest.mark.parametrize("tree", BAD_TREES.values(), ids=BAD_TREES.keys())
def test_checker_flags_violation(tree: dict[str, str]) -> None:
    assert len(violations(tree)) == 1


GOOD_TREE = {
    "node/crypto.py": "import hashlib\nimport nacl.bindings\nfrom node.errors import E\n",
    "node/errors.py": "from typing import ClassVar\n",
    "node/wire.py": "import msgpack\nfrom . import errors\nfrom .crypto import blake2b\n",
    "node/store.py": "import aiosqlite, sqlite3, asyncio, time\n",
    "node/transport.py": "from aioquic.asyncio import QuicConnectionProtocol\n",
    "node/node.py": "import asyncio\nfrom dht.network import Dht\nfrom node import store\n",
    "dht/network.py": "import kademlia.network\nfrom node.records import PeerRecord\n",
    "dht/storage.py": "from node import crypto\nfrom .network import Dht\n",
    "rendezvous/metrics.py": "import prometheus_client\nfrom node.node import Node\n",
    "cli/main.py": "import click\nfrom rendezvous.server import serve\nfrom node import node\n",
}


def test_checker_accepts_clean_tree() -> None:
    assert violations(GOOD_TREE) == []


def test_relative_imports_resolve() -> None:
    source = "from . import a\nfrom .b import c\nfrom .. import d\n"
    targets = [imp.target for imp in imports_of("node/sub/mod.py", source)]
    assert targets == ["node.sub.a", "node.sub.b.c", "node.d"]
    init_targets = [imp.target for imp in imports_of("node/__init__.py", "from .x import y\n")]
    assert init_targets == ["node.x.y"]
