"""The decision rule on hand-built outcomes: thresholds, never looser than the seed, recommendation, misses."""

from __future__ import annotations

import pytest

from caltrain.exposure.config import ATTACKS, AssessConfig
from caltrain.exposure.decision import AttackOutcome, LayerVerdict, recommend, seed_rule_layer, seed_rule_misses
from caltrain.exposure.metrics import Estimate

CFG = AssessConfig(budget="tiny")


def outcome(gain_hi: float = 0.0, p95: float = 0.2, reid: float = 0.1, prior_p95: float = 0.1) -> AttackOutcome:
    e = Estimate(0.0, 0.0, 0.0)
    return AttackOutcome(
        "a",
        ssim={"mean": e, "median": e, "p95": Estimate(p95, p95, p95)},
        psnr={"mean": e, "median": e, "p95": e},
        ssim_gain={"mean": Estimate(gain_hi / 2, -gain_hi, gain_hi), "median": e, "p95": e},
        reid=Estimate(reid, reid, reid),
        prior_p95=prior_p95,
    )


def layer(name: str, seed_safe: bool = True, **bad: float) -> LayerVerdict:
    attacks = {a: outcome() for a in ATTACKS}
    if bad:
        attacks["rmle"] = outcome(**bad)
    return LayerVerdict(name, seed_safe, attacks)


@pytest.mark.parametrize(
    ("kwargs", "reconstructs"),
    [
        ({}, False),
        ({"gain_hi": 0.05}, False),
        ({"gain_hi": 0.051}, True),
        ({"p95": 0.3}, True),
        ({"p95": 0.6, "prior_p95": 0.6}, False),  # no better than what the label tells
        ({"p95": 0.66, "prior_p95": 0.6}, True),
        ({"reid": 0.15}, False),
        ({"reid": 0.16}, True),
    ],
)
def test_attack_thresholds(kwargs: dict[str, float], reconstructs: bool) -> None:
    assert bool(outcome(**kwargs).failures(CFG)) == reconstructs


def test_tiers_only_count_their_own_attacks() -> None:
    v = layer("l", reid=0.9)  # only rmle (white-box) reconstructs
    assert v.safe("black-box", CFG) and v.safe("no-data", CFG) and not v.safe("white-box", CFG)


def test_never_looser_than_the_seed_rule() -> None:
    assert not layer("l", seed_safe=False).safe("no-data", CFG)


def test_recommend_shallowest_layer_from_which_all_deeper_are_safe() -> None:
    layers = [layer("c1", reid=0.9), layer("c2"), layer("c3", reid=0.9), layer("c4"), layer("c5")]
    assert recommend(layers, "white-box", CFG, "logits") == "c4"
    assert recommend(layers, "black-box", CFG, "logits") == "c1"
    assert recommend(layers[:3], "white-box", CFG, "logits") == "logits"  # deepest unsafe: full enclave
    assert seed_rule_layer([layer("c1", seed_safe=False), layer("c2"), layer("c3")], "logits") == "c2"


def test_seed_safe_layers_that_an_attack_reconstructs_are_reported() -> None:
    layers = [layer("c1", seed_safe=False, reid=0.9), layer("c2", reid=0.9), layer("c3")]
    misses = seed_rule_misses(layers, CFG)
    assert [(m["layer"], m["attack"]) for m in misses] == [("c2", "rmle")]
    assert "picks its target among 10 same-class images 90% of the time" in misses[0]["reasons"][0]
