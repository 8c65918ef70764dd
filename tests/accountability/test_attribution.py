"""Attribution on backdoored digits models (trained once per module, seconds): per-query decisions, the records and
contributors named, the tracer's proofs, and the demo block."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from caltrain.accountability.attacks import Dealing, Scenario, make_scenario
from caltrain.accountability.attribution import (
    CaltrainKnn,
    LinearHead,
    QueryBatch,
    TrainingSet,
    available_methods,
    get_method,
    head_draw,
    name_contributors,
)
from caltrain.accountability.evaluation import (
    Queries,
    accountability_report,
    collect_queries,
    redeal,
    redeal_rates,
    refit_redeal_rates,
    score_method,
    train_model,
)
from caltrain.accountability.fingerprints import channels_last, compute_features, model_hash
from caltrain.accountability.linkage import LinkageLog, verify_linkage_proof
from caltrain.accountability.tracing import NO_RESPONSIBLE_DATA, Tracer
from caltrain.crypto.signing import Identity
from caltrain.data.datasets import ArrayDataset, load_dataset
from caltrain.models.zoo import build_model
from conftest import MEASUREMENT

Setup = tuple[Scenario, TrainingSet, Queries]


def _setup(attack: str, *, rate: float, seed: int, **kw: object) -> Setup:
    train, test = load_dataset("digits")
    s = make_scenario(attack, train, rate=rate, seed=seed, **kw)  # type: ignore[arg-type]
    merged = s.merged()
    model, _ = train_model(merged, dataset="digits", epochs=30, seed=seed)
    ts = TrainingSet.build(model, merged.x, merged.y, s.contributors)
    return s, ts, collect_queries(ts, s, test, limit=60, seed=seed)


@pytest.fixture(scope="module")
def backdoor() -> Setup:
    return _setup("badnets", rate=0.04, seed=0)


def _named(answers: list, ts: TrainingSet) -> set[int]:  # type: ignore[type-arg]
    return {e.contributor for e in name_contributors(answers, ts.contributors, ts.y) if e.named}


def test_fingerprints_deterministic_and_unit(backdoor: Setup) -> None:
    _, ts, _ = backdoor
    again = compute_features(ts.model, ts.x, batch_size=97).fingerprints
    np.testing.assert_allclose(again, ts.features.fingerprints, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-5)


def test_a_channels_last_copy_computes_the_same_function_and_leaves_the_model_alone(backdoor: Setup) -> None:
    """What the transplant test runs its forward passes on: the same probabilities up to float rounding, every
    convolution weight channels-last, the model itself (whose fingerprints the log commits to) untouched."""
    _, ts, _ = backdoor
    before = model_hash(ts.model)
    fast = channels_last(ts.model)
    convs = [p for p in fast.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    np.testing.assert_allclose(compute_features(fast, ts.x[:200]).probs, ts.features.probs[:200], atol=1e-5)
    assert model_hash(ts.model) == before
    assert all(p.is_contiguous() for p in ts.model.parameters())


def test_backdoor_answered_with_its_poison_and_only_the_attacker_named(backdoor: Setup) -> None:
    s, ts, q = backdoor
    assert len(q.attack) >= 10, "the backdoor must work for this test to mean anything"
    method = get_method("ours")
    method.fit(ts)
    answers = method.trace(q.attack, k=10)
    # 8×8 digits leave a trigger little room to stand apart; the Fashion-MNIST figure is the benchmark's
    assert np.mean([a.responsible for a in answers]) >= 0.8
    truth = s.poison_mask
    assert np.mean([truth[a.positions].mean() for a in answers if a.responsible]) >= 0.8
    assert _named(answers, ts) == set(s.malicious)
    assert roc_auc_score(truth, method.suspicion()) > 0.9


def test_approximate_searches_give_the_same_answers(backdoor: Setup) -> None:
    """Above `exact_up_to` records the method's neighbour searches are HNSW graphs: on the same model and queries
    they give (nearly) the same decisions and name the same contributors as the exact ones."""
    s, ts, q = backdoor
    exact, approximate = get_method("ours"), get_method("ours")
    approximate.exact_up_to = 0  # type: ignore[attr-defined]
    exact.fit(ts)
    approximate.fit(ts)
    assert approximate._index.approximate and not exact._index.approximate  # type: ignore[attr-defined]
    a, b = exact.trace(q.attack, k=10), approximate.trace(q.attack, k=10)
    assert np.mean([x.responsible == y.responsible for x, y in zip(a, b, strict=True)]) >= 0.9
    assert _named(a, ts) == _named(b, ts) == set(s.malicious)
    assert np.corrcoef(exact.suspicion(), approximate.suspicion())[0, 1] > 0.95


def _clean_claimed_as_target(s: Scenario) -> np.ndarray:
    _, test = load_dataset("digits")
    return test.x[test.y != s.target]


def test_natural_confusions_not_answered_even_into_the_target(backdoor: Setup) -> None:
    """The poisoned class is no reason to blame: natural mispredictions, and clean inputs of other classes claimed
    to be predicted as the backdoor's target, get "no responsible training data found"; no honest one is named."""
    s, ts, q = backdoor
    method = get_method("ours")
    method.fit(ts)
    natural = method.trace(q.natural, k=10)
    # ten natural mispredictions on this small set; two into class 9 sit among hard 9s that the set-aside test takes
    # away (its null, measured on 1,400 training inputs the model has fit, is thin): the benchmark's 100 per cell
    # on Fashion-MNIST are the calibrated figure
    assert len(natural) >= 3 and np.mean([a.responsible for a in natural]) <= 0.2
    clean = _clean_claimed_as_target(s)
    claimed = method.trace(QueryBatch.build(ts, clean, np.full(len(clean), s.target)), k=10)
    assert len(claimed) > 200 and np.mean([a.responsible for a in claimed]) <= 0.03
    assert _named([*natural, *claimed], ts) <= set(s.malicious)  # a clean input may carry a trigger-like corner


