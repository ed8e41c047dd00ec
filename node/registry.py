"""Rendezvous registry rules (pure): presence, directory and access control.

Three independent tables a rendezvous server keeps in memory; time is passed in as ``now``.

- :class:`Presence`: one registration per peer (a signed PeerRecord, already validated by the
  caller with :func:`node.records.validate`) plus the address the server observed. TTL defaults
  to :attr:`PresenceLimits.default_ttl` (2 h), is clamped to ``max_ttl`` (72 h) and never
  outlives the record's own expiry. A lower ``seq`` than the one held is refused (stale); the
  table holds at most ``max_entries`` peers.
- :class:`Directory`: entries published by their owner: the owner's account (only when its
  visibility is ``open``; publishing ``closed`` removes it) and public groups (at most
  ``max_groups_per_owner``). Entries expire unless refreshed. Search is by a case- and
  accent-insensitive substring of the name.
- :class:`AccessRules`: the server's mode (``open``, ``invite``, ``allowlist``), bans, the
  allowlist, invite tokens (stored by hash, with uses and expiry) and the peers an invite has
  made known. :meth:`AccessRules.admit` decides whether a peer may use the server.

Refusals are :class:`node.mailbox.Refused` values with stable codes (README Protocol section).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from node.crypto import blake2b
from node.mailbox import ExpiryHeap, Refused

__all__ = [
    "AccessMode",
    "AccessRules",
    "Admitted",
    "Directory",
    "DirectoryEntry",
    "DirectoryLimits",
    "EntryKind",
    "Invite",
    "Presence",
    "PresenceEntry",
    "PresenceLimits",
    "invite_hash",
    "normalize_name",
]

HOUR = 3600.0
_INVITE_PERSON = b"peerline/invite"


class _Expires(Protocol):
    @property
    def expires_at(self) -> float: ...


def _expiry_of(entries: Mapping[bytes, _Expires]) -> ExpiryHeap:
    """An expiry heap kept bounded by the live ``entries``."""
    return ExpiryHeap(lambda: ((e.expires_at, k) for k, e in entries.items()), lambda: len(entries))


# --------------------------------------------------------------------------- presence


@dataclass(frozen=True, slots=True)
class PresenceLimits:
    default_ttl: float = 2 * HOUR
    max_ttl: float = 72 * HOUR
    max_entries: int = 100_000
    max_record: int = 4096


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    peer: bytes
    record: bytes
    seq: int
    observed: tuple[str, int] | None
    expires_at: float


class Presence:
    """Registrations by PeerId (see module doc)."""

    def __init__(self, limits: PresenceLimits | None = None) -> None:
        self.limits = limits or PresenceLimits()
        self._entries: dict[bytes, PresenceEntry] = {}
        self._expiry = _expiry_of(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def register(
        self,
        peer: bytes,
        record: bytes,
        *,
        seq: int,
        record_expires: float,
        observed: tuple[str, int] | None,
        ttl: float | None,
        now: float,
    ) -> PresenceEntry | Refused:
        """Store or refresh ``peer``'s registration; returns the entry (with its expiry)."""
        limits = self.limits
        if len(record) > limits.max_record:
            return Refused("presence.too_large", f"record exceeds {limits.max_record} bytes")
        if ttl is not None and ttl < 1.0:
            return Refused("presence.bad_ttl", "ttl must be at least one second")
        held = self._entries.get(peer)
        if held is not None and seq < held.seq:
            return Refused("presence.stale", f"a record with seq {held.seq} is registered")
        if held is None and len(self._entries) >= limits.max_entries:
            return Refused("presence.full", "the server holds its maximum of registrations")
        lifetime = min(limits.default_ttl if ttl is None else ttl, limits.max_ttl)
        expires_at = min(now + lifetime, record_expires)
        if expires_at <= now:
            return Refused("presence.expired", "the record has expired")
        entry = PresenceEntry(peer, record, seq, observed, expires_at)
        self._entries[peer] = entry
        self._expiry.push(expires_at, peer)
        return entry

    def lookup(self, peer: bytes, now: float) -> PresenceEntry | None:
        entry = self._entries.get(peer)
        return entry if entry is not None and entry.expires_at > now else None

    def unregister(self, peer: bytes) -> None:
        self._entries.pop(peer, None)

    def forget_observed(self, peer: bytes) -> None:
        """Drop the observed address (the peer's last connection closed): the server keeps no
        IP address beyond what a live connection needs; the signed record stays until it
        expires."""
        entry = self._entries.get(peer)
        if entry is not None and entry.observed is not None:
            self._entries[peer] = dataclasses.replace(entry, observed=None)

    def get_timer(self) -> float | None:
        return self._expiry.next()

    def handle_timer(self, now: float) -> list[bytes]:
        """Drop expired registrations; returns their peers."""
        gone = []
        for peer in self._expiry.due(now):
            entry = self._entries.get(peer)
            if entry is not None and entry.expires_at <= now:
                del self._entries[peer]
                gone.append(peer)
        return gone


