"""The linkage log: which contributor supplied which training instance, committed under an enclave signature.

Each record's canonical leaf encoding (position, record id, contributor, label, instance hash, dataset id and
index, fingerprint digest) goes into an RFC 6962 Merkle tree; the enclave signs {log id, job id, root, count, model
hash, measurement}. A proof for one record therefore lets anyone holding the enclave's public key check, offline,
that the record was committed at that position for that contributor, and lets the participant check the instance hash
against its own receipt. The fingerprint is committed by digest only, so proofs do not reveal embeddings.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from caltrain.accountability.errors import (
    LinkageProofInvalid,
    LinkageTampered,
    ReceiptMismatch,
    RecordOutOfOrder,
    RecordsAdded,
    RecordsDropped,
    RecordTampered,
    RollbackDetected,
    StatementInvalid,
)
from caltrain.crypto.errors import BadSignature, InvalidKey, ProofError
from caltrain.crypto.hashing import sha256
from caltrain.crypto.merkle import InclusionProof, MerkleTree, merkle_root, verify_inclusion
from caltrain.crypto.signing import Identity, verify_signature

_RECORD_TAG = b"caltrain/linkage-record/v1"
_STATEMENT_TAG = b"caltrain/linkage-statement/v2"
HASH_BYTES = 32


def _frame(*parts: bytes) -> bytes:
    """Length-prefix every part, so no two field tuples share an encoding."""
    return b"".join(struct.pack(">Q", len(p)) + p for p in parts)


def _unframe(blob: bytes) -> list[bytes]:
    parts, at = [], 0
    while at < len(blob):
        if at + 8 > len(blob):
            raise ValueError("truncated length prefix")
        (n,) = struct.unpack_from(">Q", blob, at)
        at += 8
        if at + n > len(blob):
            raise ValueError("truncated field")
        parts.append(blob[at : at + n])
        at += n
    return parts


@dataclass(frozen=True)
class LinkageRecord:
    """One training instance as committed: who supplied it, under which label, and its fingerprint."""

    position: int
    record_id: str
    contributor: str
    label: int
    instance_hash: bytes  # the participant's record commitment (crypto.hashing.record_commitment)
    dataset_id: str
    dataset_index: int  # index inside the participant's container, for the participant's own Merkle proof
    fingerprint: np.ndarray  # float32, unit norm

    def fingerprint_digest(self) -> bytes:
        return sha256(np.ascontiguousarray(self.fingerprint, dtype="<f4").tobytes())

    def public(self) -> PublicRecord:
        return PublicRecord(
            self.position, self.record_id, self.contributor, self.label, self.instance_hash,
            self.dataset_id, self.dataset_index, self.fingerprint_digest(),
        )

    def leaf(self) -> bytes:
        return self.public().leaf()

    def to_bytes(self) -> bytes:
        """Full serialization for sealed storage: the leaf plus the raw fingerprint."""
        return _frame(self.leaf(), np.ascontiguousarray(self.fingerprint, dtype="<f4").tobytes())

    @classmethod
    def from_bytes(cls, blob: bytes) -> LinkageRecord:
        try:
            leaf, raw = _unframe(blob)
            pub = PublicRecord.from_leaf(leaf)
        except ValueError as exc:
            raise RecordTampered(f"stored record does not parse: {exc}") from None
        fingerprint = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if sha256(raw) != pub.fingerprint_digest:
            raise RecordTampered(f"record {pub.position}: fingerprint does not match its committed digest")
        return cls(pub.position, pub.record_id, pub.contributor, pub.label, pub.instance_hash,
                   pub.dataset_id, pub.dataset_index, fingerprint)


@dataclass(frozen=True)
class PublicRecord:
    """A record as shown in answers: every committed field, the fingerprint only by digest."""

    position: int
    record_id: str
    contributor: str
    label: int
    instance_hash: bytes
    dataset_id: str
    dataset_index: int
    fingerprint_digest: bytes

    def leaf(self) -> bytes:
        if len(self.instance_hash) != HASH_BYTES or len(self.fingerprint_digest) != HASH_BYTES:
            raise ValueError("instance hash and fingerprint digest must be 32 bytes")
        return _frame(
            _RECORD_TAG, struct.pack(">Q", self.position), self.record_id.encode(), self.contributor.encode(),
            struct.pack(">q", self.label), self.instance_hash, self.dataset_id.encode(),
            struct.pack(">Q", self.dataset_index), self.fingerprint_digest,
        )

    @classmethod
    def from_leaf(cls, leaf: bytes) -> PublicRecord:
        parts = _unframe(leaf)
        if len(parts) != 9 or parts[0] != _RECORD_TAG:
            raise ValueError("not a linkage record leaf")
        (position,), (label,), (index,) = (struct.unpack(">Q", parts[1]), struct.unpack(">q", parts[4]),
                                           struct.unpack(">Q", parts[7]))
        return cls(position, parts[2].decode(), parts[3].decode(), label, parts[5], parts[6].decode(), index,
                   parts[8])

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position, "record_id": self.record_id, "contributor": self.contributor,
            "label": self.label, "instance_hash": self.instance_hash.hex(), "dataset_id": self.dataset_id,
            "dataset_index": self.dataset_index, "fingerprint_digest": self.fingerprint_digest.hex(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PublicRecord:
        try:
            return cls(int(d["position"]), str(d["record_id"]), str(d["contributor"]), int(d["label"]),
                       bytes.fromhex(d["instance_hash"]), str(d["dataset_id"]), int(d["dataset_index"]),
                       bytes.fromhex(d["fingerprint_digest"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LinkageProofInvalid(f"malformed record in proof: {exc!r}") from None


@dataclass(frozen=True)
class LogStatement:
    """What the enclave signs: this log (id), the job it belongs to, its size and root, the model it fingerprints,
    the enclave's code."""

    log_id: bytes
    job_id: str
    count: int
    root: bytes
    model_hash: bytes
    measurement: bytes

    def message(self) -> bytes:
        return _frame(_STATEMENT_TAG, self.log_id, self.job_id.encode(), struct.pack(">Q", self.count), self.root,
                      self.model_hash, self.measurement)