@pytest.fixture(scope="module")
def warp() -> Setup:
    return _setup("wanet", rate=0.04, seed=0)


def test_a_warp_trigger_is_answered_by_the_set_aside_tests(warp: Setup) -> None:
    """WaNet's warp is not an additive pattern, so the transplant test cannot carry it: the two tests that set the
    most label-surprising records aside (do the query's nearest records stop voting for the prediction; does the
    model's last part, refitted without them, stop predicting it) answer queries the other two miss. Natural
    mispredictions into other classes are not answered; one into the target is answered only where the poison made
    it (a model trained on the same records without the poison, same seed, does not make it)."""
    s, ts, q = warp
    assert len(q.attack) >= 30, "the warp must work on enough inputs for this test to mean anything"
    with_it, without = get_method("ours"), get_method("ours")
    without.tests = ("transplant", "neighbourhood")  # type: ignore[attr-defined]
    with_it.fit(ts)
    without.fit(ts)
    answered = [a for a in with_it.trace(q.attack, k=10) if a.responsible]
    baseline = np.mean([a.responsible for a in without.trace(q.attack, k=10)])
    set_aside = [min(a.details["set_aside_p"], a.details["retrained_head_p"]) < 0.01 for a in answered]
    assert np.mean(set_aside) >= 0.8
    assert len(answered) / len(q.attack) >= baseline + 0.3
    assert np.mean(s.poison_mask[np.concatenate([a.positions for a in answered])]) >= 0.8
    natural = with_it.trace(q.natural, k=10)
    assert natural and not any(a.responsible for a in natural)
    into_target = with_it.trace(q.natural_into_target, k=10)
    blamed = q.natural_into_target.x[[a.responsible for a in into_target]]
    if len(blamed):
        honest = ~s.poison_mask
        clean = ArrayDataset(ts.x[honest], ts.y[honest], "digits without the poison", ts.num_classes)
        clean_model, _ = train_model(clean, dataset="digits", epochs=30, seed=0)
        assert not np.any(compute_features(clean_model, blamed).predictions == s.target)