# --------------------------------------------------------------------------- directory


class EntryKind(StrEnum):
    ACCOUNT = "account"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class DirectoryLimits:
    default_ttl: float = 24 * HOUR
    max_ttl: float = 7 * 24 * HOUR
    max_entries: int = 100_000
    max_groups_per_owner: int = 32
    max_results: int = 100


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    kind: EntryKind
    entry_id: bytes
    owner: bytes
    name: str
    description: str
    expires_at: float
    key: str = field(repr=False, compare=False, default="")


def normalize_name(name: str) -> str:
    """Search key: NFKD without combining marks, case-folded, white space collapsed."""
    decomposed = unicodedata.normalize("NFKD", name)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


class Directory:
    """Open accounts and public groups, searchable by name (see module doc)."""

    def __init__(self, limits: DirectoryLimits | None = None) -> None:
        self.limits = limits or DirectoryLimits()
        self._entries: dict[bytes, DirectoryEntry] = {}
        self._expiry = _expiry_of(self._entries)
        self._groups: Counter[bytes] = Counter()  # listed groups per owner

    def __len__(self) -> int:
        return len(self._entries)

    def publish(
        self,
        owner: bytes,
        kind: EntryKind,
        entry_id: bytes,
        *,
        name: str,
        description: str,
        listed: bool,
        ttl: float | None,
        now: float,
    ) -> DirectoryEntry | Refused | None:
        """Publish, refresh or (``listed=False``) withdraw an entry; ``None`` when withdrawn.

        An account entry's id must be the owner's PeerId: nobody lists someone else.
        """
        if kind is EntryKind.ACCOUNT and entry_id != owner:
            return Refused("directory.not_owner", "an account entry is published by its owner")
        held = self._entries.get(entry_id)
        if held is not None and held.owner != owner:
            return Refused("directory.not_owner", "this entry belongs to another peer")
        if not listed:
            self._drop(entry_id)
            return None
        refusal = self._check_room(owner, kind, held, name, ttl)
        if refusal is not None:
            return refusal
        lifetime = min(self.limits.default_ttl if ttl is None else ttl, self.limits.max_ttl)
        entry = DirectoryEntry(
            kind, entry_id, owner, name, description, now + lifetime, normalize_name(name)
        )
        self._drop(entry_id)
        if kind is EntryKind.GROUP:
            self._groups[owner] += 1
        self._entries[entry_id] = entry
        self._expiry.push(entry.expires_at, entry_id)
        return entry

    def _check_room(
        self,
        owner: bytes,
        kind: EntryKind,
        held: DirectoryEntry | None,
        name: str,
        ttl: float | None,
    ) -> Refused | None:
        if not normalize_name(name):
            return Refused("directory.bad_name", "a directory entry needs a name")
        if ttl is not None and ttl < 1.0:
            return Refused("directory.bad_ttl", "ttl must be at least one second")
        if held is not None:
            return None
        if len(self._entries) >= self.limits.max_entries:
            return Refused("directory.full", "the directory is full")
        if kind is EntryKind.GROUP and self._groups[owner] >= self.limits.max_groups_per_owner:
            return Refused("directory.too_many", "too many groups listed by this peer")
        return None

    def remove_owner(self, owner: bytes) -> None:
        """Withdraw everything a peer listed (used when it is banned)."""
        for entry_id in [k for k, e in self._entries.items() if e.owner == owner]:
            self._drop(entry_id)

    def _drop(self, entry_id: bytes) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is not None and entry.kind is EntryKind.GROUP:
            self._groups[entry.owner] -= 1
            if self._groups[entry.owner] <= 0:
                del self._groups[entry.owner]

    def search(self, query: str, now: float, limit: int) -> list[DirectoryEntry]:
        """Live entries whose normalized name contains the normalized query, sorted by name."""
        needle = normalize_name(query)
        found = [e for e in self._entries.values() if e.expires_at > now and needle in e.key]
        found.sort(key=lambda e: (e.key, e.entry_id))
        return found[: max(0, min(limit, self.limits.max_results))]

    def get_timer(self) -> float | None:
        return self._expiry.next()

    def handle_timer(self, now: float) -> None:
        for entry_id in self._expiry.due(now):
            entry = self._entries.get(entry_id)
            if entry is not None and entry.expires_at <= now:
                self._drop(entry_id)


