"""Merkle trees: domain separation, size binding, inclusion proofs for every leaf and size."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import merkle
from node.errors import LocalProtocolError, MerkleProofError


def _leaves(count: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(count)]


@pytest.mark.parametrize("count", [*range(1, 18), 31, 32, 33, 255, 256])
def test_every_leaf_proves_against_the_root(count: int) -> None:
    leaves = _leaves(count)
    tree = merkle.MerkleTree(leaves)
    assert tree.root == merkle.root_of(leaves)
    for index, leaf in enumerate(leaves):
        path = tree.proof(index)
        assert len(path) <= max(1, count.bit_length())
        merkle.verify_proof(leaf, index, count, path, tree.root)


def test_roles_have_distinct_domains() -> None:
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    # An inner node is never a leaf: the leaf hash of the children's bytes differs.
    assert merkle.node_hash(a, b) != merkle.leaf_hash(a + b)
    # A two-leaf tree and the one-leaf tree whose leaf is their inner node differ.
    assert merkle.root_of([a, b]) != merkle.root_of([merkle.node_hash(a, b)])


def test_promotion_is_not_duplication() -> None:
    three = _leaves(3)
    # Bitcoin's duplicate-last rule would make these two lists share a root.
    assert merkle.root_of(three) != merkle.root_of([*three, three[-1]])


def test_empty_tree_and_bad_index_are_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        merkle.root_of([])
    with pytest.raises(LocalProtocolError):
        merkle.MerkleTree(_leaves(3)).proof(3)


def _refused(leaf: bytes, index: int, count: int, path: list[bytes], root: bytes) -> None:
    with pytest.raises(MerkleProofError):
        merkle.verify_proof(leaf, index, count, path, root)


def test_wrong_proofs_are_refused() -> None:
    leaves = _leaves(13)
    tree = merkle.MerkleTree(leaves)
    path = tree.proof(5)
    _refused(leaves[5], 4, 13, path, tree.root)  # wrong position
    _refused(leaves[5], 5, 14, path, tree.root)  # wrong size
    _refused(leaves[5], 5, 13, path[:-1], tree.root)  # too short
    _refused(leaves[5], 5, 13, [*path, path[0]], tree.root)  # too long
    _refused(leaves[6], 5, 13, path, tree.root)  # another leaf
    _refused(leaves[5], 5, 13, [bytes(32), *path[1:]], tree.root)  # forged sibling
    _refused(leaves[5], 13, 13, path, tree.root)  # index out of range
    _refused(leaves[5], 0, 0, [], tree.root)  # empty tree


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.data())
def test_proof_verifies_only_at_its_own_position(count: int, data: st.DataObject) -> None:
    leaves = _leaves(count)
    tree = merkle.MerkleTree(leaves)
    index = data.draw(st.integers(0, count - 1))
    other = data.draw(st.integers(0, count - 1))
    path = tree.proof(index)
    merkle.verify_proof(leaves[index], index, count, path, tree.root)
    if other != index:
        _refused(leaves[index], other, count, path, tree.root)