def test_the_retrained_head_answers_a_warp_the_neighbourhood_tests_miss(warp: Setup) -> None:
    """The retrained-head test on its own terms: of the warp's mispredictions, those the three other tests leave
    unanswered are mostly answered once it is added, at a level that keeps it a per-query test (its p-value is what
    answers them)."""
    _, ts, q = warp
    three, four = get_method("ours"), get_method("ours")
    three.tests = ("transplant", "neighbourhood", "set_aside")  # type: ignore[attr-defined]
    three.fit(ts)
    four.fit(ts)
    missed = np.flatnonzero([not a.responsible for a in three.trace(q.attack, k=10)])
    assert len(missed) >= 10, "the three tests must leave enough of the warp unanswered for this to mean anything"
    now = four.trace(q.attack.select(missed), k=10)
    assert np.mean([a.responsible and a.details["retrained_head_p"] < 0.01 for a in now]) >= 0.8


def test_a_warp_poisoner_cannot_vouch_for_its_own_labels() -> None:
    """At 8 % the warped poison is dense enough to be its own look-alikes: judged by any party's records (here: all
    dealt to one contributor) only about 0.6 of it is among the records set aside; judged by other contributors'
    records as well, nearly all of it, also when the attacker spreads it over ten identities that vouch for each
    other (they act as one party)."""
    s, ts, _ = _setup("wanet", rate=0.08, seed=0)
    attacker = np.unique(ts.contributors[s.poison_mask])
    assert len(attacker) == 1
    mine = np.flatnonzero(ts.contributors == attacker[0])
    sybils = ts.contributors.copy()
    sybils[mine] = ts.contributors.max() + 1 + np.arange(len(mine)) % 10

    def poison_set_aside(contributors: np.ndarray) -> float:
        method = get_method("ours")
        method.fit(replace(ts, contributors=contributors))
        aside = np.ones(len(ts.y), bool)
        aside[method._kept] = False  # type: ignore[attr-defined]
        return float(aside[s.poison_mask].mean())

    assert poison_set_aside(ts.contributors) >= 0.95
    assert poison_set_aside(sybils) >= 0.95
    assert poison_set_aside(np.zeros_like(ts.contributors)) <= 0.8


@pytest.mark.parametrize(("records", "classes"), [(12, 2), (25, 1), (40, 10)])
def test_every_method_fits_and_traces_a_tiny_or_one_class_training_set(records: int, classes: int) -> None:
    """Fewer records than the input-space projection has dimensions, a class with no records, or one class only
    (no other class to carry a trigger to): every method still answers each query, with a confidence, and `ours`
    never answers "responsible" for a prediction no training record carries."""
    rng = np.random.default_rng(0)
    x = rng.random((records, 1, 8, 8), dtype=np.float32)
    model = build_model("digits-cnn", seed=0).eval()
    labels = rng.integers(0, classes, records)
    favourite = int(np.bincount(compute_features(model, x).predictions).argmax())
    labels[labels == favourite] = (favourite + 1) % 10  # what the model predicts most, no record carries
    ts = TrainingSet.build(model, x, labels, rng.integers(0, 3, records))
    for name in available_methods():
        method = get_method(name)
        method.fit(ts)
        answers = method.trace(QueryBatch.build(ts, x[:4]))
        assert len(answers) == 4 and all(0.0 <= a.confidence <= 1.0 for a in answers), name
    ours = get_method("ours")
    ours.alpha = 1.0  # every query's evidence passes: only having no records of its class leaves it unanswered
    ours.fit(ts)
    queries = QueryBatch.build(ts, x)
    unfounded = ~np.isin(queries.predicted, ts.y)
    assert unfounded.any()
    assert not any(a.responsible for a, u in zip(ours.trace(queries), unfounded, strict=True) if u)


