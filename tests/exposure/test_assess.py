"""End to end on a trained digits CNN: a shallow cut is reconstructed far beyond the prior, the class-only deep
layer is judged safe, and a layer the seed rule passes but the attacks reconstruct is reported."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import pytest
from torch import nn

from caltrain.data import load_dataset
from caltrain.exposure import ATTACKS, AssessConfig, assess
from caltrain.models import build_model
from caltrain.models.fit import accuracy, fit


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    train, test = load_dataset("digits")
    cnn = fit(build_model("digits-cnn", seed=0), train.x, train.y, epochs=20, seed=0, progress=False)
    assert accuracy(cnn, test.x, test.y) > 0.95
    # The host receives the class probabilities: the cut after `probs` exposes what a prediction exposes.
    model = nn.Sequential(OrderedDict([*cnn.named_children(), ("probs", nn.Softmax(dim=1)), ("host", nn.Identity())]))
    config = AssessConfig(budget="tiny", layers=("conv1", "fc1", "probs"), budget_overrides={"targets": 150})
    out = tmp_path_factory.mktemp("assess")
    result = assess(
        model,
        train_data=train,
        targets=test,
        config=config,
        model_name="digits-cnn+softmax",
        out_dir=out,
        progress=False,
    )
    data = result.to_json()
    assert json.loads((out / "report.json").read_text())["recommended_layer"] == data["recommended_layer"]
    return data


def by_name(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(layer for layer in report["layers"] if layer["name"] == name)


def test_every_attack_reconstructs_the_first_conv(report: dict[str, Any]) -> None:
    prior = report["baselines"]["class-mean"]["ssim"]["mean"]["value"]
    for attack in ATTACKS:
        o = by_name(report, "conv1")["attacks"][attack]
        assert o["ssim"]["mean"]["value"] > prior + 0.1, attack
        assert o["ssim_gain_over_prior"]["mean"]["lo"] > 0.1, attack
        assert o["reidentification_top1"]["value"] > 0.9, attack
    assert by_name(report, "conv1")["attacks"]["rmle"]["ssim"]["mean"]["value"] > 0.95
    assert not any(by_name(report, "conv1")["safe"].values())


def test_class_only_deep_layer_is_judged_safe_and_recommended(report: dict[str, Any]) -> None:
    probs = by_name(report, "probs")
    assert all(probs["safe"].values()), probs["attacks"]
    assert report["recommended_layer"] == "probs"
    assert report["recommendation_by_tier"] == {"no-data": "probs", "black-box": "probs", "white-box": "probs"}
    assert report["recommended_enclave_cost"] == probs["enclave_cost"]
    assert probs["enclave_cost"]["frontnet_params"] == sum(p.numel() for p in build_model("digits-cnn").parameters())


def test_seed_rule_passes_a_layer_that_attacks_reconstruct(report: dict[str, Any]) -> None:
    fc1 = by_name(report, "fc1")
    assert fc1["seed_rule"]["safe"] and fc1["seed_rule"]["fraction_safe"] >= 0.5
    assert not fc1["safe"]["white-box"]
    assert any(m["layer"] == "fc1" for m in report["seed_rule_misses"])
    assert report["seed_rule_layer"] == "fc1"  # the seed alone would cut one layer too early


def test_report_carries_seed_config_and_fsha_flag(report: dict[str, Any]) -> None:
    assert report["seed"] == 0 and report["config"]["resolved_budget"]["targets"] == 150
    assert report["training_time_hijacking"]["applies"] is True
    assert "FSHA" in report["training_time_hijacking"]["note"]
    assert report["model"]["cuts"][-1] == "host"
