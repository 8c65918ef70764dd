"""Contributor naming is set detection with an exact false-positive control: every culprit named whatever its size,
no honest contributor named when records are re-dealt, evenly or label-skewed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import hypergeom

from caltrain.accountability.attribution import (
    Attribution,
    _hypergeometric_tail,
    distinct_answers,
    distinct_inputs,
    name_contributors,
)
from caltrain.accountability.evaluation import redeal
from caltrain.data.datasets import load_dataset


def _answers(evidence: np.ndarray, per_answer: int = 10, level: float | None = None) -> list[Attribution]:
    chunks = [evidence[i : i + per_answer] for i in range(0, len(evidence), per_answer)]
    return [Attribution(c, np.zeros(len(c)), support=c, level=level) for c in chunks]


def _abstentions(count: int, level: float) -> list[Attribution]:
    return [Attribution(np.arange(10), np.zeros(10), 0.0, responsible=False, level=level) for _ in range(count)]


def _population(rng: np.random.Generator, honest: int = 10, per_class: int = 400, classes: int = 5
                ) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(classes), per_class)
    return labels, rng.integers(0, honest, len(labels))


@given(sizes=st.lists(st.integers(0, 12), min_size=1, max_size=4), population=st.integers(13, 60),
       observed=st.integers(0, 30))
@settings(max_examples=80, deadline=None)
def test_tail_is_the_exact_hypergeometric_tail(sizes: list[int], population: int, observed: int) -> None:
    draws = [(population, min(s, population), min(population, 2 * s + 1)) for s in sizes]
    rng = np.random.default_rng(0)
    sims = sum(hypergeom.rvs(n_pop, k, n, size=20000, random_state=rng) for n_pop, k, n in draws)
    assert _hypergeometric_tail(observed, draws) == pytest.approx(float(np.mean(sims >= observed)), abs=0.015)
    if len(draws) == 1:
        assert _hypergeometric_tail(observed, draws) == pytest.approx(hypergeom.sf(observed - 1, *draws[0]), abs=1e-9)


@pytest.mark.parametrize("poison_records", [5, 50, 500])
def test_culprit_named_whatever_its_size(poison_records: int) -> None:
    """A contributor that supplied 5 poison records is named like one that supplied 500; honest ones are not."""
    rng = np.random.default_rng(1)
    labels, contributors = _population(rng, per_class=2000)
    target = np.flatnonzero(labels == 0)
    culprit = rng.choice(target, poison_records, replace=False)
    contributors[culprit] = 99
    contributors[rng.choice(np.flatnonzero(labels == 3), 20, replace=False)] = 99  # camouflage elsewhere
    noise = rng.choice(np.setdiff1d(target, culprit), 10, replace=False)  # some wrong evidence too
    named = name_contributors(_answers(np.concatenate([culprit, noise])), contributors, labels)
    assert [e.contributor for e in named if e.named] == [99]
    assert named[0].records == poison_records and named[0].blame > 3


def test_sybils_with_five_poison_records_each_all_named() -> None:
    rng = np.random.default_rng(2)
    labels, contributors = _population(rng, per_class=2000)
    target = rng.permutation(np.flatnonzero(labels == 0))
    evidence = []
    for sybil in range(20):
        mine = target[sybil * 5 : sybil * 5 + 5]
        contributors[mine] = 100 + sybil
        contributors[rng.choice(np.flatnonzero(labels != 0), 10, replace=False)] = 100 + sybil  # small clean share
        evidence.append(mine)
    named = {e.contributor for e in name_contributors(_answers(np.concatenate(evidence)), contributors, labels)
             if e.named}
    assert named == set(range(100, 120))


def test_abstentions_name_nobody() -> None:
    labels, contributors = _population(np.random.default_rng(3))
    answer = Attribution(np.arange(10), np.zeros(10), 0.1, responsible=False)
    assert name_contributors([answer], contributors, labels) == []


def _party_behind_a_device(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Party 7 holds the records nearest every input from its device: any answer there rests on them alone."""
    labels, contributors = _population(rng, per_class=2000)
    own = rng.choice(np.flatnonzero(labels == 0), 300, replace=False)
    contributors[own] = 7
    return labels, contributors, own


