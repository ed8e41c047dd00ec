"""The migration list is pure data with the shape node.store relies on."""

from __future__ import annotations

import re

from node.schema import MIGRATIONS


def test_migrations_are_a_non_empty_tuple_of_scripts() -> None:
    assert isinstance(MIGRATIONS, tuple)
    assert MIGRATIONS
    assert all(isinstance(script, str) and script.strip() for script in MIGRATIONS)


def test_scripts_leave_transactions_and_versions_to_the_store() -> None:
    forbidden = re.compile(
        r"\b(BEGIN\s*;|BEGIN\s+(IMMEDIATE|EXCLUSIVE|DEFERRED)|COMMIT|ROLLBACK|user_version)\b", re.I
    )
    for script in MIGRATIONS:
        assert not forbidden.search(script), script[:80]


def test_v1_declares_the_tables_the_node_needs() -> None:
    created = set(re.findall(r"CREATE (?:VIRTUAL )?TABLE (\w+)", MIGRATIONS[0]))
    assert created == {
        "identity",
        "contacts",
        "conversations",
        "messages",
        "outbox",
        "messages_fts",
    }
