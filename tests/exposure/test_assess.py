"""End to end on a trained digits CNN: a shallow cut is reconstructed far beyond the prior, the class-only deep
layer is judged safe, and a layer the seed rule passes but the attacks reconstruct is reported."""

from __future__ import annotations

import html
import json
import re
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
    written = json.loads((out / "report.json").read_text())
    assert written["recommended_layer"] == data["recommended_layer"]
    page = (out / "report.html").read_text()
    text = re.sub(r'src="data:image/png;base64,[^"]*"', "", page)
    # the recommendation comes first, in words, before any figure or table
    assert text.index(html.escape(data["summary"]["headline"])) < min(text.index("<figure"), text.index("<table"))
    for number in (written["model"]["weights_digest"], f"{written['model']['test_accuracy']:.1%}", "chance 10%"):
        assert number in text
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


def test_summary_says_what_to_do_first_in_words(report: dict[str, Any]) -> None:
    s = report["summary"]
    assert s["headline"].startswith("Cut after probs: blocks 1–6 run in the enclave")
    assert "One cut earlier (after fc1)" in s["reason"] and "chance 10%" in s["reason"]
    assert (
        s["cost"] == "Enclave cost: 38,282 parameters (100% of the model) and 0.675 MFLOPs (100% of its compute), "
        f"about {report['recommended_enclave_cost']['latency_ms']:.2g} ms per input here."
    )
    assert [t["advice"] for t in s["by_tier"]] == ["cut after probs"] * 3
    assert "would cut after fc1: too early" in s["seed_rule"]


def test_json_keeps_what_the_page_shows(report: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    assert report["model"]["hash"] is None and len(report["model"]["weights_digest"]) == 64
    assert report["targets"] == 150 and report["auxiliary_images"] == 800 and report["test_records"] == 359
    assert report["model"]["test_accuracy"] > 0.95 and report["caltrain_version"] and "T" in report["created"]
    assert report["thresholds"] == {
        "max_ssim_gain": 0.05,
        "max_p95_ssim": 0.3,
        "candidates_k": 10,
        "chance": 0.1,
        "reid_slack": 0.05,
        "max_reid": pytest.approx(0.15),
        "seed_safe_fraction": 0.5,
    }
    conv1 = by_name(report, "conv1")
    assert conv1["cost_share"]["params"] == pytest.approx(160 / 38282)
    for attack in conv1["attacks"].values():
        assert len(attack["gallery_ssim"]) == 6 and set(attack["failed_criteria"]) <= {
            "gain",
            "p95",
            "re-identification",
        }
        assert attack["p95_bar"] >= 0.3
    assert len(report["baselines"]["class-mean"]["gallery_ssim"]) == 6
