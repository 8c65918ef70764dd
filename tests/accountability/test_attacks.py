"""The attack harness poisons exactly the asked share, only at malicious participants, as each attack defines;
honest participants are dealt evenly, label-skewed or through another device as asked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.accountability.attacks import (
    ATTACKS,
    CLEAN_LABEL,
    FLIP_PAIRS,
    Dealing,
    adaptive_blend_trigger,
    deal,
    device_shift,
    make_scenario,
    warping_trigger,
)
from caltrain.accountability.errors import ScenarioError
from caltrain.data.datasets import ArrayDataset, load_dataset
from caltrain.models.zoo import build_model

IDENTITIES = {"split-colluders": 3, "multi-trigger": 3, "sybil": 20, "clean": 0}


@pytest.fixture(scope="module")
def digits() -> tuple[ArrayDataset, ArrayDataset]:
    return load_dataset("digits")


def _scenario(attack: str, train: ArrayDataset, rate: float, **kw: object):  # type: ignore[no-untyped-def]
    surrogate = build_model("digits-cnn", seed=0) if attack == "label-consistent" else None
    return make_scenario(attack, train, rate=rate, seed=3, surrogate=surrogate, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("rate", [0.005, 0.02, 0.05])
def test_rates_exact_and_only_malicious(digits: tuple[ArrayDataset, ArrayDataset], attack: str, rate: float) -> None:
    train, test = digits
    s = _scenario(attack, train, rate)
    merged = s.merged()
    assert len(merged) == len(train)
    assert s.poison_mask.sum() == (0 if attack == "clean" else round(rate * len(train)))
    assert len(s.malicious) == min(IDENTITIES.get(attack, 1), s.poison_mask.sum())
    assert set(np.flatnonzero([m.any() | c.any() for m, c in zip(s.poison, s.cover, strict=True)])) == set(s.malicious)
    assert (merged.y[s.poison_mask] == s.target).all()
    # records neither poison nor cover are the original ones, untouched in pixels and label
    original = {(r.tobytes(), int(label)) for r, label in zip(train.x, train.y, strict=True)}
    cover = np.concatenate(s.cover)
    untouched = np.flatnonzero(~s.poison_mask & ~cover)
    assert all((merged.x[i].tobytes(), int(merged.y[i])) in original for i in untouched)
    assert not (cover & s.poison_mask).any()
    if attack in CLEAN_LABEL:
        assert s.poison_mask.sum() <= (train.y == s.target).sum()
    if attack in ("wanet", "adaptive-blend"):
        assert cover.sum() > 0 and (merged.y[cover] != s.target).all()
    else:
        assert cover.sum() == 0
    if attack == "label-flip":
        assert (s.source, s.target) == FLIP_PAIRS["digits"]
        assert not s.triggers
    attacked = s.attack_inputs(test)
    if attack == "clean":
        assert len(attacked) == 0
    elif attack != "label-flip":
        assert (attacked.y != s.target).all() and not np.allclose(attacked.x, test.x[test.y != s.target])


def test_multi_trigger_colluders_use_different_triggers(digits: tuple[ArrayDataset, ArrayDataset]) -> None:
    train, test = digits
    s = _scenario("multi-trigger", train, 0.05)
    assert len(s.triggers) == 3
    probe = test.x[:1]
    marks = [np.flatnonzero((t(probe) != probe).ravel()) for t in s.triggers]
    assert all(len(m) for m in marks) and len({tuple(m) for m in marks}) == 3


def test_sybils_are_many_small_identities(digits: tuple[ArrayDataset, ArrayDataset]) -> None:
    s = _scenario("sybil", digits[0], 0.05, dealing=Dealing(camouflage=3))
    sizes = [len(s.participants[i]) for i in s.malicious]
    poison = [int(s.poison[i].sum()) for i in s.malicious]
    assert len(sizes) == 20 and max(poison) - min(poison) <= 1 and all(n == p + 3 for n, p in zip(sizes, poison,
                                                                                                 strict=True))


def test_label_skew_and_device_shift(digits: tuple[ArrayDataset, ArrayDataset]) -> None:
    train, _ = digits
    even = _scenario("badnets", train, 0.02)
    skewed = _scenario("badnets", train, 0.02, dealing=Dealing(skew=0.3, shifted=1))

    def spread(s):  # type: ignore[no-untyped-def]
        shares = np.array([np.bincount(p.y, minlength=10) / len(p) for i, p in enumerate(s.participants)
                           if i not in s.malicious])
        return shares.std(axis=0).mean()

    assert spread(skewed) > 3 * spread(even)
    assert skewed.shifted == (0,) and even.shifted == ()
    original = {r.tobytes() for r in train.x}
    assert not any(r.tobytes() in original for r in skewed.participants[0].x)
    assert all(r.tobytes() in original for r in skewed.participants[1].x)


@given(labels=st.lists(st.integers(0, 4), min_size=1, max_size=300), parts=st.integers(1, 12),
       skew=st.one_of(st.none(), st.floats(0.05, 5.0)), seed=st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_deal_is_a_partition(labels: list[int], parts: int, skew: float | None, seed: int) -> None:
    y = np.array(labels)
    records = np.arange(len(y))
    shares = deal(y, records, parts, np.random.default_rng(seed), skew)
    assert len(shares) == parts
    assert np.array_equal(np.sort(np.concatenate(shares)), records)


def test_triggers_keep_images_in_range(digits: tuple[ArrayDataset, ArrayDataset]) -> None:
    x = digits[0].x[:20]
    warp, jitter = warping_trigger(x.shape[1:])
    blend, partial = adaptive_blend_trigger(x.shape[1:])
    rng = np.random.default_rng(0)
    for out in (warp(x), jitter(x, rng), blend(x), partial(x, rng), device_shift(x)):
        assert out.shape == x.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
        assert not np.allclose(out, x)


def test_refused(digits: tuple[ArrayDataset, ArrayDataset]) -> None:
    with pytest.raises(ScenarioError):
        make_scenario("badnets", digits[0], rate=0.2)
    with pytest.raises(ScenarioError, match="surrogate"):
        make_scenario("label-consistent", digits[0])
    with pytest.raises(ScenarioError, match="unknown attack"):
        make_scenario("oracle", digits[0])
