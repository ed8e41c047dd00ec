"""Contacts, blocking, the acceptance policy and visibility settings, and peer name resolution.

Everything here is queries on the node's :class:`~node.store.Store`; the rules (what a policy
means, what an invite contains) live in :mod:`node.messaging` and :mod:`node.invite`. Anywhere
the user names a peer, :meth:`Contacts.resolve` accepts a PeerId, an alias, an invite link or
``me``.

Aliases are local nicknames: 1..32 characters of letters, digits, ``-``, ``_`` and ``.``,
starting with a letter or digit, not ``me`` and not shaped like a PeerId (so a name can never
shadow a key). Aliases are unique per node (case-insensitive lookups would make two contacts
``Bob`` and ``bob`` ambiguous, so the alias is stored as typed but matched case-folded).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from node.errors import NotFoundError, UsageError
from node.identity import PeerId
from node.invite import INVITE_PREFIX, Invite, parse_invite
from node.messaging import POLICIES, Policy
from node.store import Row, Store, WriteOp

__all__ = [
    "SELF",
    "VISIBILITIES",
    "Contact",
    "Contacts",
    "Target",
    "Visibility",
    "check_alias",
]

SELF = "me"
Visibility = Literal["open", "closed"]
VISIBILITIES: tuple[Visibility, ...] = ("open", "closed")
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


@dataclass(frozen=True, slots=True)
class Contact:
    peer_id: PeerId
    alias: str | None
    name: str | None
    added_at: float
    blocked: bool
    read_receipts: bool
    addresses: tuple[str, ...]
    rendezvous: tuple[str, ...]

    @property
    def label(self) -> str:
        """How to show this contact: alias, else name, else the short PeerId."""
        return self.alias or self.name or self.peer_id.short()

    def to_json(self) -> dict[str, object]:
        return {
            "peer_id": self.peer_id.text(),
            "alias": self.alias,
            "name": self.name,
            "added_at": self.added_at,
            "blocked": self.blocked,
            "read_receipts": self.read_receipts,
            "addresses": list(self.addresses),
            "rendezvous": list(self.rendezvous),
        }


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved peer name: the peer, and the invite it came from (hints to remember)."""

    peer_id: PeerId
    invite: Invite | None = None


def check_alias(alias: str) -> str:
    """Validate an alias (see the module doc); :class:`UsageError` ``contact.bad_alias``."""
    if (
        not _ALIAS.fullmatch(alias)
        or alias.casefold() == SELF
        or PeerId.looks_like(alias)
        or alias.lower().startswith(INVITE_PREFIX)
    ):
        raise UsageError(
            f"invalid alias {alias[:40]!r}: 1-32 letters, digits, '.', '_' or '-'",
            code="contact.bad_alias",
        )
    return alias


def _contact(row: Row) -> Contact:
    return Contact(
        PeerId(row[0]),
        row[1],
        row[2],
        row[3],
        bool(row[4]),
        bool(row[5]),
        tuple(json.loads(row[6])),
        tuple(json.loads(row[7])),
    )


