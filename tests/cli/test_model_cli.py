"""`caltrain model hash|show|check`: the hash a policy approves, the blocks and cuts, and one typed error line for
a spec that is wrong or does not fit its data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caltrain.cli.main import main
from caltrain.models import ZOO


def spec_file(tmp_path: Path, name: str = "spec.json", **change: object) -> Path:
    doc = ZOO["digits-cnn"].to_dict()
    doc.update(change)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_hash_of_a_file_equals_the_zoo_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "hash", str(spec_file(tmp_path))]) == 0
    assert main(["model", "hash", "digits-cnn"]) == 0
    from_file, from_zoo = capsys.readouterr().out.split()
    assert from_file == from_zoo == ZOO["digits-cnn"].hash


def test_show_lists_every_cut_and_json_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "show", "digits-resnet"]) == 0
    out = capsys.readouterr().out
    assert ZOO["digits-resnet"].hash in out
    for m, name in enumerate(ZOO["digits-resnet"].blocks, start=1):
        assert f"{m:>5}  {name}" in out
    assert "block1         residual   16×8×8" in out and "(full enclave)" in out
    assert main(["model", "show", "--json", "digits-resnet"]) == 0
    shown = tmp_path / "shown.json"
    shown.write_text(capsys.readouterr().out)
    assert main(["model", "hash", str(shown)]) == 0
    assert capsys.readouterr().out.strip() == ZOO["digits-resnet"].hash


def test_check_against_data_and_cut(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "check", "cifar-resnet", "--data", "colour-digits", "--cut", "2"]) == 0
    assert "cut m=2 sends 16×32×32 to the host" in capsys.readouterr().out
    cases = [
        (["model", "check", "digits-cnn", "--data", "colour-digits"], "ShapeMismatch: model digits-cnn takes 1×8×8"),
        (["model", "check", "digits-cnn", "--cut", "6"], "PartitionError: cut m=6 out of range"),
        (["model", "hash", str(spec_file(tmp_path, num_classes=11))], "ShapeMismatch: the last block ('logits')"),
        (["model", "hash", str(tmp_path / "missing.json")], "UnknownArchitecture: "),
    ]
    bad = spec_file(tmp_path, "bad.json")
    bad.write_text(bad.read_text().replace('"relu"', '"__import__"', 1))
    cases.append((["model", "show", str(bad)], "UnknownLayer: block 'conv1' layer 2: unknown layer type '__import__'"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"caltrain: error: {message}" in err, err
