"""Merkle trees over BLAKE2b with separate leaf, node and root domains (pure).

Shape: leaves are hashed with the *leaf* personalisation; each level pairs nodes left to right
with the *node* personalisation, and an odd last node is promoted unchanged to the next level
(never duplicated: duplication lets two different leaf lists share a root). The *root* is the
top node hashed once more with the leaf count, so trees of different sizes never share a root
and a proof states how many leaves it was made for.

Contracts:
- :func:`leaf_hash`, :func:`node_hash` and :func:`root_of` never collide across roles (distinct
  BLAKE2b ``person`` strings), so an inner node can never pass for a leaf.
- :func:`verify_proof` raises :class:`MerkleProofError` unless the path leads from the leaf at
  ``index`` of a ``count``-leaf tree to ``root``, consuming every path element exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from node.crypto import blake2b
from node.errors import LocalProtocolError, MerkleProofError

__all__ = [
    "HASH_SIZE",
    "MAX_LEAVES",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_proof",
]

HASH_SIZE = 32
MAX_LEAVES = 1 << 32
_LEAF = b"peerline/mk-leaf"
_NODE = b"peerline/mk-node"
_ROOT = b"peerline/mk-root"


def leaf_hash(data: bytes) -> bytes:
    """Hash of one leaf's bytes (leaf domain)."""
    return blake2b(data, size=HASH_SIZE, person=_LEAF)


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an inner node from its two children (node domain)."""
    return blake2b(left + right, size=HASH_SIZE, person=_NODE)


def _finish(top: bytes, count: int) -> bytes:
    return blake2b(count.to_bytes(8, "big") + top, size=HASH_SIZE, person=_ROOT)


def _next_level(level: Sequence[bytes]) -> list[bytes]:
    paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        paired.append(level[-1])
    return paired


def _check_count(count: int) -> None:
    if not 1 <= count <= MAX_LEAVES:
        raise LocalProtocolError(
            f"a Merkle tree has 1..{MAX_LEAVES} leaves, not {count}", code="merkle.bad_size"
        )


def root_of(leaves: Sequence[bytes]) -> bytes:
    """Root over already-hashed leaves (see :func:`leaf_hash`), without keeping the levels."""
    _check_count(len(leaves))
    level: Sequence[bytes] = leaves
    while len(level) > 1:
        level = _next_level(level)
    return _finish(level[0], len(leaves))


class MerkleTree:
    """All levels of a tree over hashed leaves: the root and inclusion proofs for each leaf."""

    __slots__ = ("_levels",)

    def __init__(self, leaves: Sequence[bytes]) -> None:
        _check_count(len(leaves))
        levels = [list(leaves)]
        while len(levels[-1]) > 1:
            levels.append(_next_level(levels[-1]))
        self._levels = levels

    @property
    def count(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        return _finish(self._levels[-1][0], self.count)

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from the leaf at ``index`` up to the top (promotions add nothing)."""
        if not 0 <= index < self.count:
            raise LocalProtocolError(
                f"leaf {index} is not in a tree of {self.count}", code="merkle.bad_index"
            )
        path: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path


def verify_proof(leaf: bytes, index: int, count: int, path: Sequence[bytes], root: bytes) -> None:
    """Check that hashed ``leaf`` sits at ``index`` of the ``count``-leaf tree with ``root``.

    Raises :class:`MerkleProofError` (a :class:`RemoteProtocolError`) for a wrong position,
    size, path length or hash; returns ``None`` when the proof holds.
    """
    if not 1 <= count <= MAX_LEAVES or not 0 <= index < count:
        raise MerkleProofError(f"leaf {index} cannot be in a tree of {count}")
    node, width, used = leaf, count, 0
    while width > 1:
        sibling = index ^ 1
        if sibling < width:
            if used == len(path):
                raise MerkleProofError("Merkle path too short")
            other = path[used]
            used += 1
            node = node_hash(node, other) if index % 2 == 0 else node_hash(other, node)
        index //= 2
        width = (width + 1) // 2
    if used != len(path):
        raise MerkleProofError("Merkle path too long")
    if _finish(node, count) != root:
        raise MerkleProofError("Merkle path does not lead to the root")
