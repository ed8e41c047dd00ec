"""The rendezvous server a community hosts, and the node's client for it.

Presence (signed peer records), a store-and-forward mailbox of sealed envelopes, a directory of
open accounts and public groups, access control, metrics. The rules live in the pure
``node.mailbox`` and ``node.registry``; this package is their QUIC and SQLite shell.
"""

from __future__ import annotations

from rendezvous.client import Found, RendezvousClient
from rendezvous.metrics import Metrics
from rendezvous.process import ServeOptions, read_address, serve
from rendezvous.protocol import RendezvousAddress, sign_receipt, verify_receipt
from rendezvous.server import RendezvousService, ServiceConfig

__all__ = [
    "Found",
    "Metrics",
    "RendezvousAddress",
    "RendezvousClient",
    "RendezvousService",
    "ServeOptions",
    "ServiceConfig",
    "read_address",
    "serve",
    "sign_receipt",
    "verify_receipt",
]