# --------------------------------------------------------------------------- access control


class AccessMode(StrEnum):
    OPEN = "open"
    INVITE = "invite"
    ALLOWLIST = "allowlist"


def invite_hash(token: bytes) -> bytes:
    """What the server stores of an invite token (the token itself is shown once)."""
    return blake2b(token, size=32, person=_INVITE_PERSON)


@dataclass(frozen=True, slots=True)
class Invite:
    token_hash: bytes
    uses_left: int
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Admitted:
    """The peer may proceed; ``invite`` is set when an invite use was consumed (the server
    must persist the decrement and the newly known peer)."""

    invite: Invite | None = None


@dataclass(slots=True)
class AccessRules:
    """The access state (loaded from the server database, see module doc)."""

    mode: AccessMode = AccessMode.OPEN
    banned: set[bytes] = field(default_factory=set)
    allowed: set[bytes] = field(default_factory=set)
    known: set[bytes] = field(default_factory=set)
    invites: dict[bytes, Invite] = field(default_factory=dict)

    def admit(self, peer: bytes, token: bytes | None, now: float) -> Admitted | Refused:
        """Decide whether ``peer`` may use the server, consuming one invite use if needed.

        Bans win over everything; an allowlisted peer is admitted in every mode; in ``invite``
        mode a known peer needs no token, an unknown one must present a valid token once.
        """
        if peer in self.banned:
            return Refused("access.banned", "this peer is banned from the server")
        if self.mode is AccessMode.OPEN or peer in self.allowed:
            return Admitted()
        if self.mode is AccessMode.ALLOWLIST:
            return Refused("access.not_allowed", "this server only admits allowlisted peers")
        if peer in self.known:
            return Admitted()
        if token is None:
            return Refused("access.invite_required", "this server needs an invite token")
        return self._use_invite(peer, token, now)

    def _use_invite(self, peer: bytes, token: bytes, now: float) -> Admitted | Refused:
        invite = self.invites.get(invite_hash(token))
        if invite is None:
            return Refused("access.invite_invalid", "unknown invite token")
        if invite.expires_at is not None and invite.expires_at <= now:
            return Refused("access.invite_expired", "the invite token has expired")
        if invite.uses_left < 1:
            return Refused("access.invite_used_up", "the invite token has no uses left")
        used = Invite(invite.token_hash, invite.uses_left - 1, invite.expires_at)
        self.invites[invite.token_hash] = used
        self.known.add(peer)
        return Admitted(used)

    def revoked(self, peers: Iterable[bytes]) -> list[bytes]:
        """Of live peers, those the current rules no longer admit (to disconnect at once)."""
        return [
            peer
            for peer in peers
            if peer in self.banned
            or (
                self.mode is not AccessMode.OPEN
                and peer not in self.allowed
                and (self.mode is AccessMode.ALLOWLIST or peer not in self.known)
            )
        ]