def test_a_few_false_answers_resting_on_one_party_do_not_name_it() -> None:
    """3 of 300 traced queries answered (the per-query level, 0.01, allows that many false answers), each resting
    on the same honest party's records: its records are far over chance, but that many answers are no evidence.
    Ten times as many answers are."""
    labels, contributors, own = _party_behind_a_device(np.random.default_rng(5))
    few = [*_answers(own[:30], level=0.01), *_abstentions(297, 0.01)]
    [party] = [e for e in name_contributors(few, contributors, labels) if e.contributor == 7]
    assert party.records_p_value < 1e-10 and (party.answers, party.answered, party.traced) == (3, 3, 300)
    assert party.answers_p_value is not None and party.p_value == party.answers_p_value > 0.1 and not party.named
    many = [*_answers(own, level=0.01), *_abstentions(270, 0.01)]
    assert [e.contributor for e in name_contributors(many, contributors, labels) if e.named] == [7]


def test_answers_picked_out_of_many_traced_are_judged_against_all_of_them() -> None:
    """An auditor who traced 2,000 queries (20 false answers expected at the level) and then sends together the
    ten answered ones resting on one honest party does not get it named: with `traced` (the enclave's ledger) the
    answers null counts every query they were picked from. The same ten, truly the only ones traced, name it."""
    labels, contributors, own = _party_behind_a_device(np.random.default_rng(7))
    picked = _answers(own[:100], level=0.01)
    assert [e.contributor for e in name_contributors(picked, contributors, labels) if e.named] == [7]
    [party] = [e for e in name_contributors(picked, contributors, labels, traced=2000) if e.contributor == 7]
    assert party.traced == 2000 and party.answers_p_value is not None and party.answers_p_value > 0.5
    assert not party.named
    with pytest.raises(ValueError, match="traced"):
        name_contributors(picked, contributors, labels, traced=len(picked) - 1)


def test_copies_of_an_input_are_one_input_and_distinct_inputs_are_not() -> None:
    """Exact copies and copies with a little noise (sigma 0.02 on [0, 1] pixels) of 20 test images are 20 inputs;
    every one of the 359 distinct digits test images is its own."""
    train, test = load_dataset("digits")
    rng = np.random.default_rng(0)
    base = test.x[:20]
    noisy = np.clip(base + rng.normal(0, 0.02, base.shape).astype(np.float32), 0.0, 1.0)
    groups = distinct_inputs(np.concatenate([base, base, noisy]), train.x)
    assert len(np.unique(groups)) == 20
    assert np.array_equal(groups[:20], groups[20:40]) and np.array_equal(groups[:20], groups[40:])
    assert len(np.unique(distinct_inputs(test.x, train.x))) == len(test.x)


@given(order=st.permutations(list(range(12))))
@settings(max_examples=30, deadline=None)
def test_which_inputs_are_one_does_not_depend_on_their_order(order: list[int]) -> None:
    train, test = load_dataset("digits")
    x = np.concatenate([test.x[:6], test.x[:6] + 0.01])
    groups, shuffled = distinct_inputs(x, train.x), distinct_inputs(x[order], train.x)
    assert all((groups[order[i]] == groups[order[j]]) == (shuffled[i] == shuffled[j])
               for i in range(12) for j in range(12))