@pytest.mark.parametrize("sharing", [True, False])
def test_a_querys_records_are_those_that_share_what_sets_it_apart(sharing: bool) -> None:
    """A trigger on one class's images, relabelled to the target, and an honest party's mislabelled images of
    another class, just as suspicious and nearer the triggered query of that other class: the query's records are
    the trigger's carriers, because they share what sets the query apart from its look-alikes (its trigger).
    Without that term (the control) the nearer mislabelled records come first."""
    rng = np.random.default_rng(0)
    prototypes = rng.random((10, 1, 8, 8), dtype=np.float32) * 0.6
    trigger = np.zeros((1, 8, 8), np.float32)
    trigger[0, :3, :3] = 0.4

    def images(label: int, n: int, *, triggered: bool = False) -> np.ndarray:
        x = prototypes[label] + rng.normal(0, 0.03, (n, 1, 8, 8)) + (trigger if triggered else 0.0)
        return np.clip(x, 0.0, 1.0).astype(np.float32)

    x = np.concatenate([images(c, 30) for c in range(10)] + [images(1, 5, triggered=True), images(3, 10)])
    y = np.concatenate([np.repeat(np.arange(10), 30), np.zeros(15, np.int64)])  # poison, then the mislabelled
    contributors = np.concatenate([rng.integers(0, 3, 300), np.full(5, 3), np.full(10, 4)])
    ts = TrainingSet.build(build_model("digits-cnn", seed=0).eval(), x, y, contributors)
    ours = get_method("ours")
    ours.sharing_weight = ours.sharing_weight if sharing else 0.0
    ours.fit(ts)
    answers = ours.trace(QueryBatch.build(ts, images(3, 4, triggered=True), np.zeros(4, np.int64)), k=5)
    carriers = [int(np.isin(a.positions, np.arange(300, 305)).sum()) for a in answers]
    assert carriers == ([5] * 4 if sharing else [0] * 4)


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 5_000), width=st.integers(1, 4_096), records=st.integers(1, 6_000),
       floats=st.integers(1, 2**22))
