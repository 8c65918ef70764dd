"""Tamper evidence of the sealed linkage log, and offline verification of query proofs."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from caltrain.accountability.errors import (
    LinkageProofInvalid,
    ReceiptMismatch,
    RecordOutOfOrder,
    RecordsAdded,
    RecordsDropped,
    RecordTampered,
    RollbackDetected,
    StatementInvalid,
)
from caltrain.accountability.linkage import LinkageLog, LinkageProof, LinkageRecord, verify_linkage_proof
from caltrain.accountability.store import _label, load_log, save_log
from caltrain.crypto.merkle import MerkleTree
from caltrain.crypto.sealing import Sealer
from caltrain.crypto.signing import Identity
from conftest import MEASUREMENT, participant_records


@pytest.fixture()
def db(tmp_path: Path, log: LinkageLog, sealer: Sealer) -> Path:
    path = tmp_path / "linkage.sqlite"
    save_log(path, log, sealer)
    return path


def load(path: Path, sealer: Sealer, enclave: Identity, **kw: object) -> LinkageLog:
    return load_log(path, sealer, enclave, measurement=MEASUREMENT, **kw)  # type: ignore[arg-type]


def rows(path: Path) -> dict[int, bytes]:
    with sqlite3.connect(path) as con:
        out = {p: bytes(b) for p, b in con.execute("SELECT position, blob FROM records")}
    con.close()
    return out


def write(path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(path) as con:
        con.execute(sql, params)
    con.close()


def reseal(sealer: Sealer, log: LinkageLog, record: LinkageRecord, position: int) -> bytes:
    """What an attacker holding the sealing key (not the signing key) could write."""
    return sealer.seal(record.to_bytes(), label=_label(log.log_id, position))


def test_round_trip(db: Path, log: LinkageLog, sealer: Sealer, enclave: Identity) -> None:
    loaded = load(db, sealer, enclave)
    assert loaded.signed == log.signed
    assert [r.leaf() for r in loaded.records()] == [r.leaf() for r in log.records()]
    np.testing.assert_array_equal(loaded.fingerprints, log.fingerprints)


def test_altered_blob_detected(db: Path, sealer: Sealer, enclave: Identity) -> None:
    blob = bytearray(rows(db)[3])
    blob[-5] ^= 1
    write(db, "UPDATE records SET blob = ? WHERE position = 3", bytes(blob))
    with pytest.raises(RecordTampered):
        load(db, sealer, enclave)


@pytest.mark.parametrize("position", [0, 5, 11])
def test_dropped_record_detected(db: Path, sealer: Sealer, enclave: Identity, position: int) -> None:
    write(db, "DELETE FROM records WHERE position = ?", position)
    with pytest.raises(RecordsDropped):
        load(db, sealer, enclave)


def test_swapped_rows_detected(db: Path, sealer: Sealer, enclave: Identity) -> None:
    r = rows(db)
    write(db, "UPDATE records SET blob = ? WHERE position = 2", r[7])
    write(db, "UPDATE records SET blob = ? WHERE position = 7", r[2])
    with pytest.raises(RecordTampered):
        load(db, sealer, enclave)


def test_reordered_by_key_holder_detected(db: Path, log: LinkageLog, sealer: Sealer, enclave: Identity) -> None:
    write(db, "UPDATE records SET blob = ? WHERE position = 2", reseal(sealer, log, log.record(7), 2))
    write(db, "UPDATE records SET blob = ? WHERE position = 7", reseal(sealer, log, log.record(2), 7))
    with pytest.raises(RecordOutOfOrder):
        load(db, sealer, enclave)


def test_moved_to_another_contributor_detected(db: Path, log: LinkageLog, sealer: Sealer, enclave: Identity) -> None:
    framed = dataclasses.replace(log.record(1), contributor="bob")
    write(db, "UPDATE records SET blob = ? WHERE position = 1", reseal(sealer, log, framed, 1))
    with pytest.raises(RecordTampered):
        load(db, sealer, enclave)


@pytest.mark.parametrize("field", ["label", "instance_hash", "dataset_index", "fingerprint"])
def test_altered_field_by_key_holder_detected(
    db: Path, log: LinkageLog, sealer: Sealer, enclave: Identity, field: str
) -> None:
    rec = log.record(4)
    changed = {"label": rec.label + 1, "instance_hash": bytes(32), "dataset_index": 99,
               "fingerprint": rec.fingerprint[::-1].copy()}[field]
    blob = reseal(sealer, log, dataclasses.replace(rec, **{field: changed}), 4)
    write(db, "UPDATE records SET blob = ? WHERE position = 4", blob)
    with pytest.raises(RecordTampered):
        load(db, sealer, enclave)


def test_forged_record_detected(db: Path, log: LinkageLog, sealer: Sealer, enclave: Identity) -> None:
    forged = dataclasses.replace(log.record(0), position=12, record_id="mallory/0", contributor="alice")
    write(db, "INSERT INTO records (position, blob) VALUES (12, ?)", reseal(sealer, log, forged, 12))
    with pytest.raises(RecordsAdded):
        load(db, sealer, enclave)


def test_statement_from_other_key_detected(db: Path, log: LinkageLog, sealer: Sealer, enclave: Identity) -> None:
    other = LinkageLog(
        Identity.generate(), log_id=log.log_id, job_id=log.job_id, model_hash=log.model_hash, measurement=MEASUREMENT
    )
    write(db, "UPDATE statement SET body = ? WHERE id = 0", other.signed.to_json())
    with pytest.raises(StatementInvalid):
        load(db, sealer, enclave)


def test_other_measurement_rejected(db: Path, sealer: Sealer, enclave: Identity) -> None:
    with pytest.raises(StatementInvalid):
        load_log(db, sealer, enclave, measurement=b"\x00" * 32)


def test_rollback_to_older_signed_state_detected(
    tmp_path: Path, db: Path, log: LinkageLog, sealer: Sealer, enclave: Identity
) -> None:
    old = tmp_path / "old.sqlite"
    shutil.copy(db, old)
    rec = log.record(0)
    newest = log.append(record_ids=["carol/0"], contributors=["carol"], labels=np.array([rec.label]),
                        instance_hashes=[rec.instance_hash], dataset_ids=["ds-carol"],
                        dataset_indexes=np.array([0]), fingerprints=rec.fingerprint[None])
    save_log(db, log, sealer)
    assert len(load(db, sealer, enclave, trusted=newest)) == 13
    shutil.copy(old, db)
    assert len(load(db, sealer, enclave)) == 12  # consistent on its own: only outside state can tell
    with pytest.raises(RollbackDetected):
        load(db, sealer, enclave, trusted=newest)


def test_proof_verifies_offline_with_receipt(log: LinkageLog, enclave: Identity) -> None:
    _, _, hashes = participant_records(6, 2)  # bob's records: positions 6..11
    receipt = MerkleTree(list(hashes))
    proof = LinkageProof.from_dict(log.prove(9).to_dict())  # through JSON-able form, as a participant gets it
    verify_linkage_proof(proof, enclave.public_key, measurement=MEASUREMENT, contributor="bob",
                         instance_hash=hashes[3], receipt_root=receipt.root, receipt_proof=receipt.proof(3))


def test_proof_fails_when_tampered(log: LinkageLog, enclave: Identity) -> None:
    proof = log.prove(9)
    for bad in (
        dataclasses.replace(proof, record=dataclasses.replace(proof.record, contributor="alice")),
        dataclasses.replace(proof, record=dataclasses.replace(proof.record, label=proof.record.label + 1)),
        dataclasses.replace(proof, record=dataclasses.replace(proof.record, position=8)),
        dataclasses.replace(proof, inclusion=dataclasses.replace(proof.inclusion, path=proof.inclusion.path[1:])),
    ):
        with pytest.raises(LinkageProofInvalid):
            verify_linkage_proof(bad, enclave.public_key)
    with pytest.raises(LinkageProofInvalid):
        verify_linkage_proof(proof, Identity.generate().public_key)


def test_proof_for_framed_contributor_or_foreign_hash_rejected(log: LinkageLog, enclave: Identity) -> None:
    _, _, hashes = participant_records(6, 1)  # alice's receipt
    receipt = MerkleTree(list(hashes))
    proof = log.prove(9)  # bob's record
    with pytest.raises(ReceiptMismatch):
        verify_linkage_proof(proof, enclave.public_key, contributor="alice")
    with pytest.raises(ReceiptMismatch):
        verify_linkage_proof(proof, enclave.public_key, receipt_root=receipt.root, receipt_proof=receipt.proof(3))
