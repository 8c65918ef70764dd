"""Forensic queries answered by a real enclave after partitioned training: sealed queries from an auditor,
reports the enclave signs and seals to that auditor, proofs that verify against the job's signed log, the
backdoor's contributor named, replays, junk and misdirected queries refused."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tests.helpers import Packed, People, call_sealed, create_job, ingest, pack, sealed_answer, signed_by

from caltrain.accountability.attacks import badnets_trigger
from caltrain.accountability.errors import AccountabilityError, QueryRejected
from caltrain.accountability.linkage import LinkageProof, SignedStatement, verify_linkage_proof
from caltrain.data.datasets import ArrayDataset, load_dataset
from caltrain.enclave.authority import UNSIGNED, seal_request
from caltrain.enclave.errors import ReplyInvalid, RequestReplayed
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.wire import (
    BuildLinkage,
    ForensicReply,
    LinkageBuilt,
    SealedReply,
    SuspicionQuery,
    TraceQuery,
    decode,
    encode,
    to_json,
)
from caltrain.errors import Unauthenticated
from caltrain.service.participant import MemberHome
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
    ingest(host, pack(honest, people.alice, "alice-0"), people.alice)
    # bob packs and submits as a participant does, keeping its key, receipt and the attested enclave's identity
    bob = MemberHome(tmp_path_factory.mktemp("bob"), "bob", people.bob.identity, people.bob.encryption)
    container = bob.root / "bob-0.ctd"
    bob.pack(bad, container, dataset_id="bob-0")
    ingest(host, Packed(container.read_bytes(), bob.data_key("bob-0"), "bob-0", "bob", bad), people.bob)
    assert host.ready is not None
    bob.remember_enclave("bob-0", {"signing_key": host.keys.signing.hex(), "measurement": host.ready.measurement})
    created = create_job(host, people.owner, TrainConfig(epochs=12, batch_size=32,
                                                         datasets=["alice/alice-0", "bob/bob-0"]))
    trainer = PartitionedTrainer(host, TrainConfig.from_dict(created.spec), job_id=created.job_id,
                                 workdir=tmp_path_factory.mktemp("w"))
    trainer.run()
    trainer.close()
    built = host.call(BuildLinkage(job_id=created.job_id), LinkageBuilt)
    triggered = badnets_trigger(test.x[test.y != TARGET][:40])
    yield (
        host,
        {
            "job": created.job_id,
            "statement": built.statement,
            "records": built.records,
            "triggered": triggered,
            "bob": bob,
            "container": container,
        },
        mask,
    )
    host.stop()


def query(built: dict[str, Any], x: np.ndarray, *, method: str = "ours") -> TraceQuery:
    buf = io.BytesIO()
    np.savez(buf, x=x, predicted=np.full(len(x), TARGET))
    return TraceQuery(job_id=built["job"], inputs=buf.getvalue(), k=10, method=method, auth=UNSIGNED)


def test_linkage_statement_is_signed_by_the_attested_enclave_for_the_job(trained: tuple) -> None:
    host, built, _ = trained
    statement = SignedStatement.from_dict(built["statement"])
    statement.verify(host.keys.signing, measurement=bytes.fromhex(host.ready.measurement), job_id=built["job"])
    assert built["records"] == statement.statement.count == 1400


def test_linkage_is_built_once(trained: tuple) -> None:
    host, built, _ = trained
    with pytest.raises(AccountabilityError, match="built once"):
        host.call(BuildLinkage(job_id=built["job"]), LinkageBuilt)


def test_trace_names_the_backdoor_contributor_with_verifiable_proofs(trained: tuple, people: People) -> None:
    host, built, mask = trained
    report = call_sealed(host, query(built, built["triggered"]), people.auditor, ForensicReply).report
    assert report["contributors"][0]["contributor"] == "bob" and report["job_id"] == built["job"]
    records = [r for a in report["answers"] for r in a["records"]]
    assert records and all(r["record"]["label"] == TARGET for r in records)
    for r in records:
        verify_linkage_proof(
            LinkageProof.from_dict(r), host.keys.signing, measurement=bytes.fromhex(host.ready.measurement),
            job_id=built["job"],
        )
    poisoned = {f"bob/bob-0/{i}" for i in np.flatnonzero(mask)}
    precision = np.mean([r["record"]["record_id"] in poisoned for r in records])
    assert precision > 0.8, f"precision@10 {precision:.2f}: the trace should find the triggered poison"


def test_one_answer_at_a_time_names_nobody_and_the_report_says_how_many_were_traced(
    trained: tuple, people: People
) -> None:
    """Blame needs more answers resting on a member than the per-query false-answer rate explains among the queries
    traced: sent together, the triggered inputs name bob, and the signed report says how many of how many rest on
    him; one of those inputs sent alone is still answered, but names nobody. Each report counts every query the
    enclave has traced for the job with the method, these included."""
    host, built, _ = trained
    batch = call_sealed(host, query(built, built["triggered"]), people.auditor, ForensicReply).report
    [bob] = [c for c in batch["contributors"] if c["named"]]
    assert bob["contributor"] == "bob" and bob["traced"] == batch["traced"] >= len(built["triggered"])
    assert bob["answers"] >= 10 and bob["answers_p_value"] < 1e-3, bob
    first = next(i for i, a in enumerate(batch["answers"]) if a["responsible"])
    single = call_sealed(host, query(built, built["triggered"][first : first + 1]), people.auditor,
                         ForensicReply).report
    assert single["answers"][0]["responsible"] and single["contributors"]
    assert not any(c["named"] for c in single["contributors"])
    assert single["traced"] == batch["traced"] + 1


def test_a_batch_picked_by_its_answers_is_judged_against_everything_traced(trained: tuple, people: People) -> None:
    """An auditor who traces many queries and then sends together only some it picked (by their answers, or by
    whom they would blame) is judged against all it traced: the enclave counts every traced query in a sealed,
    counter-pinned ledger, so the answers null holds however the batch was chosen. Five triggered inputs, each
    answered and resting on bob, name him among few traced queries (the previous test) but not once hundreds were
    traced; a replayed request is refused and counts nothing."""
    from scipy.stats import binom

    host, built, _ = trained
    before = call_sealed(host, query(built, built["triggered"][:1]), people.auditor, ForensicReply).report["traced"]
    _, test = _poisoned()[2:]
    screened = call_sealed(host, query(built, test.x[np.arange(400) % len(test.x)]), people.auditor,
                           ForensicReply).report
    assert screened["traced"] == before + 400
    msg = signed_by(query(built, built["triggered"][:5]), people.auditor, host.keys)
    host.call(seal_request(msg, host.keys), SealedReply)
    with pytest.raises(RequestReplayed):
        host.call(seal_request(msg, host.keys), SealedReply)
    picked = call_sealed(host, query(built, built["triggered"][:5]), people.auditor, ForensicReply).report
    assert picked["traced"] == before + 410, "the replay was counted, or a trace was not"
    assert all(a["responsible"] for a in picked["answers"])
    [bob] = [c for c in picked["contributors"] if c["contributor"] == "bob"]
    assert bob["answers"] == 5 and not bob["named"]
    assert bob["answers_p_value"] == pytest.approx(binom.sf(4, picked["traced"], 0.01))
    assert binom.sf(4, 5, 0.01) < 1e-8, "judged against the batch alone, the same answers would be overwhelming"


def test_one_input_sent_many_times_is_one_answer(trained: tuple, people: People) -> None:
    """Five copies of one triggered input, a little noise on each, are all answered resting on bob's poison, but
    they are one input: the signed report counts one answer on bob, and one answer names nobody."""
    host, built, _ = trained
    one = built["triggered"][:1]
    noise = np.random.default_rng(0).normal(0, 0.01, (5, *one.shape[1:])).astype(np.float32)
    report = call_sealed(host, query(built, np.clip(one + noise, 0.0, 1.0)), people.auditor, ForensicReply).report
    assert all(a["responsible"] for a in report["answers"])
    [bob] = [c for c in report["contributors"] if c["contributor"] == "bob"]
    assert (bob["answers"], bob["answered"]) == (1, 1) and not bob["named"]


def test_participant_verifies_the_signed_report_offline(trained: tuple, people: People) -> None:
    """bob checks the enclave signed the report, then every record it pins on bob: in the job's signed log, and one
    bob committed to at upload. An operator who rewrites the report (to frame bob) breaks the signature."""
    host, built, _ = trained
    _, signed = sealed_answer(host, query(built, built["triggered"][:10]), people.auditor, ForensicReply)
    bob: MemberHome = built["bob"]
    doc = {"signed": to_json(signed)}
    assert bob.verify_trace(doc, [built["container"]]) > 0
    report = decode(signed.frame).report  # type: ignore[attr-defined]
    report["contributors"] = [{"contributor": "alice", "blame": 1.0}]  # the operator blames an innocent member
    forged = {"signed": to_json(dataclasses.replace(signed, frame=encode(ForensicReply(report=report))))}
    with pytest.raises(ReplyInvalid):
        bob.verify_trace(forged, [built["container"]])


def test_seed_method_is_available(trained: tuple, people: People) -> None:
    host, built, _ = trained
    report = call_sealed(host, query(built, built["triggered"][:5], method="caltrain-knn"), people.auditor,
                         ForensicReply).report
    assert report["method"] == "caltrain-knn" and len(report["answers"]) == 5


def test_replayed_misdirected_or_malformed_queries_refused(
    trained: tuple, people: People, fresh_enclave: EnclaveHost
) -> None:
    host, built, _ = trained
    msg = signed_by(query(built, built["triggered"][:3]), people.auditor, host.keys)
    host.call(seal_request(msg, host.keys), SealedReply)
    with pytest.raises(RequestReplayed):
        host.call(seal_request(msg, host.keys), SealedReply)
    elsewhere = signed_by(query(built, built["triggered"][:3]), people.auditor, fresh_enclave.keys)
    with pytest.raises(Unauthenticated):  # sealed to another enclave: does not even open here
        host.call(seal_request(elsewhere, fresh_enclave.keys), SealedReply)
    with pytest.raises(Unauthenticated):  # opened, but signed for another enclave instance
        host.call(seal_request(elsewhere, host.keys), SealedReply)
    with pytest.raises(QueryRejected, match="shape"):
        call_sealed(host, query(built, np.zeros((2, 1, 9, 9), dtype=np.float32)), people.auditor, ForensicReply)
    for outside in (3.4e38, -1.0, 1.5, np.nan):  # the schema's [0, 1]: features overflow, answers rest on nothing
        inputs = built["triggered"][:2].copy()
        inputs[1, 0, 0, 0] = outside
        with pytest.raises(QueryRejected, match=r"outside the schema's \[0.0, 1.0\]"):
            call_sealed(host, query(built, inputs), people.auditor, ForensicReply)
    tampered = bytearray(seal_request(signed_by(query(built, built["triggered"][:3]), people.auditor, host.keys),
                                      host.keys).ciphertext)
    tampered[-1] ^= 1
    with pytest.raises(Unauthenticated):
        host.call(dataclasses.replace(seal_request(msg, host.keys), ciphertext=bytes(tampered)), SealedReply)


def test_suspicion_ranks_every_instance_poison_above_clean(trained: tuple, people: People) -> None:
    host, built, mask = trained
    query_msg = SuspicionQuery(job_id=built["job"], method="ours", auth=UNSIGNED)
    ranking = call_sealed(host, query_msg, people.auditor, ForensicReply).report["ranking"]
    assert len(ranking) == 1400
    poisoned = {f"bob/bob-0/{i}" for i in np.flatnonzero(mask)}
    truth = [r["record_id"] in poisoned for r in ranking]
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True)
    assert roc_auc_score(truth, scores) > 0.8
