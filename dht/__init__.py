"""The hardened Kademlia DHT: the only package that imports ``kademlia``/``rpcudp``.

Values are validated on STORE, in storage and on get (highest valid ``seq`` wins); keys are
discovery hashes; quotas per source and in total; no pickle. Validators are passed in, so this
package depends on no node orchestration.
"""

from __future__ import annotations

from dht.node import DhtConfig, DhtNode, node_id_for
from dht.storage import StorageLimits, ValidatedStorage
from dht.swarm import LocalSwarm
from dht.values import Accepted, PeerRecordValidator, Validator, newer

__all__ = [
    "Accepted",
    "DhtConfig",
    "DhtNode",
    "LocalSwarm",
    "PeerRecordValidator",
    "StorageLimits",
    "ValidatedStorage",
    "Validator",
    "newer",
    "node_id_for",
]