@dataclass(frozen=True)
class SignedStatement:
    statement: LogStatement
    signer: bytes  # Ed25519 public key of the enclave
    signature: bytes

    @classmethod
    def sign(cls, statement: LogStatement, identity: Identity) -> SignedStatement:
        return cls(statement, identity.public_key, identity.sign(statement.message()))

    def verify(
        self, enclave_key: bytes, *, measurement: bytes | None = None, model_hash: bytes | None = None,
        job_id: str | None = None,
    ) -> None:
        """Raise `StatementInvalid` unless signed by `enclave_key` (and for this measurement / model / job, if
        given)."""
        if self.signer != enclave_key:
            raise StatementInvalid("log statement is signed by another key than the enclave's")
        try:
            verify_signature(enclave_key, self.statement.message(), self.signature, what="linkage log statement")
        except (BadSignature, InvalidKey) as exc:
            raise StatementInvalid(str(exc)) from None
        if measurement is not None and self.statement.measurement != measurement:
            raise StatementInvalid("log statement was made by an enclave with another measurement")
        if model_hash is not None and self.statement.model_hash != model_hash:
            raise StatementInvalid("log statement is for another model")
        if job_id is not None and self.statement.job_id != job_id:
            raise StatementInvalid(f"log statement belongs to job {self.statement.job_id!r}, not {job_id!r}")

    def to_dict(self) -> dict[str, Any]:
        s = self.statement
        return {
            "log_id": s.log_id.hex(), "job_id": s.job_id, "count": s.count, "root": s.root.hex(),
            "model_hash": s.model_hash.hex(),
            "measurement": s.measurement.hex(), "signer": self.signer.hex(), "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SignedStatement:
        try:
            st = LogStatement(
                bytes.fromhex(d["log_id"]), str(d["job_id"]), int(d["count"]), bytes.fromhex(d["root"]),
                bytes.fromhex(d["model_hash"]), bytes.fromhex(d["measurement"]),
            )
            return cls(st, bytes.fromhex(d["signer"]), bytes.fromhex(d["signature"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StatementInvalid(f"malformed log statement: {exc!r}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedStatement:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StatementInvalid(f"log statement is not JSON: {exc}") from None
        return cls.from_dict(data)


@dataclass(frozen=True)
class LinkageProof:
    """Evidence for one record in an answer: the record, its Merkle path, and the signed statement it leads to."""

    record: PublicRecord
    inclusion: InclusionProof
    statement: SignedStatement

    def to_dict(self) -> dict[str, Any]:
        return {"record": self.record.to_dict(), "inclusion": self.inclusion.to_dict(),
                "statement": self.statement.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinkageProof:
        try:
            inclusion = InclusionProof.from_dict(d["inclusion"])
            return cls(PublicRecord.from_dict(d["record"]), inclusion, SignedStatement.from_dict(d["statement"]))
        except (KeyError, TypeError, ProofError, StatementInvalid) as exc:
            raise LinkageProofInvalid(f"malformed linkage proof: {exc}") from None


def verify_linkage_proof(
    proof: LinkageProof,
    enclave_key: bytes,
    *,
    measurement: bytes | None = None,
    job_id: str | None = None,
    instance_hash: bytes | None = None,
    contributor: str | None = None,
    receipt_root: bytes | None = None,
    receipt_proof: InclusionProof | None = None,
) -> None:
    """Offline check of one answer record; raise `LinkageProofInvalid` (or `ReceiptMismatch`) on any mismatch.

    With `receipt_root` and `receipt_proof` (the participant's own container Merkle proof for
    `record.dataset_index`), the instance hash is also shown to be one the participant committed to at upload.
    """
    try:
        proof.statement.verify(enclave_key, measurement=measurement, job_id=job_id)
    except StatementInvalid as exc:
        raise LinkageProofInvalid(f"statement: {exc}") from None
    st, rec = proof.statement.statement, proof.record
    if proof.inclusion.tree_size != st.count or proof.inclusion.index != rec.position:
        raise LinkageProofInvalid("proof position or tree size disagrees with the record and the signed statement")
    try:
        verify_inclusion(rec.leaf(), proof.inclusion, st.root)
    except (ProofError, ValueError) as exc:
        raise LinkageProofInvalid(f"record {rec.position} is not in the signed log: {exc}") from None
    if contributor is not None and rec.contributor != contributor:
        raise ReceiptMismatch(f"record {rec.position} is committed for {rec.contributor!r}, not {contributor!r}")
    if instance_hash is not None and rec.instance_hash != instance_hash:
        raise ReceiptMismatch(f"record {rec.position} commits another instance hash than the receipt's")
    if receipt_root is not None:
        if receipt_proof is None or receipt_proof.index != rec.dataset_index:
            raise ReceiptMismatch("a receipt check needs the receipt's inclusion proof for the record's index")
        try:
            verify_inclusion(rec.instance_hash, receipt_proof, receipt_root)
        except ProofError as exc:
            raise ReceiptMismatch(f"instance hash is not in the participant's receipt: {exc}") from None


class LinkageLog:
    """Append-only, in-enclave log over columns (fingerprints as one N×D array for search); signs after appends."""

    def __init__(
        self, identity: Identity, *, log_id: bytes, job_id: str, model_hash: bytes, measurement: bytes
    ) -> None:
        self._identity = identity
        self.log_id, self.job_id, self.model_hash, self.measurement = log_id, job_id, model_hash, measurement
        self._records: list[LinkageRecord] = []
        self._tree = MerkleTree([])
        self.signed = self._sign()

    def __len__(self) -> int:
        return len(self._records)

    def _sign(self) -> SignedStatement:
        st = LogStatement(
            self.log_id, self.job_id, len(self._records), self._tree.root, self.model_hash, self.measurement
        )
        return SignedStatement.sign(st, self._identity)

    def append(
        self,
        *,
        record_ids: Sequence[str],
        contributors: Sequence[str],
        labels: np.ndarray,
        instance_hashes: Sequence[bytes],
        dataset_ids: Sequence[str],
        dataset_indexes: np.ndarray,
        fingerprints: np.ndarray,
    ) -> SignedStatement:
        """Append a batch of records (columns of equal length) and return the new signed statement."""
        n = len(record_ids)
        cols = (contributors, labels, instance_hashes, dataset_ids, dataset_indexes, fingerprints)
        if any(len(c) != n for c in cols):
            raise ValueError("linkage columns must all have the same length")
        start = len(self._records)
        self._records += [
            LinkageRecord(start + i, record_ids[i], contributors[i], int(labels[i]), bytes(instance_hashes[i]),
                          dataset_ids[i], int(dataset_indexes[i]), np.asarray(fingerprints[i], dtype=np.float32))
            for i in range(n)
        ]
        self._rebuild()
        return self.signed

    def _rebuild(self) -> None:
        self._tree = MerkleTree([r.leaf() for r in self._records])
        self.signed = self._sign()

    @classmethod
    def restore(
        cls, identity: Identity, signed: SignedStatement, records: Sequence[LinkageRecord], *,
        measurement: bytes, trusted: SignedStatement | None = None,
    ) -> LinkageLog:
        """Rebuild a log from stored records; raise a `LinkageTampered` subclass unless it is exactly what was signed.

        `trusted` is a statement the caller already holds (a participant's copy, a monotonic counter's): a stored
        log older than it, or one that does not extend it, is a rollback.
        """
        signed.verify(identity.public_key, measurement=measurement)
        st = signed.statement
        positions = [r.position for r in records]
        if positions != list(range(len(records))):
            if sorted(positions) == list(range(len(records))):
                raise RecordOutOfOrder("records sit at other positions than the ones they were committed at")
            if len(set(positions)) == len(positions) and max(positions) >= len(records):
                raise RecordsDropped(f"positions skip: {len(records)} records up to position {max(positions)}")
            raise RecordOutOfOrder("records carry duplicate positions")
        if len(records) < st.count:
            raise RecordsDropped(f"log holds {len(records)} records but the statement commits to {st.count}")
        if len(records) > st.count:
            raise RecordsAdded(f"log holds {len(records)} records but the statement commits to {st.count}")
        leaves = [r.leaf() for r in records]
        if trusted is not None:
            check_not_rolled_back(signed, trusted, leaves)
        log = cls(identity, log_id=st.log_id, job_id=st.job_id, model_hash=st.model_hash, measurement=st.measurement)
        log._records = list(records)
        log._tree = MerkleTree(leaves)
        if log._tree.root != st.root:
            raise RecordTampered("stored records do not hash to the signed root (altered, forged or moved)")
        log.signed = signed
        return log

    def record(self, position: int) -> LinkageRecord:
        return self._records[position]

    def records(self) -> Sequence[LinkageRecord]:
        return tuple(self._records)

    @property
    def fingerprints(self) -> np.ndarray:
        if not self._records:
            return np.zeros((0, 0), np.float32)
        return np.stack([r.fingerprint for r in self._records]).astype(np.float32)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self._records], dtype=np.int64)

    @property
    def contributors(self) -> list[str]:
        return [r.contributor for r in self._records]

    def prove(self, position: int) -> LinkageProof:
        """A proof for one record, checked against the signed statement before it leaves (fails closed)."""
        proof = LinkageProof(self._records[position].public(), self._tree.proof(position), self.signed)
        try:
            verify_linkage_proof(proof, self._identity.public_key, measurement=self.measurement)
        except LinkageProofInvalid as exc:
            raise LinkageTampered(f"in-memory log no longer matches its signed root: {exc}") from None
        return proof


def check_not_rolled_back(current: SignedStatement, trusted: SignedStatement, leaves: Sequence[bytes]) -> None:
    """An append-only log may only grow: its first `trusted.count` leaves must still hash to `trusted.root`."""
    cur, old = current.statement, trusted.statement
    if cur.log_id != old.log_id:
        raise RollbackDetected("stored log is another log than the trusted statement's")
    if cur.count < old.count:
        raise RollbackDetected(f"stored log has {cur.count} records; a trusted statement already commits {old.count}")
    if merkle_root(leaves[: old.count]) != old.root:
        raise RollbackDetected("stored log does not extend the trusted statement's log (forked or rewritten)")
