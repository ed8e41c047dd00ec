"""The SQLite schema of a node, as an ordered list of migrations (pure data).

``MIGRATIONS[i]`` is one SQL script that brings ``PRAGMA user_version`` from ``i`` to ``i + 1``.
:mod:`node.store` runs each missing script in its own transaction, in order, and refuses a
database whose ``user_version`` is newer than ``len(MIGRATIONS)``. Never edit a released
script: later changes APPEND a new one.

Conventions: peer ids and message ids are raw bytes (``BLOB``); times are Unix seconds
(``REAL``); booleans are ``INTEGER`` 0/1 with a ``CHECK``.

v1 tables:

- ``identity``: exactly one row (``id = 1``): our peer id, display name, creation time. Public
  data only, so ``peerline id`` works without the passphrase of the key file.
- ``contacts``: known peers; ``alias`` is the local, unique nickname; ``verified_key`` is the
  key whose safety number the user confirmed (a different key later means "number changed").
- ``conversations``: one per direct peer or note-to-self; ``keep_history`` 0 means messages are
  deleted once read/expired.
- ``messages``: ``seq`` is the stable order key and rowid (external-content FTS needs a stable
  rowid, which an implicit rowid is not across ``VACUUM``); ``id`` is the random message id used
  to de-duplicate deliveries. Pagination is newest first per conversation by ``seq``.
- ``outbox``: what waits for delivery, with retry schedule and expiry.
- ``messages_fts``: FTS5 external-content index of ``messages.body`` kept by triggers
  (this SQLite is 3.40: no ``contentless_delete``).

v2 (1:1 messaging, ``node/messaging.py``): contacts keep invite address hints (JSON lists);
conversations get ``status`` (a stranger's chat is a ``request`` until accepted or
``declined``) and the sender sequence counters (``send_seq`` last assigned, ``recv_seq`` last
shown); messages get ``sender_seq``, ``ttl`` and the failure ``reason``; the outbox keeps the
ciphertext once encrypted (the ratchet state that made it is saved in the same unit); ``held``
keeps received messages waiting for an earlier sequence number; ``settings`` holds the node's
``policy`` and ``visibility``.

v4: ``contacts.prekeys`` keeps the prekey bundle an invite carried, so a first message can be
encrypted for a peer the node has never met online.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

_V1 = """
CREATE TABLE identity (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    peer_id     BLOB NOT NULL CHECK (length(peer_id) = 32),
    name        TEXT NOT NULL,
    created_at  REAL NOT NULL
);

CREATE TABLE contacts (
    peer_id        BLOB PRIMARY KEY CHECK (length(peer_id) = 32),
    alias          TEXT UNIQUE,
    name           TEXT,
    added_at       REAL NOT NULL,
    blocked        INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
    read_receipts  INTEGER NOT NULL DEFAULT 1 CHECK (read_receipts IN (0, 1)),
    verified_key   BLOB
);

CREATE TABLE conversations (
    id            INTEGER PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('direct', 'note', 'group', 'channel')),
    peer_id       BLOB,
    keep_history  INTEGER NOT NULL DEFAULT 1 CHECK (keep_history IN (0, 1)),
    created_at    REAL NOT NULL,
    CHECK ((kind = 'direct') = (peer_id IS NOT NULL))
);
CREATE UNIQUE INDEX conversations_direct ON conversations (peer_id) WHERE kind = 'direct';

CREATE TABLE messages (
    seq              INTEGER PRIMARY KEY,
    id               BLOB NOT NULL UNIQUE,
    conversation_id  INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender           BLOB NOT NULL,
    direction        TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    body             TEXT NOT NULL,
    sent_at          REAL NOT NULL,
    received_at      REAL,
    state            TEXT NOT NULL,
    expires_at       REAL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, seq DESC);
CREATE INDEX messages_by_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE outbox (
    message_id       BLOB PRIMARY KEY,
    recipient        BLOB NOT NULL,
    payload          BLOB NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    expires_at       REAL NOT NULL,
    state            TEXT NOT NULL DEFAULT 'queued'
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);

CREATE VIRTUAL TABLE messages_fts USING fts5 (
    body, content = 'messages', content_rowid = 'seq'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
END;
"""

_V2_MESSAGING = """
ALTER TABLE contacts ADD COLUMN addresses TEXT NOT NULL DEFAULT '[]';
ALTER TABLE contacts ADD COLUMN rendezvous TEXT NOT NULL DEFAULT '[]';
ALTER TABLE conversations ADD COLUMN status TEXT NOT NULL DEFAULT 'accepted'
    CHECK (status IN ('request', 'accepted', 'declined'));
ALTER TABLE conversations ADD COLUMN send_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN recv_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN sender_seq INTEGER;
ALTER TABLE messages ADD COLUMN ttl REAL;
ALTER TABLE messages ADD COLUMN reason TEXT;
ALTER TABLE outbox ADD COLUMN ciphertext BLOB;
CREATE TABLE held (
    id               BLOB PRIMARY KEY,
    conversation_id  INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender_seq       INTEGER NOT NULL,
    body             TEXT NOT NULL,
    sent_at          REAL NOT NULL,
    received_at      REAL NOT NULL,
    ttl              REAL,
    UNIQUE (conversation_id, sender_seq)
);
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"""

# v3: E2EE state (node/session_store.py). ``state`` holds the versioned bytes of a Session or
# PrekeyState: secret keys, erased for real by secure_delete + a WAL checkpoint.
_V3_SESSIONS = """
CREATE TABLE sessions (
    peer_id     BLOB PRIMARY KEY CHECK (length(peer_id) = 32),
    state       BLOB NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE prekeys (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    state       BLOB NOT NULL,
    updated_at  REAL NOT NULL
);
"""

_V4_CONTACT_PREKEYS = """
ALTER TABLE contacts ADD COLUMN prekeys BLOB;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2_MESSAGING, _V3_SESSIONS, _V4_CONTACT_PREKEYS)
