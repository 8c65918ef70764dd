"""Forensic queries answered by a real enclave after partitioned training: encrypted inputs, proofs that
verify against the enclave's signed log, the backdoor's contributor named, replays and junk refused."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tests.helpers import Packed, People, pack, submission

from caltrain.accountability.attacks import badnets_trigger
from caltrain.accountability.enclave_side import QueryRejected
from caltrain.accountability.errors import LinkageProofInvalid
from caltrain.accountability.linkage import LinkageProof, SignedStatement, verify_linkage_proof
from caltrain.crypto.hpke import seal_to
from caltrain.data.datasets import ArrayDataset, load_dataset
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.protocol import trace_info
from caltrain.enclave.wire import BuildLinkage, DatasetInfo, ForensicReply, LinkageBuilt, SuspicionQuery, TraceQuery
from caltrain.service.participant import ParticipantHome
from caltrain.training.config import TrainConfig
from caltrain.training.partitioned import PartitionedTrainer

TARGET = 0


def _poisoned() -> tuple[ArrayDataset, ArrayDataset, np.ndarray, ArrayDataset]:
    train, test = load_dataset("digits")
    honest = train.subset(np.arange(0, 700))
    bad = train.subset(np.arange(700, 1400))
    x, y = bad.x.copy(), bad.y.copy()
    mask = np.zeros(len(y), dtype=bool)
    mask[np.flatnonzero(y != TARGET)[:60]] = True
    x[mask], y[mask] = badnets_trigger(x[mask]), TARGET
    return honest, ArrayDataset(x, y, "digits", 10), mask, test


@pytest.fixture(scope="module")
def trained(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EnclaveHost, dict, np.ndarray]]:
    honest, bad, mask, test = _poisoned()
    host = EnclaveHost(state_dir=tmp_path_factory.mktemp("forensics"), config=EnclaveConfig(people.consortium))
    host.start()
    host.call(submission(pack(honest, people.alice, "alice", "alice-0"), people.alice, host.keys), DatasetInfo)
    # bob packs and submits as a participant does, keeping its key, receipt and the attested enclave's identity
    bob = ParticipantHome(tmp_path_factory.mktemp("bob"), "bob", people.bob)
    container = bob.root / "bob-0.ctd"
    bob.pack(bad, container, dataset_id="bob-0")
    packed = Packed(container.read_bytes(), bob.data_key("bob-0"), "bob-0", "bob", bad)
    host.call(submission(packed, people.bob, host.keys), DatasetInfo)
    bob.remember_enclave("bob-0", {"signing_key": host.keys.signing.hex(), "measurement": host.ready.measurement})
    config = TrainConfig(epochs=12, batch_size=32, datasets=["alice-0", "bob-0"], seed=3)
    trainer = PartitionedTrainer(host, config, job_id="j", workdir=tmp_path_factory.mktemp("w"))
    trainer.run()
    trainer.close()
    built = host.call(BuildLinkage(job_id="j"), LinkageBuilt)
    triggered = badnets_trigger(test.x[test.y != TARGET][:40])
    yield (
        host,
        {
            "statement": built.statement,
            "records": built.records,
            "triggered": triggered,
            "bob": bob,
            "container": container,
        },
        mask,
    )
    host.stop()


def query(host: EnclaveHost, x: np.ndarray, *, job: str = "j", method: str = "ours") -> TraceQuery:
    buf = io.BytesIO()
    np.savez(buf, x=x, predicted=np.full(len(x), TARGET))
    return TraceQuery(
        job_id=job, ciphertext=seal_to(host.keys.hpke, buf.getvalue(), trace_info(job)), k=10, method=method
    )


def test_linkage_statement_is_signed_by_the_attested_enclave(trained: tuple) -> None:
    host, built, _ = trained
    statement = SignedStatement.from_dict(built["statement"])
    statement.verify(host.keys.signing, measurement=bytes.fromhex(host.ready.measurement))
    assert built["records"] == statement.statement.count == 1400


def test_trace_names_the_backdoor_contributor_with_verifiable_proofs(trained: tuple) -> None:
    host, built, mask = trained
    report = host.call(query(host, built["triggered"]), ForensicReply).report
    assert report["contributors"][0]["contributor"] == "bob"
    records = [r for a in report["answers"] for r in a["records"]]
    assert records and all(r["record"]["label"] == TARGET for r in records)
    for r in records:
        verify_linkage_proof(
            LinkageProof.from_dict(r), host.keys.signing, measurement=bytes.fromhex(host.ready.measurement)
        )
    poisoned = {f"bob-0/{i}" for i in np.flatnonzero(mask)}
    precision = np.mean([r["record"]["record_id"] in poisoned for r in records])
    assert precision > 0.8, f"precision@10 {precision:.2f}: the trace should find the triggered poison"


def test_participant_verifies_answers_naming_it_offline(trained: tuple) -> None:
    """bob checks every record an answer pins on it: in the signed log, and one it committed to at upload."""
    host, built, _ = trained
    report = host.call(query(host, built["triggered"][:10]), ForensicReply).report
    bob: ParticipantHome = built["bob"]
    assert bob.verify_trace(report, [built["container"]]) > 0
    entry = next(r for a in report["answers"] for r in a["records"] if r["record"]["contributor"] == "bob")
    entry["record"]["instance_hash"] = "00" * 32  # an operator framing bob with a record it never sent
    with pytest.raises(LinkageProofInvalid):
        bob.verify_trace(report, [built["container"]])


def test_seed_method_is_available(trained: tuple) -> None:
    host, built, _ = trained
    report = host.call(query(host, built["triggered"][:5], method="caltrain-knn"), ForensicReply).report
    assert report["method"] == "caltrain-knn" and len(report["answers"]) == 5


def test_replayed_or_misdirected_queries_refused(trained: tuple) -> None:
    host, built, _ = trained
    msg = query(host, built["triggered"][:3])
    host.call(msg, ForensicReply)
    with pytest.raises(QueryRejected, match="replay"):
        host.call(msg, ForensicReply)
    other = query(host, built["triggered"][:3], job="other-job")
    with pytest.raises(QueryRejected, match="decrypt"):
        host.call(TraceQuery(job_id="j", ciphertext=other.ciphertext, k=10, method="ours"), ForensicReply)
    with pytest.raises(QueryRejected, match="shape"):
        host.call(query(host, np.zeros((2, 1, 9, 9), dtype=np.float32)), ForensicReply)
    tampered = bytearray(query(host, built["triggered"][:3]).ciphertext)
    tampered[-1] ^= 1
    with pytest.raises(QueryRejected):
        host.call(TraceQuery(job_id="j", ciphertext=bytes(tampered), k=10, method="ours"), ForensicReply)


def test_suspicion_ranks_every_instance_poison_above_clean(trained: tuple) -> None:
    host, _, mask = trained
    ranking = host.call(SuspicionQuery(job_id="j", method="ours"), ForensicReply).report["ranking"]
    assert len(ranking) == 1400
    poisoned = {f"bob-0/{i}" for i in np.flatnonzero(mask)}
    truth = [r["record_id"] in poisoned for r in ranking]
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True)
    assert roc_auc_score(truth, scores) > 0.8
