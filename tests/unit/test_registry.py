"""Registry rules: presence TTLs and staleness, directory visibility and search, access modes."""

from __future__ import annotations

from node.mailbox import Refused
from node.registry import (
    HOUR,
    AccessMode,
    AccessRules,
    Admitted,
    Directory,
    DirectoryEntry,
    DirectoryLimits,
    EntryKind,
    Invite,
    Presence,
    PresenceEntry,
    PresenceLimits,
    invite_hash,
    normalize_name,
)

P1, P2, P3 = b"1" * 32, b"2" * 32, b"3" * 32
FAR = 1e12


def register(
    presence: Presence,
    peer: bytes,
    seq: int,
    ttl: float | None,
    now: float = 0.0,
    record_expires: float = FAR,
) -> PresenceEntry | Refused:
    return presence.register(
        peer,
        b"rec%d" % seq,
        seq=seq,
        record_expires=record_expires,
        observed=("127.0.0.1", 4000),
        ttl=ttl,
        now=now,
    )


def test_presence_ttl_default_cap_and_record_expiry() -> None:
    presence = Presence()
    entry = register(presence, P1, 1, None)
    assert isinstance(entry, PresenceEntry) and entry.expires_at == 2 * HOUR
    entry = register(presence, P1, 1, 1000 * HOUR)
    assert isinstance(entry, PresenceEntry) and entry.expires_at == 72 * HOUR
    entry = register(presence, P1, 1, None, record_expires=60.0)
    assert isinstance(entry, PresenceEntry) and entry.expires_at == 60.0
    assert presence.lookup(P1, 59.0) is not None
    presence.forget_observed(P1)
    presence.forget_observed(P2)  # unknown: nothing happens
    held = presence.lookup(P1, 59.0)
    assert held is not None and held.observed is None and held.record == b"rec1"
    assert presence.lookup(P1, 60.0) is None
    assert presence.handle_timer(70.0) == [P1]
    assert len(presence) == 0


def test_presence_refuses_stale_and_expired_and_oversized() -> None:
    presence = Presence(PresenceLimits(max_entries=1, max_record=10))
    register(presence, P1, 5, None)
    stale = register(presence, P1, 4, None)
    assert isinstance(stale, Refused) and stale.code == "presence.stale"
    assert isinstance(register(presence, P1, 5, None), PresenceEntry)  # refresh
    full = register(presence, P2, 1, None)
    assert isinstance(full, Refused) and full.code == "presence.full"
    expired = register(presence, P1, 6, None, now=10.0, record_expires=10.0)
    assert isinstance(expired, Refused) and expired.code == "presence.expired"
    big = presence.register(
        P1, b"x" * 11, seq=9, record_expires=FAR, observed=None, ttl=None, now=0
    )
    assert isinstance(big, Refused) and big.code == "presence.too_large"


def test_refresh_keeps_entry_alive_past_old_expiry() -> None:
    presence = Presence(PresenceLimits(default_ttl=10.0))
    register(presence, P1, 1, None, now=0.0)
    register(presence, P1, 2, None, now=8.0)
    assert presence.handle_timer(12.0) == []
    assert presence.lookup(P1, 12.0) is not None


def publish(
    directory: Directory,
    owner: bytes,
    kind: EntryKind,
    entry_id: bytes,
    name: str,
    listed: bool = True,
    now: float = 0.0,
) -> DirectoryEntry | Refused | None:
    return directory.publish(
        owner, kind, entry_id, name=name, description="d", listed=listed, ttl=None, now=now
    )


def test_directory_lists_open_accounts_and_groups_searchable_by_name() -> None:
    directory = Directory()
    publish(directory, P1, EntryKind.ACCOUNT, P1, "Zoë Martin")
    publish(directory, P2, EntryKind.GROUP, b"g" * 32, "Town Choir")
    assert [e.name for e in directory.search("zoe", 0, 10)] == ["Zoë Martin"]
    assert [e.name for e in directory.search("  TOWN  ", 0, 10)] == ["Town Choir"]
    assert len(directory.search("", 0, 10)) == 2
    # Going closed withdraws the account at once.
    assert publish(directory, P1, EntryKind.ACCOUNT, P1, "Zoë Martin", listed=False) is None
    assert [e.name for e in directory.search("", 0, 10)] == ["Town Choir"]


