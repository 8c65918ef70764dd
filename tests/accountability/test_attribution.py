"""Attribution on a backdoored digits model (trained once, ~5 s), the tracer's proofs, and the demo block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caltrain.accountability.attacks import Scenario, make_scenario
from caltrain.accountability.attribution import Attribution, QueryBatch, TrainingSet, get_method, rank_contributors
from caltrain.accountability.errors import UnknownMethod
from caltrain.accountability.evaluation import Queries, accountability_report, collect_queries, train_model
from caltrain.accountability.fingerprints import compute_features, model_hash
from caltrain.accountability.linkage import LinkageLog, verify_linkage_proof
from caltrain.accountability.tracing import Tracer
from caltrain.crypto.signing import Identity
from caltrain.data.datasets import load_dataset
from conftest import MEASUREMENT


@pytest.fixture(scope="module")
def backdoor() -> tuple[Scenario, TrainingSet, Queries]:
    train, test = load_dataset("digits")
    s = make_scenario("badnets", train, rate=0.02, seed=0)
    merged = s.merged()
    model, _ = train_model(merged, dataset="digits", epochs=30, seed=0)
    ts = TrainingSet.build(model, merged.x, merged.y, s.contributors)
    return s, ts, collect_queries(ts, s, test, limit=40, seed=0)


def test_fingerprints_deterministic_and_unit(backdoor: tuple[Scenario, TrainingSet, Queries]) -> None:
    _, ts, _ = backdoor
    again = compute_features(ts.model, ts.x, batch_size=97).fingerprints
    np.testing.assert_allclose(again, ts.features.fingerprints, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-5)


def test_finds_badnets_poison_and_names_attacker(backdoor: tuple[Scenario, TrainingSet, Queries]) -> None:
    s, ts, q = backdoor
    assert len(q.attack) >= 10, "the backdoor must work for this test to mean anything"
    method = get_method("ours")
    method.fit(ts)
    answers = method.trace(q.attack, k=10)
    truth = s.poison_mask
    base_rate = truth[ts.y == s.target].mean()
    p10 = np.mean([truth[a.positions].mean() for a in answers])
    assert p10 > 3 * base_rate
    ranking = rank_contributors(answers[:10], ts.contributors)
    assert ranking[0][0] in s.malicious


def test_ours_ranks_poison_at_dataset_level(backdoor: tuple[Scenario, TrainingSet, Queries]) -> None:
    from sklearn.metrics import roc_auc_score

    s, ts, _ = backdoor
    method = get_method("ours")
    method.fit(ts)
    assert roc_auc_score(s.poison_mask, method.suspicion()) > 0.9


def test_natural_confusions_not_blamed(backdoor: tuple[Scenario, TrainingSet, Queries]) -> None:
    _, ts, q = backdoor
    method = get_method("ours")
    method.fit(ts)
    natural = method.trace(q.natural, k=10)
    assert len(natural) >= 3
    assert np.mean([a.responsible for a in natural]) <= 0.2


def test_ours_finds_label_flips_and_the_flipper() -> None:
    from sklearn.metrics import roc_auc_score

    train, test = load_dataset("digits")
    s = make_scenario("label-flip", train, rate=0.01, seed=1)
    merged = s.merged()
    model, _ = train_model(merged, dataset="digits", epochs=30, seed=1)
    ts = TrainingSet.build(model, merged.x, merged.y, s.contributors)
    method = get_method("ours")
    method.fit(ts)
    assert roc_auc_score(s.poison_mask, method.suspicion()) > 0.95
    flipped_source = test.subset(np.flatnonzero(test.y == s.source))
    answers = method.trace(QueryBatch.build(ts, flipped_source.x, np.full(len(flipped_source), s.target)), k=10)
    assert all(a.responsible for a in answers)
    assert rank_contributors(answers, ts.contributors, labels=ts.y)[0][0] in s.malicious


def test_train_model_keeps_one_checkpoint_per_epoch() -> None:
    train, _ = load_dataset("digits")
    model, checkpoints = train_model(train.subset(np.arange(200)), dataset="digits", epochs=2, seed=0)
    assert len(checkpoints) == 2 and not model.training
    assert all(torch.equal(v, checkpoints[-1][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, checkpoints[0][k]) for k, v in model.state_dict().items())


def test_contributor_blame_normalised_by_class_share() -> None:
    # Contributor 0 holds 90% of class 1 and supplies 8 of 10 answers' records; contributor 1 holds 10%, supplies 2.
    contributors = np.array([0] * 90 + [1] * 10)
    labels = np.ones(100, np.int64)
    answer = Attribution(np.array([0, 1, 2, 3, 4, 5, 6, 7, 90, 91]), np.zeros(10))
    ranking = rank_contributors([answer], contributors, labels=labels)
    assert ranking[0][0] == 1 and ranking[0][1] == pytest.approx(2.0)
    assert rank_contributors([answer], contributors)[0][0] == 0  # raw shares without labels
    abstained = Attribution(answer.positions, answer.scores, 0.1, responsible=False)
    assert rank_contributors([abstained], contributors, labels=labels) == []


def test_unknown_method() -> None:
    with pytest.raises(UnknownMethod):
        get_method("oracle")


def test_tracer_answers_carry_verifiable_proofs(backdoor: tuple[Scenario, TrainingSet, Queries]) -> None:
    s, ts, q = backdoor
    enclave = Identity.generate()
    log = LinkageLog(
        enclave, log_id=b"T" * 16, job_id="job-T", model_hash=model_hash(ts.model), measurement=MEASUREMENT
    )
    names = [f"participant-{c}" for c in ts.contributors]
    log.append(record_ids=[str(i) for i in range(len(ts.y))], contributors=names, labels=ts.y,
               instance_hashes=[bytes(32)] * len(ts.y), dataset_ids=names,
               dataset_indexes=np.arange(len(ts.y)), fingerprints=ts.features.fingerprints)
    method = get_method("caltrain-knn")
    method.fit(ts)
    report = Tracer(log, method, ts.y).trace(q.attack, k=5)
    assert report.contributors[0][0] == f"participant-{s.malicious[0]}"
    for answer in report.answers:
        for rec in answer.records:
            assert rec.proof.record.label == answer.predicted
            verify_linkage_proof(rec.proof, enclave.public_key, measurement=MEASUREMENT)


def test_demo_block(backdoor: tuple[Scenario, TrainingSet, Queries]) -> None:
    s, ts, q = backdoor
    block = accountability_report(ts.model, s.participants, s.poison, s.malicious, q.attack.x)
    assert set(block) == {"method", "precision_at_10", "contributor_top1_correct", "auroc", "queries"}
    assert block["contributor_top1_correct"] is True and block["queries"] == len(q.attack)
