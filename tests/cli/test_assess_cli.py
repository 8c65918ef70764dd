"""`caltrain assess` on digits with a tiny budget writes report.json, PNG plots and a self-contained HTML page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from caltrain.cli.main import main
from caltrain.cli.model_file import ModelFile
from caltrain.models import build_model

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
    assert [layer["name"] for layer in data["layers"]] == ["conv1", "conv2", "fc1"]  # flatten adds nothing
    assert data["recommended_layer"] in data["model"]["cuts"] and data["seed_rule_layer"] in data["model"]["cuts"]
    for name in ("ssim_psnr.png", "seed_kl_margin.png", "gallery.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)
    page = (tmp_path / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the page
    assert "recommended cut: after" in capsys.readouterr().out


def test_accepts_a_caltrain_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The file `caltrain export` writes (the README's export -> assess flow); a bare state_dict is refused."""
    weights = tmp_path / "model.pt"
    ModelFile("digits-cnn", build_model("digits-cnn", seed=1).state_dict()).save(weights)
    argv = [
        "assess",
        "--model",
        str(weights),
        "--data",
        "digits",
        "--out",
        str(tmp_path / "r"),
        "--budget",
        "tiny",
        "--layers",
        "conv1",
        "--tier",
        "no-data",
        "--trusted-training",
        "--no-progress",
    ]
    assert main(argv) == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["model"]["name"] == "digits-cnn (model.pt)" and data["config"]["tiers"] == ["no-data"]
    assert list(data["layers"][0]["attacks"]) == ["decoder-noise"]
    assert data["training_time_hijacking"]["applies"] is False
    torch.save(build_model("digits-cnn").state_dict(), weights)
    capsys.readouterr()
    assert main(argv) == 2 and "bare state_dict" in capsys.readouterr().err


def test_bad_model_is_one_readable_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a state dict")
    for model in ("no-such-model", str(tmp_path / "junk.pt")):
        assert main(["assess", "--model", model, "--data", "digits", "--out", str(tmp_path)]) == 2
        assert "ModelError" in capsys.readouterr().err
