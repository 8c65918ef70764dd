"""The main job end to end (short): the report has every key scripts rely on, and the run is honest about
what it measured: protected and plain weights identical, the backdoor's contributor named."""

from __future__ import annotations

import json
from pathlib import Path

from caltrain.cli.main import main


def test_demo_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "12"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"seed", "dataset", "participants", "training", "accountability", "exposure"} <= set(report)
    training = report["training"]
    assert {"frontnet_layers", "epochs", "accuracy_plain", "accuracy_protected", "weights_identical"} <= set(training)
    assert training["weights_identical"] is True and training["accuracy_plain"] == training["accuracy_protected"]
    accountability = report["accountability"]
    assert {"method", "precision_at_10", "contributor_top1_correct", "auroc", "queries"} <= set(accountability)
    assert accountability["queries"] > 0
    assert {"recommended_layer", "seed_rule_layer", "layers"} <= set(report["exposure"])
    assert [p["name"] for p in report["participants"]] == ["hospital-a", "hospital-b", "lab-c", "clinic-d"]
    # a second run into the same folder replaces the first (what `make demo` twice does)
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
