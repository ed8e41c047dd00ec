"""The peerline node: pure protocol core (L0), I/O adapters (L1) and orchestration (L2).

The names below are the public API; each is defined in the module named in its import. The
pure modules themselves (``wire``, ``crypto``, ``session``, ``envelope``, ``records``,
``feeds``, ...) are re-exported as modules too. Pure modules never import this package
``__init__`` (it pulls in the I/O adapters): they import from the defining module.
"""

from __future__ import annotations

from node import crypto, envelope, feeds, prekeys, records, session, wire
from node.config import TransportConfig
from node.connection import Connection
from node.errors import (
    AuthenticationError,
    CryptoError,
    DialError,
    LimitExceededError,
    LocalProtocolError,
    PeerlineError,
    RemoteProtocolError,
    StorageError,
    StorageFullError,
    UsageError,
)
from node.identity import Identity, PeerId, fingerprint, safety_number
from node.invite import Invite, format_invite, make_invite, parse_invite
from node.lookup import AddressLookup, Resolver, dial_any
from node.mdns import MdnsDiscovery
from node.node import Node, NodeConfig
from node.records import PeerRecord, RecordPublisher, sign_record
from node.store import Store
from node.transport import BulkStream, Transport

__all__ = [
    "AddressLookup",
    "AuthenticationError",
    "BulkStream",
    "Connection",
    "CryptoError",
    "DialError",
    "Identity",
    "Invite",
    "LimitExceededError",
    "LocalProtocolError",
    "MdnsDiscovery",
    "Node",
    "NodeConfig",
    "PeerId",
    "PeerRecord",
    "PeerlineError",
    "RecordPublisher",
    "RemoteProtocolError",
    "Resolver",
    "StorageError",
    "StorageFullError",
    "Store",
    "Transport",
    "TransportConfig",
    "UsageError",
    "crypto",
    "dial_any",
    "envelope",
    "feeds",
    "fingerprint",
    "format_invite",
    "make_invite",
    "parse_invite",
    "prekeys",
    "records",
    "safety_number",
    "session",
    "sign_record",
    "wire",
]
