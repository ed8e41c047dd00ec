"""Conversations, messages and the outbox in the store: every SQL statement of 1:1 messaging.

Write methods come in two shapes: ``*_ops`` return :data:`~node.store.WriteOp` lists so the
caller can commit them in one atomic unit with other writes (the ratchet state, the outbox
row), and plain async methods that commit on their own. Conversations are created on first
use inside those same units (``INSERT OR IGNORE`` plus sub-selects), so no unit ever needs an
id read back first.

A conversation is keyed by the peer: the own PeerId names the note-to-self conversation.
Message ids are shown as 32 lowercase hex digits. History is paged newest first by the local
``seq`` (which follows the sender's order, because held messages enter ``messages`` only when
released in order); the cursor is the ``seq`` of the last message returned, as text.

SQL text is composed only from constant fragments (the conversation sub-select, ``?`` lists);
every value is a bound parameter. That is why the ``S608`` warnings are silenced here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from node.errors import NotFoundError, UsageError
from node.identity import PeerId
from node.messaging import STATES, ChatText, OutboxEntry, State, merge_state
from node.store import Row, Store, WriteOp

__all__ = [
    "MAX_PAGE",
    "ConversationInfo",
    "History",
    "Request",
    "Status",
    "StoredMessage",
]

MAX_PAGE = 500
Status = Literal["request", "accepted", "declined"]
_MESSAGE_COLUMNS = (
    "m.seq, m.id, m.sender, m.direction, m.body, m.sent_at, m.state, m.reason, c.peer_id"
)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    id: bytes
    sender: PeerId
    recipient: PeerId
    outgoing: bool
    text: str
    sent_at: float
    state: str
    reason: str | None

    def to_json(self) -> dict[str, object]:
        """The ``--json`` shape: ``{"id", "from", "to", "text", "sent_at", "state"}``."""
        out: dict[str, object] = {
            "id": self.id.hex(),
            "from": self.sender.text(),
            "to": self.recipient.text(),
            "text": self.text,
            "sent_at": self.sent_at,
            "state": self.state,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    id: int
    status: Status
    send_seq: int
    recv_seq: int
    keep_history: bool


@dataclass(frozen=True, slots=True)
class Request:
    """A stranger's pending chat request: who, how many messages, the first one."""

    peer_id: PeerId
    count: int
    first_text: str
    first_at: float