def test_the_retrained_head_draws_within_its_record_and_memory_bounds(total: int, width: int, records: int,
                                                                      floats: int) -> None:
    """Distinct records, sorted, the same on every call; all of them when they fit, else as many as both bounds
    allow (at least one): a wide model's features bound the draw by memory, not by the record count."""
    drawn = head_draw(total, width, records=records, floats=floats)
    expected = min(total, records, max(floats // width, 1))
    assert len(drawn) == expected and len(np.unique(drawn)) == expected
    assert drawn.min() >= 0 and drawn.max() < total and bool(np.all(np.diff(drawn) > 0))
    assert expected == 1 or expected * width <= floats
    assert np.array_equal(drawn, head_draw(total, width, records=records, floats=floats))


def test_setting_much_of_one_class_aside_does_not_shrink_it_in_the_retrained_head() -> None:
    """A clean-label poison is most of its class, so most of that class may be set aside: the retrained head must
    then not send the class's borderline inputs elsewhere merely because fewer records carry its label (that would
    answer natural confusions into the class, a class-level signal). With each class weighted as in the full fit,
    dropping 70 % of one class at random barely moves its borderline inputs; without, it moves them a fifth."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 1.5
    y = np.repeat(np.arange(3), 600)
    x = (centres[y] + rng.normal(size=(len(y), 8))).astype(np.float32)
    kept = np.flatnonzero((y != 0) | (rng.random(len(y)) < 0.3))
    recipe = {"mean": x.mean(axis=0), "scale": x.std(axis=0), "weight_decay": 1e-2}
    full = LinearHead(x, y, 3, **recipe)
    weights = np.bincount(y, minlength=3) / np.bincount(y[kept], minlength=3)
    weighted = LinearHead(x[kept], y[kept], 3, **recipe, class_weights=weights)
    unweighted = LinearHead(x[kept], y[kept], 3, **recipe)
    labels = rng.integers(0, 3, 3000)
    probe = (centres[labels] + rng.normal(size=(3000, 8))).astype(np.float32)
    before = full.probs(probe)[:, 0]
    border = (before > 0.3) & (before < 0.7)
    assert border.sum() >= 50
    assert np.mean(before[border] - weighted.probs(probe)[border, 0]) < 0.02
    assert np.mean(before[border] - unweighted.probs(probe)[border, 0]) > 0.1


@pytest.mark.parametrize("tests", [(), ("transplant", "retrain")])
def test_an_unknown_or_empty_test_list_is_refused_before_fitting(backdoor: Setup, tests: tuple[str, ...]) -> None:
    method = get_method("ours")
    method.tests = tests  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="tests must be some of"):
        method.fit(backdoor[1])


def test_natural_mispredictions_from_another_device_do_not_name_its_honest_owner() -> None:
    """An honest participant whose images come from another device holds most of the records around any input from
    that device: a natural misprediction there must not be answered as resting on its records, nor name it, when
    all of that device's mispredictions are traced together (the benchmark's device audit). The paper's kNN, which
    answers everything, names it. (On this small set a few of the device's inputs are predicted as the backdoor's
    target and answered as resting on the poison alone: the backdoor makes its target where odd inputs go. Those
    are the attacker's, not the owner's.)"""
    s, ts, q = _setup("badnets", rate=0.04, seed=0, dealing=Dealing(shifted=1))
    assert q.other_device is not None and len(q.other_device) >= 20, "the device must cost accuracy here"
    scores = {}
    for name in ("ours", "caltrain-knn"):
        method = get_method(name)
        method.fit(ts)
        scores[name] = score_method(method, ts, s, q, redeals=2)
        if name == "ours":
            owner = ts.contributors == s.shifted[0]
            answers = method.trace(q.other_device, k=10)
            assert np.mean([a.responsible and owner[a.evidence_records].any() for a in answers]) <= 0.1
    assert scores["ours"]["device_queries"] == len(q.other_device)
    assert scores["ours"]["device_owner_named"] == 0.0
    assert scores["caltrain-knn"]["device_natural_answered"] == 1.0 and scores["caltrain-knn"]["device_owner_named"]


def test_refit_redeals_measure_a_method_whose_fit_reads_who_supplied_what(backdoor: Setup) -> None:
    """`ours` sets records aside by other contributors' look-alikes, so its false-naming null is measured by refitting
    on every re-deal. For a method whose fit ignores contributors the refit names exactly what reusing its answers
    names, from the same draws; `ours`, refitted on re-deals of the poisoned set among honest parties, names none."""
    s, ts, q = backdoor
    knn = get_method("caltrain-knn")
    knn.fit(ts)
    answers = [a for batch in (q.attack, q.natural, q.natural_into_target) for a in knn.trace(batch, k=10)]
    honest = len(s.honest)
    plain = redeal_rates(lambda _: answers, ts.y, honest, np.random.default_rng(7), redeals=3, skew=0.3)
    fitted_with: list[np.ndarray] = []

    class Recording(CaltrainKnn):
        def fit(self, ts: TrainingSet) -> None:
            fitted_with.append(ts.contributors)
            super().fit(ts)

    refit = refit_redeal_rates(Recording, ts, q, honest, np.random.default_rng(7), redeals=3)
    assert list(plain.values()) == list(refit.values())
    rng = np.random.default_rng(7)  # each fit saw its own re-deal, the same draws in the same order
    dealt = [redeal(ts.y, honest, rng, skew) for skew in (None, None, None, 0.3, 0.3, 0.3)]
    assert len(fitted_with) == 6 and all(np.array_equal(a, b) for a, b in zip(fitted_with, dealt, strict=True))
    ours = refit_redeal_rates(partial(get_method, "ours"), ts, q, honest, np.random.default_rng(7), redeals=2)
    assert ours == {"refit_redeal_fpr_even": 0.0, "refit_redeal_fwer_even": 0.0,
                    "refit_redeal_fpr_dirichlet": 0.0, "refit_redeal_fwer_dirichlet": 0.0}


def test_label_flips_ranked_at_dataset_level_and_nobody_honest_named() -> None:
    """Flips the model does not memorise change few predictions, and those look natural per query (see
    docs/accountability.md); the flipped records still top the dataset-level ranking."""
    s, ts, _ = _setup("label-flip", rate=0.03, seed=1)
    method = get_method("ours")
    method.fit(ts)
    assert roc_auc_score(s.poison_mask, method.suspicion()) > 0.95
    _, test = load_dataset("digits")
    source = test.x[test.y == s.source]
    answers = method.trace(QueryBatch.build(ts, source, np.full(len(source), s.target)), k=10)
    assert _named(answers, ts) <= set(s.malicious)


def test_sybils_with_eight_poison_records_each_are_named() -> None:
    s, ts, q = _setup("sybil", rate=0.0225, seed=0, sybils=4, dealing=Dealing(camouflage=5))
    assert [int(p.sum()) for p in s.poison if p.any()] == [8, 8, 8, 8]
    method = get_method("ours")
    method.fit(ts)
    answers = method.trace(q.attack, k=10)
    assert _named(answers, ts) == set(s.malicious)


def test_honest_contributors_under_label_skew_and_another_device_not_named() -> None:
    s, ts, q = _setup("badnets", rate=0.02, seed=3, dealing=Dealing(skew=0.3, shifted=2))
    method = get_method("ours")
    method.fit(ts)
    everything = [*method.trace(q.attack, k=10), *method.trace(q.natural, k=10),
                  *method.trace(q.natural_into_target, k=10)]
    assert _named(everything, ts) <= set(s.malicious)


def test_train_model_keeps_one_checkpoint_per_epoch() -> None:
    train, _ = load_dataset("digits")
    model, checkpoints = train_model(train.subset(np.arange(200)), dataset="digits", epochs=2, seed=0)
    assert len(checkpoints) == 2 and not model.training
    assert all(torch.equal(v, checkpoints[-1][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, checkpoints[0][k]) for k, v in model.state_dict().items())


def _log(ts: TrainingSet) -> tuple[LinkageLog, Identity]:
    enclave = Identity.generate()
    log = LinkageLog(
        enclave, log_id=b"T" * 16, job_id="job-T", model_hash=model_hash(ts.model), measurement=MEASUREMENT
    )
    names = [f"participant-{c}" for c in ts.contributors]
    log.append(record_ids=[str(i) for i in range(len(ts.y))], contributors=names, labels=ts.y,
               instance_hashes=[bytes(32)] * len(ts.y), dataset_ids=names,
               dataset_indexes=np.arange(len(ts.y)), fingerprints=ts.features.fingerprints)
    return log, enclave


@pytest.mark.parametrize("method_name", ["ours", "caltrain-knn"])
def test_tracer_report_carries_proofs_verdicts_and_contributor_evidence(backdoor: Setup, method_name: str) -> None:
    s, ts, q = backdoor
    log, enclave = _log(ts)
    method = get_method(method_name)
    method.fit(ts)
    report = Tracer(log, method, ts.y).trace(q.attack, k=5).to_dict()
    top = report["contributors"][0]
    assert top["contributor"] == f"participant-{s.malicious[0]}" and top["named"] is True
    assert {"blame", "p_value", "records_p_value", "answers_p_value", "records", "expected_records",
            "answered_share", "answers", "answered", "traced"} <= set(top)
    assert (top["answers_p_value"] is None) == (method_name == "caltrain-knn") and top["traced"] == len(q.attack)
    assert all(not c["named"] for c in report["contributors"][1:])
    for answer in report["answers"]:
        assert answer["verdict"] in ("attributed", NO_RESPONSIBLE_DATA)
        for rec in answer["records"]:
            assert rec["record"]["label"] == answer["predicted"]
    traced = Tracer(log, method, ts.y).trace(q.attack, k=5)
    for rec in traced.answers[0].records:
        verify_linkage_proof(rec.proof, enclave.public_key, measurement=MEASUREMENT)
    blamed = traced.contributors[0].proofs  # the named contributor can check every record it is blamed for
    assert blamed and all(p.record.contributor == top["contributor"] for p in blamed)
    for proof in blamed:
        verify_linkage_proof(proof, enclave.public_key, measurement=MEASUREMENT)
    assert len(top["evidence_records"]) == len(blamed)
    if method_name == "ours":
        clean = _clean_claimed_as_target(s)[:100]
        natural = Tracer(log, method, ts.y).trace(QueryBatch.build(ts, clean, np.full(len(clean), s.target)),
                                                  k=5).to_dict()
        assert np.mean([a["verdict"] == NO_RESPONSIBLE_DATA for a in natural["answers"]]) >= 0.97
        named = {c["contributor"] for c in natural["contributors"] if c["named"]}
        assert named <= {f"participant-{m}" for m in s.malicious}
        assert {"p", "transplant", "transplant_p", "neighbourhood_conflict", "neighbourhood_p", "set_aside_support",
                "set_aside_p", "retrained_head_drop", "retrained_head_p"} <= set(natural["answers"][0]["evidence"])


def test_demo_block(backdoor: Setup) -> None:
    s, ts, q = backdoor
    block = accountability_report(ts.model, s.participants, s.poison, s.malicious, q.attack.x)
    assert block["all_guilty_named_no_innocent"] is True and block["queries"] == len(q.attack)
    assert block["precision_at_10"] >= 0.8
