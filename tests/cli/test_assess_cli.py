"""`caltrain assess` on digits with a tiny budget writes report.json, PNG plots and a self-contained HTML page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from caltrain.cli.main import main
from caltrain.cli.model_file import ModelFile
from caltrain.models import ZOO, build_model
from caltrain.training.core import state_digest

PNG = b"\x89PNG\r\n\x1a\n"


def test_trains_the_zoo_model_and_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "assess",
        "--data",
        "digits",
        "--out",
        str(tmp_path),
        "--budget",
        "tiny",
        "--epochs",
        "5",
        "--seed",
        "3",
        "--no-progress",
    ]
    assert main(argv) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["seed"] == 3 and data["model"]["name"] == "digits-cnn"
    assert data["model"]["hash"] == ZOO["digits-cnn"].hash and 0.8 < data["model"]["test_accuracy"] <= 1
    assert [layer["name"] for layer in data["layers"]] == ["conv1", "conv2", "fc1"]  # flatten adds nothing
    assert data["recommended_layer"] in data["model"]["cuts"] and data["seed_rule_layer"] in data["model"]["cuts"]
    for name in ("cost_risk.png", "ssim_psnr.png", "seed_kl_margin.png", "gallery.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)
    page = (tmp_path / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the page
    out = capsys.readouterr().out
    assert data["summary"]["headline"] in out and data["summary"]["cost"] in out


def tiny(model: Path, out: Path, layer: str, *extra: str) -> list[str]:
    """`caltrain assess` of a weights file at one layer, no-data tier only: quick."""
    return [
        "assess",
        "--model",
        str(model),
        "--data",
        "digits",
        "--out",
        str(out),
        "--budget",
        "tiny",
        "--layers",
        layer,
        "--tier",
        "no-data",
        "--no-progress",
        *extra,
    ]


def test_accepts_a_caltrain_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The file `caltrain export` writes (the README's export -> assess flow); a bare state_dict is refused."""
    weights = tmp_path / "model.pt"
    ModelFile("digits-cnn", build_model("digits-cnn", seed=1).state_dict()).save(weights)
    argv = tiny(weights, tmp_path / "r", "conv1", "--trusted-training")
    assert main(argv) == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["model"]["name"] == "digits-cnn (model.pt)" and data["config"]["tiers"] == ["no-data"]
    assert data["model"]["weights_digest"] == state_digest(build_model("digits-cnn", seed=1))
    assert list(data["layers"][0]["attacks"]) == ["decoder-noise"]
    assert data["training_time_hijacking"]["applies"] is False
    torch.save(build_model("digits-cnn").state_dict(), weights)
    capsys.readouterr()
    assert main(argv) == 2 and "bare state_dict" in capsys.readouterr().err


def test_bad_model_is_one_readable_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a state dict")
    cases = {
        "no-such-model": "ModelError: --model 'no-such-model' is neither",
        str(tmp_path / "junk.pt"): "ModelError: ",
        "cifar-resnet": "ShapeMismatch: model cifar-resnet takes 3×32×32 inputs, the data holds 1×8×8",
    }
    for model, message in cases.items():
        assert main(["assess", "--model", model, "--data", "digits", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_accepts_what_caltrain_export_writes(tmp_path: Path) -> None:
    """`caltrain export` saves the config's model (a zoo name or a spec) with the weights: no --arch needed."""
    spec = ZOO["digits-resnet"].to_dict()
    weights = tmp_path / "exported.pt"
    ModelFile(spec, build_model(spec, seed=2).state_dict()).save(weights)
    assert main(tiny(weights, tmp_path / "r", "block2")) == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["model"]["hash"] == ZOO["digits-resnet"].hash and data["model"]["cuts"][1] == "block1"