class History:
    """Message history and outbox of one node (``own`` is our PeerId)."""

    def __init__(self, store: Store, own: PeerId) -> None:
        self._store = store
        self.own = own

    # ----------------------------------------------------------------- conversations

    def _where(self, peer: PeerId) -> tuple[str, tuple[bytes, ...]]:
        if peer == self.own:
            return "kind = 'note'", ()
        return "kind = 'direct' AND peer_id = ?", (peer.key,)

    def _conv_id(self, peer: PeerId) -> tuple[str, tuple[bytes, ...]]:
        where, params = self._where(peer)
        return f"(SELECT id FROM conversations WHERE {where})", params  # noqa: S608

    def ensure_conversation_op(self, peer: PeerId, status: Status, now: float) -> WriteOp:
        if peer == self.own:
            return (
                "INSERT INTO conversations (kind, created_at) SELECT 'note', ?"
                " WHERE NOT EXISTS (SELECT 1 FROM conversations WHERE kind = 'note')",
                (now,),
            )
        return (
            "INSERT OR IGNORE INTO conversations (kind, peer_id, created_at, status)"
            " VALUES ('direct', ?, ?, ?)",
            (peer.key, now, status),
        )

    async def conversation(self, peer: PeerId) -> ConversationInfo | None:
        where, params = self._where(peer)
        row = await self._store.fetch_one(
            f"SELECT id, status, send_seq, recv_seq, keep_history FROM conversations WHERE {where}",  # noqa: S608
            params,
        )
        if row is None:
            return None
        return ConversationInfo(row[0], row[1], row[2], row[3], bool(row[4]))

    async def require(self, peer: PeerId) -> ConversationInfo:
        info = await self.conversation(peer)
        if info is None:
            raise NotFoundError(f"no conversation with {peer.short()}", code="history.none")
        return info

    def status_op(self, peer: PeerId, status: Status) -> WriteOp:
        where, params = self._where(peer)
        return (
            f"UPDATE conversations SET status = ? WHERE {where}",  # noqa: S608
            (status, *params),
        )

    async def set_keep_history(self, peer: PeerId, keep: bool, now: float) -> None:
        where, params = self._where(peer)
        await self._store.write(
            [
                self.ensure_conversation_op(peer, "accepted", now),
                (
                    f"UPDATE conversations SET keep_history = ? WHERE {where}",  # noqa: S608
                    (int(keep), *params),
                ),
            ]
        )

    async def requests(self) -> list[Request]:
        rows = await self._store.fetch_all(
            "SELECT c.peer_id, count(m.seq), min(m.seq) FROM conversations c"
            " JOIN messages m ON m.conversation_id = c.id"
            " WHERE c.status = 'request' GROUP BY c.id ORDER BY min(m.seq)"
        )
        requests = []
        for peer_key, count, first_seq in rows:
            first = await self._store.fetch_one(
                "SELECT body, sent_at FROM messages WHERE seq = ?", (first_seq,)
            )
            assert first is not None
            requests.append(Request(PeerId(peer_key), count, first[0], first[1]))
        return requests

    # ----------------------------------------------------------------- sending

    def queue_ops(
        self,
        peer: PeerId,
        chat_id: bytes,
        text: str,
        *,
        now: float,
        ttl: float | None,
        lifetime: float,
        seq: int | None = None,
    ) -> list[WriteOp]:
        """Assign the next sender sequence number, store the message, queue it in the outbox.

        ``seq`` is the sequence number when the caller tracks it (the running node, the only
        writer then); ``None`` takes ``send_seq + 1`` inside the unit (offline queueing).
        Writing to a peer accepts a pending request from it. A note to self needs no
        delivery: it is stored ``delivered`` and never queued.
        """
        conv, params = self._conv_id(peer)
        note = peer == self.own
        if seq is None:
            bump: WriteOp = (
                f"UPDATE conversations SET send_seq = send_seq + 1 WHERE id = {conv}",  # noqa: S608
                params,
            )
        else:
            bump = (f"UPDATE conversations SET send_seq = ? WHERE id = {conv}", (seq, *params))  # noqa: S608
        ops = [
            self.ensure_conversation_op(peer, "accepted", now),
            self.status_op(peer, "accepted"),
            bump,
            (
                "INSERT INTO messages (id, conversation_id, sender, direction, body, sent_at,"  # noqa: S608
                " state, expires_at, ttl, sender_seq) VALUES"
                f" (?, {conv}, ?, 'out', ?, ?, ?, ?, ?,"
                f" (SELECT send_seq FROM conversations WHERE id = {conv}))",
                (
                    chat_id,
                    *params,
                    self.own.key,
                    text,
                    now,
                    "delivered" if note else "queued",
                    None if ttl is None else now + ttl,
                    ttl,
                    *params,
                ),
            ),
        ]
        if not note:
            ops.append(
                (
                    "INSERT INTO outbox (message_id, recipient, payload, next_attempt_at,"
                    " expires_at) VALUES (?, ?, x'', ?, ?)",
                    (chat_id, peer.key, now, now + lifetime),
                )
            )
        return ops

    async def outbox_entries(self) -> list[OutboxEntry]:
        rows = await self._store.fetch_all(
            "SELECT o.message_id, o.recipient, o.expires_at, o.next_attempt_at, o.attempts,"
            " m.state FROM outbox o JOIN messages m ON m.id = o.message_id"
        )
        return [OutboxEntry(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def outbox_entries_for(self, message_ids: list[bytes]) -> list[OutboxEntry]:
        marks = ",".join("?" * len(message_ids))
        rows = await self._store.fetch_all(
            "SELECT o.message_id, o.recipient, o.expires_at, o.next_attempt_at, o.attempts,"  # noqa: S608
            " m.state FROM outbox o JOIN messages m ON m.id = o.message_id"
            f" WHERE o.message_id IN ({marks})",
            message_ids,
        )
        return [OutboxEntry(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def ciphertexts(self, message_ids: list[bytes]) -> dict[bytes, bytes]:
        """The ciphertexts already made for these outbox entries (re-sent as they are)."""
        marks = ",".join("?" * len(message_ids))
        rows = await self._store.fetch_all(
            "SELECT message_id, ciphertext FROM outbox"  # noqa: S608
            f" WHERE ciphertext IS NOT NULL AND message_id IN ({marks})",
            message_ids,
        )
        return {r[0]: bytes(r[1]) for r in rows}

    @staticmethod
    def ciphertext_op(message_id: bytes, ciphertext: bytes) -> WriteOp:
        return ("UPDATE outbox SET ciphertext = ? WHERE message_id = ?", (ciphertext, message_id))

    async def chat_texts(self, message_ids: list[bytes]) -> dict[bytes, ChatText]:
        """The plaintext frames of outgoing messages, rebuilt from their rows."""
        if not message_ids:
            return {}
        marks = ",".join("?" * len(message_ids))
        rows = await self._store.fetch_all(
            "SELECT id, sender_seq, sent_at, body, ttl FROM messages"  # noqa: S608
            f" WHERE direction = 'out' AND id IN ({marks})",
            message_ids,
        )
        return {r[0]: ChatText(r[0], r[1], r[2], r[3], r[4]) for r in rows}

    @staticmethod
    def state_ops(message_id: bytes, state: State, reason: str | None = None) -> list[WriteOp]:
        """Move an outgoing message to ``state`` (only forwards, see ``merge_state``)."""
        before = [s for s in STATES if s != state and merge_state(s, state) == state]
        ops: list[WriteOp] = []
        if before:
            marks = ",".join("?" * len(before))
            ops.append(
                (
                    "UPDATE messages SET state = ?, reason = ? WHERE id = ? AND direction = 'out'"  # noqa: S608
                    f" AND state IN ({marks})",
                    (state, reason, message_id, *before),
                )
            )
        if state in ("delivered", "read", "failed"):
            ops.append(("DELETE FROM outbox WHERE message_id = ?", (message_id,)))
        return ops

    @staticmethod
    def outbox_update_op(entry: OutboxEntry) -> WriteOp:
        return (
            "UPDATE outbox SET attempts = ?, next_attempt_at = ?, state = ? WHERE message_id = ?",
            (entry.attempts, entry.next_attempt_at, entry.state, entry.message_id),
        )

    # ----------------------------------------------------------------- receiving

    async def known_ids(self, message_ids: list[bytes]) -> set[bytes]:
        """Which of these ids are already stored (shown or held): de-duplication."""
        if not message_ids:
            return set()
        marks = ",".join("?" * len(message_ids))
        rows = await self._store.fetch_all(
            f"SELECT id FROM messages WHERE id IN ({marks})"  # noqa: S608
            f" UNION SELECT id FROM held WHERE id IN ({marks})",
            [*message_ids, *message_ids],
        )
        return {row[0] for row in rows}

    def hold_op(self, peer: PeerId, chat: ChatText, now: float) -> WriteOp:
        conv, params = self._conv_id(peer)
        return (
            "INSERT OR IGNORE INTO held (id, conversation_id, sender_seq, body, sent_at,"  # noqa: S608
            f" received_at, ttl) VALUES (?, {conv}, ?, ?, ?, ?, ?)",
            (chat.message_id, *params, chat.seq, chat.text, chat.sent_at, now, chat.ttl),
        )

    def release_ops(self, peer: PeerId, chat: ChatText, now: float) -> list[WriteOp]:
        """Show a received message (in order): insert it, forget it as held, bump recv_seq."""
        conv, params = self._conv_id(peer)
        return [
            (
                "INSERT OR IGNORE INTO messages (id, conversation_id, sender, direction, body,"  # noqa: S608
                " sent_at, received_at, state, expires_at, ttl, sender_seq) VALUES"
                f" (?, {conv}, ?, 'in', ?, ?, ?, 'received', ?, ?, ?)",
                (
                    chat.message_id,
                    *params,
                    peer.key,
                    chat.text,
                    chat.sent_at,
                    now,
                    None if chat.ttl is None else now + chat.ttl,
                    chat.ttl,
                    chat.seq,
                ),
            ),
            ("DELETE FROM held WHERE id = ?", (chat.message_id,)),
            (
                f"UPDATE conversations SET recv_seq = max(recv_seq, ?) WHERE id = {conv}",  # noqa: S608
                (chat.seq, *params),
            ),
        ]

    async def held(self, peer: PeerId) -> list[ChatText]:
        conv, params = self._conv_id(peer)
        rows = await self._store.fetch_all(
            "SELECT id, sender_seq, sent_at, body, ttl FROM held"  # noqa: S608
            f" WHERE conversation_id = {conv} ORDER BY sender_seq",
            params,
        )
        return [ChatText(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    # ----------------------------------------------------------------- reading

    def _message(self, row: Row) -> StoredMessage:
        seq, mid, sender, direction, body, sent_at, state, reason, peer_key = row
        peer = PeerId(peer_key) if peer_key is not None else self.own
        outgoing = direction == "out"
        recipient = peer if outgoing else self.own
        return StoredMessage(
            seq, mid, PeerId(sender), recipient, outgoing, body, sent_at, state, reason
        )

    async def page(
        self, peer: PeerId, *, limit: int = 50, before: str | None = None
    ) -> tuple[list[StoredMessage], str | None]:
        """A page of the conversation, newest first, and the cursor of the next page."""
        if not 1 <= limit <= MAX_PAGE:
            raise UsageError(f"--limit must be 1..{MAX_PAGE}", code="usage.bad_limit")
        cursor = _parse_cursor(before)
        conv, params = self._conv_id(peer)
        rows = await self._store.fetch_all(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN conversations c"  # noqa: S608
            f" ON c.id = m.conversation_id WHERE m.conversation_id = {conv} AND m.seq < ?"
            " ORDER BY m.seq DESC LIMIT ?",
            (*params, cursor, limit + 1),
        )
        messages = [self._message(row) for row in rows[:limit]]
        more = len(rows) > limit
        return messages, (str(messages[-1].seq) if more else None)

    async def all_messages(self, peer: PeerId) -> list[StoredMessage]:
        """The whole conversation, oldest first (``export``)."""
        conv, params = self._conv_id(peer)
        rows = await self._store.fetch_all(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN conversations c"  # noqa: S608
            f" ON c.id = m.conversation_id WHERE m.conversation_id = {conv} ORDER BY m.seq",
            params,
        )
        return [self._message(row) for row in rows]

    async def search(self, text: str, *, limit: int = 50) -> list[StoredMessage]:
        """Full-text search over local history; every word must match (prefix match)."""
        words = [w.replace('"', '""') for w in text.split()]
        if not words or not 1 <= limit <= MAX_PAGE:
            raise UsageError("search needs some text", code="usage.bad_search")
        query = " ".join(f'"{w}"*' for w in words)
        rows = await self._store.fetch_all(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages_fts f"  # noqa: S608
            " JOIN messages m ON m.seq = f.rowid JOIN conversations c"
            " ON c.id = m.conversation_id WHERE messages_fts MATCH ? AND c.status = 'accepted'"
            " ORDER BY m.seq DESC LIMIT ?",
            (query, limit),
        )
        return [self._message(row) for row in rows]

    async def unread(self, peer: PeerId) -> list[bytes]:
        conv, params = self._conv_id(peer)
        rows = await self._store.fetch_all(
            f"SELECT id FROM messages WHERE conversation_id = {conv}"  # noqa: S608
            " AND direction = 'in' AND state = 'received' ORDER BY seq",
            params,
        )
        return [row[0] for row in rows]

    def read_ops(self, message_ids: list[bytes], info: ConversationInfo) -> list[WriteOp]:
        """Mark incoming messages read (deleting them when the conversation keeps no history)."""
        ops: list[WriteOp] = []
        for mid in message_ids:
            if info.keep_history:
                ops.append(("UPDATE messages SET state = 'read' WHERE id = ?", (mid,)))
            else:
                ops.append(("DELETE FROM messages WHERE id = ?", (mid,)))
        return ops

    # ----------------------------------------------------------------- deleting

    async def delete(self, peer: PeerId) -> int:
        """Erase a conversation: its messages, held messages and queued outbox entries."""
        info = await self.require(peer)
        count = await self._store.fetch_one(
            "SELECT count(*) FROM messages WHERE conversation_id = ?", (info.id,)
        )
        await self._store.write(
            [
                (
                    "DELETE FROM outbox WHERE message_id IN"
                    " (SELECT id FROM messages WHERE conversation_id = ?)",
                    (info.id,),
                ),
                ("DELETE FROM messages WHERE conversation_id = ?", (info.id,)),
                ("DELETE FROM held WHERE conversation_id = ?", (info.id,)),
                ("DELETE FROM conversations WHERE id = ?", (info.id,)),
            ]
        )
        return int(count[0]) if count else 0

    @staticmethod
    def expire_ops(now: float) -> list[WriteOp]:
        """Erase disappearing messages whose time is up (and their outbox entries)."""
        return [
            (
                "DELETE FROM outbox WHERE message_id IN"
                " (SELECT id FROM messages WHERE expires_at <= ?)",
                (now,),
            ),
            ("DELETE FROM messages WHERE expires_at <= ?", (now,)),
        ]

    async def queued_count(self) -> int:
        row = await self._store.fetch_one("SELECT count(*) FROM outbox")
        return int(row[0]) if row else 0


def _parse_cursor(before: str | None) -> int:
    if before is None:
        return 2**63 - 1
    if not before.isdigit() or len(before) > 19:
        raise UsageError(f"bad cursor {before[:30]!r}", code="usage.bad_cursor")
    return int(before)