def test_directory_ownership_expiry_and_caps() -> None:
    directory = Directory(DirectoryLimits(default_ttl=10.0, max_groups_per_owner=1))
    forged = publish(directory, P2, EntryKind.ACCOUNT, P1, "not me")
    assert isinstance(forged, Refused) and forged.code == "directory.not_owner"
    publish(directory, P1, EntryKind.GROUP, b"g" * 32, "G")
    taken = publish(directory, P2, EntryKind.GROUP, b"g" * 32, "mine now")
    assert isinstance(taken, Refused) and taken.code == "directory.not_owner"
    many = publish(directory, P1, EntryKind.GROUP, b"h" * 32, "H")
    assert isinstance(many, Refused) and many.code == "directory.too_many"
    nameless = publish(directory, P3, EntryKind.ACCOUNT, P3, "   ")
    assert isinstance(nameless, Refused) and nameless.code == "directory.bad_name"
    assert directory.search("", 9.9, 10) != []
    assert directory.search("", 10.0, 10) == []
    directory.handle_timer(10.0)
    assert len(directory) == 0
    publish(directory, P1, EntryKind.ACCOUNT, P1, "x")
    directory.remove_owner(P1)
    assert len(directory) == 0


def test_normalize_name() -> None:
    assert normalize_name("  Ångström\tLab ") == "angstrom lab"


def test_open_mode_admits_all_but_banned() -> None:
    rules = AccessRules(AccessMode.OPEN, banned={P2})
    assert isinstance(rules.admit(P1, None, 0), Admitted)
    banned = rules.admit(P2, None, 0)
    assert isinstance(banned, Refused) and banned.code == "access.banned"
    assert rules.revoked([P1, P2]) == [P2]


def test_allowlist_mode() -> None:
    rules = AccessRules(AccessMode.ALLOWLIST, allowed={P1})
    assert isinstance(rules.admit(P1, None, 0), Admitted)
    refused = rules.admit(P2, b"token", 0)
    assert isinstance(refused, Refused) and refused.code == "access.not_allowed"
    rules.banned.add(P1)
    assert rules.revoked([P1]) == [P1]


def test_invite_tokens_count_uses_and_expire() -> None:
    token = b"t" * 16
    rules = AccessRules(AccessMode.INVITE)
    rules.invites[invite_hash(token)] = Invite(invite_hash(token), 1, 100.0)
    assert rules.admit(P1, None, 0).code == "access.invite_required"  # type: ignore[union-attr]
    assert rules.admit(P1, b"wrong", 0).code == "access.invite_invalid"  # type: ignore[union-attr]
    admitted = rules.admit(P1, token, 0)
    assert isinstance(admitted, Admitted) and admitted.invite is not None
    assert admitted.invite.uses_left == 0
    # Known now: no token needed any more.
    assert isinstance(rules.admit(P1, None, 1), Admitted)
    used = rules.admit(P2, token, 1)
    assert isinstance(used, Refused) and used.code == "access.invite_used_up"
    rules.invites[invite_hash(token)] = Invite(invite_hash(token), 5, 100.0)
    expired = rules.admit(P2, token, 100.0)
    assert isinstance(expired, Refused) and expired.code == "access.invite_expired"
    assert rules.revoked([P1, P2]) == [P2]


def test_expiry_heaps_stay_bounded_under_refresh_churn() -> None:
    presence = Presence()
    directory = Directory()
    for i in range(5000):
        register(presence, P1, 1, None, now=float(i))
        publish(directory, P1, EntryKind.ACCOUNT, P1, "x", now=float(i))
    assert len(presence._expiry) <= 2 * len(presence) + 64
    assert len(directory._expiry) <= 2 * len(directory) + 64
    # Rebuilding keeps the live expiry: nothing is dropped early, nothing kept late.
    assert presence.handle_timer(4999 + 2 * HOUR - 1) == []
    assert presence.handle_timer(4999 + 2 * HOUR) == [P1]


def test_group_cap_is_released_by_withdrawal_and_expiry() -> None:
    directory = Directory(DirectoryLimits(default_ttl=10.0, max_groups_per_owner=1))
    assert isinstance(publish(directory, P1, EntryKind.GROUP, b"g" * 32, "G"), DirectoryEntry)
    assert publish(directory, P1, EntryKind.GROUP, b"g" * 32, "G", listed=False) is None
    assert isinstance(publish(directory, P1, EntryKind.GROUP, b"h" * 32, "H"), DirectoryEntry)
    assert isinstance(publish(directory, P1, EntryKind.GROUP, b"h" * 32, "H2"), DirectoryEntry)
    directory.handle_timer(10.0)
    assert isinstance(
        publish(directory, P1, EntryKind.GROUP, b"i" * 32, "I", now=10.0), DirectoryEntry
    )
    refused = publish(directory, P1, EntryKind.GROUP, b"j" * 32, "J", now=10.0)
    assert isinstance(refused, Refused) and refused.code == "directory.too_many"