class Contacts:
    """The contact list and the node settings of one store."""

    def __init__(self, store: Store, own: PeerId) -> None:
        self._store = store
        self.own = own

    # ----------------------------------------------------------------- resolution

    async def resolve(self, text: str) -> Target:
        """A PeerId, ``me``, an invite link or a contact alias -> :class:`Target`.

        Raises :class:`UsageError` for a malformed PeerId/invite and :class:`NotFoundError`
        (``contact.unknown``) for an alias nobody has.
        """
        cleaned = text.strip()
        if cleaned.casefold() == SELF:
            return Target(self.own)
        if cleaned.lower().startswith(INVITE_PREFIX):
            invite = parse_invite(cleaned)
            return Target(invite.peer_id, invite)
        if PeerId.looks_like(cleaned):
            return Target(PeerId.parse(cleaned))
        contact = await self.by_alias(cleaned)
        if contact is None:
            raise NotFoundError(f"unknown peer or alias: {cleaned[:80]!r}", code="contact.unknown")
        return Target(contact.peer_id)

    async def by_alias(self, alias: str) -> Contact | None:
        row = await self._store.fetch_one(
            "SELECT peer_id, alias, name, added_at, blocked, read_receipts, addresses, rendezvous"
            " FROM contacts WHERE alias = ? COLLATE NOCASE",
            (alias,),
        )
        return None if row is None else _contact(row)

    async def get(self, peer: PeerId) -> Contact | None:
        row = await self._store.fetch_one(
            "SELECT peer_id, alias, name, added_at, blocked, read_receipts, addresses, rendezvous"
            " FROM contacts WHERE peer_id = ?",
            (peer.key,),
        )
        return None if row is None else _contact(row)

    async def label(self, peer: PeerId) -> str:
        if peer == self.own:
            return SELF
        contact = await self.get(peer)
        return peer.short() if contact is None else contact.label

    # ----------------------------------------------------------------- changes

    async def add(
        self, target: Target, *, alias: str | None, name: str | None, now: float
    ) -> Contact:
        """Add (or update) a contact; an invite's name and hints are remembered.

        Adding a contact also accepts a pending request from it (contacts are never subject
        to the acceptance policy).
        """
        if target.peer_id == self.own:
            raise UsageError("you cannot add yourself as a contact", code="contact.self")
        if alias is not None:
            check_alias(alias)
            holder = await self.by_alias(alias)
            if holder is not None and holder.peer_id != target.peer_id:
                raise UsageError(f"alias {alias!r} is already taken", code="contact.alias_taken")
        invite = target.invite
        if invite is not None:
            name = name or invite.name or None
        addresses = json.dumps(invite.body.addresses if invite else [])
        rendezvous = json.dumps(invite.body.rendezvous if invite else [])
        prekeys = invite.body.prekeys if invite and invite.body.prekeys else None
        await self._store.write(
            [
                (
                    "INSERT INTO contacts (peer_id, alias, name, added_at, addresses, rendezvous,"
                    " prekeys) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (peer_id) DO UPDATE SET"
                    " prekeys = coalesce(excluded.prekeys, prekeys),"
                    " alias = coalesce(excluded.alias, alias),"
                    " name = coalesce(excluded.name, name),"
                    " addresses = CASE WHEN excluded.addresses = '[]' THEN addresses"
                    " ELSE excluded.addresses END,"
                    " rendezvous = CASE WHEN excluded.rendezvous = '[]' THEN rendezvous"
                    " ELSE excluded.rendezvous END",
                    (target.peer_id.key, alias, name, now, addresses, rendezvous, prekeys),
                ),
                self.accept_op(target.peer_id),
            ]
        )
        contact = await self.get(target.peer_id)
        assert contact is not None
        return contact

    @staticmethod
    def accept_op(peer: PeerId) -> WriteOp:
        """The write that turns a request (or a declined chat) from ``peer`` into a chat."""
        return (
            "UPDATE conversations SET status = 'accepted' WHERE kind = 'direct' AND peer_id = ?",
            (peer.key,),
        )

    async def require(self, peer: PeerId) -> Contact:
        contact = await self.get(peer)
        if contact is None:
            raise NotFoundError(f"{peer.short()} is not a contact", code="contact.unknown")
        return contact

    async def invite_prekeys(self, peer: PeerId) -> bytes | None:
        """The prekey bundle bytes an invite of ``peer`` carried (unverified), if any."""
        row = await self._store.fetch_one(
            "SELECT prekeys FROM contacts WHERE peer_id = ?", (peer.key,)
        )
        return None if row is None or row[0] is None else bytes(row[0])

    async def remove(self, peer: PeerId) -> None:
        await self.require(peer)
        await self._store.write([("DELETE FROM contacts WHERE peer_id = ?", (peer.key,))])

    async def set_blocked(self, peer: PeerId, blocked: bool, *, now: float) -> None:
        """Block or unblock ``peer``; blocking a stranger creates a nameless contact row."""
        if peer == self.own:
            raise UsageError("you cannot block yourself", code="contact.self")
        await self._store.write(
            [
                (
                    "INSERT INTO contacts (peer_id, added_at, blocked) VALUES (?, ?, ?)"
                    " ON CONFLICT (peer_id) DO UPDATE SET blocked = excluded.blocked",
                    (peer.key, now, int(blocked)),
                )
            ]
        )

    async def set_read_receipts(self, peer: PeerId, enabled: bool) -> None:
        await self.require(peer)
        await self._store.write(
            [
                (
                    "UPDATE contacts SET read_receipts = ? WHERE peer_id = ?",
                    (int(enabled), peer.key),
                )
            ]
        )

    async def list(self) -> list[Contact]:
        rows = await self._store.fetch_all(
            "SELECT peer_id, alias, name, added_at, blocked, read_receipts, addresses, rendezvous"
            " FROM contacts ORDER BY coalesce(alias, name), added_at"
        )
        return [_contact(row) for row in rows]

    # ----------------------------------------------------------------- settings

    async def _setting(self, key: str, default: str) -> str:
        row = await self._store.fetch_one("SELECT value FROM settings WHERE key = ?", (key,))
        return default if row is None else str(row[0])

    async def _set(self, key: str, value: str) -> None:
        await self._store.write(
            [
                (
                    "INSERT INTO settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
            ]
        )

    async def policy(self) -> Policy:
        value = await self._setting("policy", "confirm")
        for policy in POLICIES:
            if value == policy:
                return policy
        return "confirm"

    async def set_policy(self, policy: str) -> None:
        if policy not in POLICIES:
            raise UsageError("policy must be deny, confirm or allow", code="usage.bad_policy")
        await self._set("policy", policy)

    async def visibility(self) -> Visibility:
        value = await self._setting("visibility", "closed")
        return "open" if value == "open" else "closed"

    async def set_visibility(self, visibility: str) -> None:
        if visibility not in VISIBILITIES:
            raise UsageError("visibility must be open or closed", code="usage.bad_visibility")
        await self._set("visibility", visibility)
