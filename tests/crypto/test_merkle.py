"""RFC 6962 Merkle tree against a direct recursive transcription of the RFC, and proof verification."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caltrain.crypto.errors import ProofError
from caltrain.crypto.merkle import InclusionProof, MerkleTree, merkle_root, verify_inclusion


def _split(n: int) -> int:
    """Largest power of two strictly less than n (RFC 6962 §2.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 §2.1 defines it."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = _split(len(leaves))
    return hashlib.sha256(b"\x01" + ref_root(leaves[:k]) + ref_root(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) exactly as RFC 6962 §2.1.1 defines it."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_root(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_root(leaves[:k])]


def _leaves(n: int) -> list[bytes]:
    return [f"leaf-{i}".encode() for i in range(n)]


@pytest.mark.parametrize("n", range(71))
def test_root_and_every_proof_match_rfc6962(n: int) -> None:
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    assert tree.root == merkle_root(leaves) == ref_root(leaves)
    for i in range(n):
        proof = tree.proof(i)
        assert list(proof.path) == ref_path(i, leaves)
        verify_inclusion(leaves[i], proof, tree.root)


def test_known_values() -> None:
    assert merkle_root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle_root([b""]) == hashlib.sha256(b"\x00").digest()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 64, 70])
def test_tampered_proofs_are_rejected(n: int) -> None:
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    root = tree.root
    for i in range(n):
        proof = tree.proof(i)
        with pytest.raises(ProofError):
            verify_inclusion(leaves[i] + b"x", proof, tree.root)
        with pytest.raises(ProofError):
            verify_inclusion(leaves[i], proof, hashlib.sha256(b"other").digest())
        with pytest.raises(ProofError):
            verify_inclusion(leaves[i], replace(proof, path=(*proof.path, b"\x00" * 32)), tree.root)
        with pytest.raises(ProofError):
            verify_inclusion(leaves[i], replace(proof, tree_size=i), tree.root)
        if n > 1:
            with pytest.raises(ProofError):
                verify_inclusion(leaves[i], replace(proof, index=(i + 1) % n), tree.root)
        path = proof.path
        for j in range(len(path)):
            flipped = bytes([path[j][0] ^ 1]) + path[j][1:]
            with pytest.raises(ProofError):
                verify_inclusion(leaves[i], replace(proof, path=(*path[:j], flipped, *path[j + 1 :])), root)
            with pytest.raises(ProofError):
                verify_inclusion(leaves[i], replace(proof, path=path[:j] + path[j + 1 :]), root)


def test_out_of_range_index_and_short_hashes() -> None:
    tree = MerkleTree(_leaves(4))
    with pytest.raises(ProofError):
        tree.proof(4)
    with pytest.raises(ProofError):
        tree.proof(-1)
    with pytest.raises(ProofError):
        verify_inclusion(b"leaf-0", InclusionProof(4, 4, ()), tree.root)
    proof = tree.proof(0)
    with pytest.raises(ProofError, match="31-byte"):
        verify_inclusion(b"leaf-0", replace(proof, path=(proof.path[0][:31], *proof.path[1:])), tree.root)
    with pytest.raises(ProofError):
        MerkleTree([]).proof(0)


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=40), st.data())
def test_proof_dict_round_trip(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    proof = tree.proof(data.draw(st.integers(0, len(leaves) - 1)))
    again = InclusionProof.from_dict(proof.to_dict())
    assert again == proof
    verify_inclusion(leaves[proof.index], again, tree.root)


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"index": 0, "tree_size": 1},
        {"index": 0, "tree_size": 1, "path": [], "extra": 1},
        {"index": -1, "tree_size": 1, "path": []},
        {"index": True, "tree_size": 1, "path": []},
        {"index": 0, "tree_size": "1", "path": []},
        {"index": 0, "tree_size": 1, "path": "00"},
        {"index": 0, "tree_size": 1, "path": [1]},
        {"index": 0, "tree_size": 1, "path": ["zz"]},
    ],
)
def test_malformed_proof_dicts(bad: object) -> None:
    with pytest.raises(ProofError):
        InclusionProof.from_dict(bad)  # type: ignore[arg-type]


def test_million_leaves_is_fast() -> None:
    import time

    leaves = [i.to_bytes(32, "big") for i in range(1_000_000)]
    start = time.perf_counter()
    tree = MerkleTree(leaves)
    elapsed = time.perf_counter() - start
    verify_inclusion(leaves[765_432], tree.proof(765_432), tree.root)
    assert elapsed < 10, f"building a 10^6-leaf tree took {elapsed:.1f}s"
