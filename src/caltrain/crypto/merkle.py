"""RFC 6962 / RFC 9162 Merkle trees: the commitment a participant's receipt and the linkage log rest on.

Leaf hash = SHA-256(0x00 || leaf), node hash = SHA-256(0x01 || left || right), empty tree = SHA-256("").
The tree is built level by level, promoting an unpaired last node unchanged; that yields exactly the RFC 6962
tree (split at the largest power of two below n) while staying iterative and fast for millions of leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from caltrain.crypto.errors import ProofError

HASH_BYTES = 32
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(_LEAF + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _next_level(level: list[bytes]) -> list[bytes]:
    sha = hashlib.sha256
    parents = [sha(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        parents.append(level[-1])
    return parents


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    sha = hashlib.sha256
    levels = [[sha(_LEAF + leaf).digest() for leaf in leaves]]
    while len(levels[-1]) > 1:
        levels.append(_next_level(levels[-1]))
    return levels


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The RFC 6962 root over `leaves` (keeps only one level in memory)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    sha = hashlib.sha256
    level = [sha(_LEAF + leaf).digest() for leaf in leaves]
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


@dataclass(frozen=True)
class InclusionProof:
    """The audit path (RFC 9162 §2.1.3) for leaf `index` of a tree of `tree_size` leaves, bottom-up."""

    index: int
    tree_size: int
    path: tuple[bytes, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "tree_size": self.tree_size, "path": [p.hex() for p in self.path]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InclusionProof:
        """Parse strictly: a malformed proof is a `ProofError`, never a stray KeyError or ValueError."""
        if not isinstance(data, dict) or set(data) != {"index", "tree_size", "path"}:
            raise ProofError("inclusion proof must be an object with exactly index, tree_size, path")
        index, size, path = data["index"], data["tree_size"], data["path"]
        for name, value in (("index", index), ("tree_size", size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ProofError(f"inclusion proof {name} must be a non-negative integer")
        if not isinstance(path, list) or not all(isinstance(p, str) for p in path):
            raise ProofError("inclusion proof path must be a list of hex strings")
        try:
            hashes = tuple(bytes.fromhex(p) for p in path)
        except ValueError:
            raise ProofError("inclusion proof path holds a non-hex entry") from None
        return cls(index, size, hashes)


class MerkleTree:
    """A tree kept whole (every level) so inclusion proofs are cheap to cut."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self._levels = _levels(leaves)
        self.size = len(leaves)

    @classmethod
    def over_subtrees(cls, roots: Sequence[bytes]) -> MerkleTree:
        """The tree above `roots`, the roots of aligned runs of 2^b leaves (the last run may be shorter). Built
        level by level, a tree's nodes at height b are exactly those roots, so this tree has the whole tree's
        root and its proofs are the upper part of every leaf's audit path (`size` counts the runs)."""
        tree = cls([])
        tree._levels = [list(roots)]
        while len(tree._levels[-1]) > 1:
            tree._levels.append(_next_level(tree._levels[-1]))
        tree.size = len(roots)
        return tree

    @property
    def root(self) -> bytes:
        return self._levels[-1][0] if self.size else hashlib.sha256(b"").digest()

    def proof(self, index: int) -> InclusionProof:
        if not 0 <= index < self.size:
            raise ProofError(f"leaf index {index} outside a tree of {self.size} leaves")
        path: list[bytes] = []
        i = index
        for level in self._levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):  # an unpaired last node is promoted: no sibling on this level
                path.append(level[sibling])
            i //= 2
        return InclusionProof(index, self.size, tuple(path))


def verify_inclusion(leaf: bytes, proof: InclusionProof, root: bytes) -> None:
    """Raise `ProofError` unless `proof` shows `leaf` at `proof.index` in the tree with `root` (RFC 9162).

    The root does not authenticate `proof.tree_size` on its own: compare it with a signed count (a receipt's
    record_count) where the size matters.
    """
    if not 0 <= proof.index < proof.tree_size:
        raise ProofError(f"leaf index {proof.index} outside a tree of {proof.tree_size} leaves")
    fn, sn = proof.index, proof.tree_size - 1
    r = leaf_hash(leaf)
    for p in proof.path:
        if len(p) != HASH_BYTES:
            raise ProofError(f"inclusion proof holds a {len(p)}-byte hash, expected {HASH_BYTES}")
        if sn == 0:
            raise ProofError("inclusion proof path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof path is shorter than the tree is deep")
    if r != root:
        raise ProofError(f"inclusion proof for leaf {proof.index} does not lead to root {root.hex()[:16]}…")