def test_one_falsely_answered_input_sent_ten_times_names_nobody() -> None:
    """An auditor who found one input falsely answered, resting on an honest party's records, and sends it ten
    times (with a little noise each time) has one answer, not ten: one answered input never names anyone. Counted
    as ten, the party would be named."""
    labels, contributors, own = _party_behind_a_device(np.random.default_rng(8))
    train, test = load_dataset("digits")
    rng = np.random.default_rng(1)
    x = np.clip(test.x[:1] + rng.normal(0, 0.01, (10, *test.x.shape[1:])).astype(np.float32), 0.0, 1.0)
    answers = [Attribution(own[:10], np.zeros(10), support=own[:10], level=0.01) for _ in range(10)]
    assert [e.contributor for e in name_contributors(answers, contributors, labels) if e.named] == [7]
    distinct = distinct_answers(x, answers, train.x)
    [party] = [e for e in name_contributors(answers, contributors, labels, distinct=distinct) if e.contributor == 7]
    assert (party.answers, party.answered) == (1, 1) and not party.named
    with pytest.raises(ValueError, match="distinct"):
        name_contributors(answers, contributors, labels, distinct=distinct[:-1])


def test_one_answered_query_names_nobody_at_a_per_query_level() -> None:
    """A method with a per-query test cannot prove blame with one answer: it may be the false answer its level
    allows. A method without one (it answers everything) is judged on the records alone, as before."""
    labels, contributors, own = _party_behind_a_device(np.random.default_rng(6))
    assert not any(e.named for e in name_contributors(_answers(own[:10], level=0.01), contributors, labels))
    assert [e.contributor for e in name_contributors(_answers(own[:10]), contributors, labels) if e.named] == [7]


def test_false_answers_at_the_level_name_their_party_at_most_alpha_of_the_time() -> None:
    """The worst case for the answers null: every false answer rests on the same honest party. With each of 300
    traced queries answered independently at the level, that party is named in at most alpha of 2,000 audits."""
    rng = np.random.default_rng(7)
    labels, contributors, own = _party_behind_a_device(rng)
    named = 0
    for _ in range(2000):
        hits = int(rng.binomial(300, 0.01))
        audit = [*_answers(rng.choice(own, 10 * hits, replace=False), level=0.01), *_abstentions(300 - hits, 0.01)]
        named += any(e.named for e in name_contributors(audit, contributors, labels))
    assert named <= 20


@given(answered=st.integers(1, 12), abstained=st.integers(0, 200), seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_more_traced_queries_never_name_more_contributors(answered: int, abstained: int, seed: int) -> None:
    """Abstentions added to an audit can only weaken the evidence: whoever is named with them is named without."""
    rng = np.random.default_rng(seed)
    labels, contributors = _population(rng)
    evidence = rng.choice(np.flatnonzero(labels == int(rng.integers(0, 5))), 10 * answered, replace=False)
    contributors[evidence[: rng.integers(0, len(evidence) + 1)]] = 11
    answers = _answers(evidence, level=0.01)

    def named(audit: list[Attribution]) -> set[int]:
        return {e.contributor for e in name_contributors(audit, contributors, labels) if e.named}

    assert named([*answers, *_abstentions(abstained, 0.01)]) <= named(answers)


@pytest.mark.parametrize("skew", [None, 0.3])
def test_false_positive_rate_under_redealing(skew: float | None) -> None:
    """Records re-dealt among honest contributors (so nobody is responsible) with evidence concentrated in one
    class: the familywise rate of naming anyone stays under alpha = 0.01 (here: in 400 re-deals, at most 12)."""
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(10), 300)
    evidence = np.concatenate([rng.choice(np.flatnonzero(labels == 0), 150, replace=False),
                               rng.choice(np.flatnonzero(labels == 4), 30, replace=False)])
    answers = _answers(evidence)
    anyone = [any(e.named for e in name_contributors(answers, redeal(labels, 10, rng, skew), labels))
              for _ in range(400)]
    assert sum(anyone) <= 12


@given(labels=st.lists(st.integers(0, 3), min_size=1, max_size=200), honest=st.integers(1, 15),
       skew=st.one_of(st.none(), st.floats(0.05, 3.0)), seed=st.integers(0, 2**31))
@settings(max_examples=50, deadline=None)
def test_redeal_keeps_every_record_and_only_honest_ids(labels: list[int], honest: int, skew: float | None,
                                                       seed: int) -> None:
    dealt = redeal(np.array(labels), honest, np.random.default_rng(seed), skew)
    assert len(dealt) == len(labels) and set(dealt.tolist()) <= set(range(honest))
