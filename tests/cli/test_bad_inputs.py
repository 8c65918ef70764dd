"""Every ordinary mistake a user makes with the CLI ends in one line on stderr naming what was wrong, exit code 2,
no traceback, and nothing written (a table: argv -> the error it must name)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from caltrain.cli.main import build_parser, main
from caltrain.models import build_model

SERVER = "http://127.0.0.1:9"  # nothing listens: a case that reached the network would fail differently


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    for name in ("alice", "bob"):
        assert main(["participant", "init", "--home", str(root / name), "--name", name]) == 0
    rng = np.random.default_rng(0)
    good = {"x": rng.random((40, 8, 8), dtype=np.float32), "y": rng.integers(0, 10, 40)}
    np.savez(root / "good.npz", **good)
    (root / "empty.npz").write_bytes(b"")
    (root / "truncated.npz").write_bytes((root / "good.npz").read_bytes()[:300])
    (root / "notzip.npz").write_bytes(b"this is not a zip file at all" * 10)
    np.savez(root / "strings.npz", x=np.array([["a"] * 8] * 8 * 4).reshape(4, 8, 8), y=np.arange(4))
    np.savez(root / "nan.npz", x=np.full((4, 8, 8), np.nan, dtype=np.float32), y=np.arange(4))
    np.savez(root / "floatlabels.npz", x=good["x"][:4], y=np.array([0.5, 1, 2, 3]))
    assert main(["pack", "--home", str(root / "bob"), "--data", str(root / "good.npz"), "--out",
                 str(root / "bob.ctd"), "--dataset-id", "b"]) == 0
    assert main(["pack", "--home", str(root / "alice"), "--data", str(root / "good.npz"), "--out",
                 str(root / "alice.ctd"), "--dataset-id", "a"]) == 0
    (root / "corrupt.pt").write_bytes(b"\x80\x04not a torch file")
    torch.save(build_model("digits-cnn").state_dict(), root / "bare.pt")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x", "y")
    (root / "zip.pt").write_bytes(buf.getvalue())
    (root / "notatrace.json").write_text(json.dumps({"report": {"answers": []}}))
    (root / "list.json").write_text("[1, 2]")
    (root / "config.json").write_text(json.dumps({"model": "digits-cnn", "epochs": 0, "lr": -1, "bogus": 1}))
    (root / "policy.json").write_text("{}")
    (root / "datapolicy.json").write_text(json.dumps({"models": "all", "training": "maybe"}))
    (root / "file").write_text("a file, not a folder")
    return root


def cases(r: Path) -> list[tuple[str, list[str], str]]:
    """(what, argv, a word the one error line must contain)."""
    alice = str(r / "alice")
    deploy = ["deploy", "--server", SERVER, "--policy", str(r / "policy.json"), "--home", alice, "--model-id", "m",
              "--m", "1", "--weights"]
    trace = ["trace", "--server", SERVER, "--home", alice, "--policy", str(r / "policy.json"), "--job", "j"]
    return [
        ("empty npz", ["pack", "--home", alice, "--data", str(r / "empty.npz"), "--out", str(r / "o.ctd")], "empty"),
        ("truncated npz", ["pack", "--home", alice, "--data", str(r / "truncated.npz"), "--out", str(r / "o.ctd")],
         "npz"),
        ("not a zip", ["pack", "--home", alice, "--data", str(r / "notzip.npz"), "--out", str(r / "o.ctd")], "npz"),
        ("string arrays", ["pack", "--home", alice, "--data", str(r / "strings.npz"), "--out", str(r / "o.ctd")],
         "numbers"),
        ("NaN records", ["pack", "--home", alice, "--data", str(r / "nan.npz"), "--out", str(r / "o.ctd")], "NaN"),
        ("fractional labels", ["pack", "--home", alice, "--data", str(r / "floatlabels.npz"), "--out",
                               str(r / "o.ctd")], "integers"),
        ("pack --out into a missing folder", ["pack", "--home", alice, "--data", str(r / "good.npz"), "--out",
                                              str(r / "missing" / "o.ctd")], "does not exist"),
        ("re-pack an existing dataset id", ["pack", "--home", alice, "--data", str(r / "good.npz"), "--out",
                                            str(r / "other.ctd"), "--dataset-id", "a"], "exists"),
        ("pack over an existing container", ["pack", "--home", alice, "--data", str(r / "good.npz"), "--out",
                                             str(r / "bob.ctd"), "--dataset-id", "new"], "exists"),
        ("pack against another schema", ["pack", "--home", alice, "--data", str(r / "good.npz"), "--out",
                                         str(r / "o.ctd"), "--consortium", str(r / "file")], "consortium"),
        ("trace --out into a missing folder", [*trace, "--input", str(r / "good.npz"), "--out",
                                               str(r / "missing" / "t.json")], "does not exist"),
        ("trace a truncated npz", [*trace, "--input", str(r / "truncated.npz")], "npz"),
        ("export --out into a missing folder", ["export", "--server", SERVER, "--home", alice, "--policy",
                                                str(r / "policy.json"), "--job", "j", "--out",
                                                str(r / "missing" / "m.pt")], "does not exist"),
        ("participant init into an unwritable path", ["participant", "init", "--home", str(r / "file" / "home"),
                                                      "--name", "carol"], "cannot create"),
        ("deploy a corrupt model file", [*deploy, str(r / "corrupt.pt")], "not a caltrain model file"),
        ("deploy a zip that is no model", [*deploy, str(r / "zip.pt")], "not a caltrain model file"),
        ("deploy a missing model file", [*deploy, str(r / "missing.pt")], "no such model file"),
        ("deploy a bare state_dict", [*deploy, str(r / "bare.pt")], "bare state_dict"),
        ("serve --backend nonsense", ["serve", "--state", str(r / "s"), "--consortium", str(r / "c.json"),
                                      "--backend", "nonsense"], "invalid choice"),
        ("evidence inspect a missing file", ["evidence", "inspect", str(r / "missing.bin")], "cannot read"),
        ("evidence inspect --at yesterday", ["evidence", "inspect", str(r / "good.npz"), "--at", "yesterday"],
         "ISO 8601"),
        ("proofs verify a missing trace", ["proofs", "verify", "--home", alice, "--trace", str(r / "missing.json"),
                                           "--container", str(r / "alice.ctd")], "cannot read"),
        ("proofs verify a non-trace file", ["proofs", "verify", "--home", alice, "--trace",
                                            str(r / "notatrace.json"), "--container", str(r / "alice.ctd")],
         "not a trace report"),
        ("proofs verify a JSON list", ["proofs", "verify", "--home", alice, "--trace", str(r / "list.json"),
                                       "--container", str(r / "alice.ctd")], "not a trace report"),
        ("submit someone else's container", ["submit", "--home", alice, "--server", SERVER, "--policy",
                                             str(r / "policy.json"), "--container", str(r / "bob.ctd")],
         "'bob'"),
        ("submit with an invalid data-use policy", ["submit", "--home", alice, "--server", SERVER, "--policy",
                                                    str(r / "policy.json"), "--container", str(r / "alice.ctd"),
                                                    "--data-policy", str(r / "datapolicy.json")], "policy"),
        ("infer --concurrency 0", ["infer", "--server", SERVER, "--policy", str(r / "policy.json"), "--input",
                                   str(r / "good.npz"), "--concurrency", "0"], "at least 1"),
        ("a train config with invalid fields", ["train", "--server", SERVER, "--config", str(r / "config.json"),
                                                "--home", alice, "--policy", str(r / "policy.json")], "epochs"),
        ("a home that is not one", ["jobs", "list", "--server", SERVER, "--home", str(r / "file")],
         "not a caltrain home"),
        ("a server that does not answer", ["jobs", "list", "--server", SERVER, "--home", alice], "cannot reach"),
        ("a bad --holdout", ["pack", "--home", alice, "--data", str(r / "good.npz"), "--out", str(r / "o.ctd"),
                             "--holdout", "1.5"], "[0, 1)"),
        ("an unknown command", ["nonsense"], "invalid choice"),
    ]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("index", range(32))
def test_bad_input_is_one_typed_line_exit_2_and_writes_nothing(
    root: Path, index: int, capsys: pytest.CaptureFixture[str]
) -> None:
    table = cases(root)
    assert len(table) == 32, "keep the parametrization in step with the table"
    what, argv, word = table[index]
    before = snapshot(root)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"{what}: exit {code}; stderr {err!r}"
    assert len(lines) == 1 and "Traceback" not in err, f"{what}: {err!r}"
    assert word in lines[0], f"{what}: {lines[0]!r} does not name {word!r}"
    assert "weights_only=False" not in err and "https://" not in err
    assert snapshot(root) == before, f"{what}: something was written"


def test_every_option_has_help_and_the_version_prints(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    def parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [p]
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    found += parsers(child)
        return found

    missing = [f"{p.prog} {a.dest}" for p in parsers(build_parser()) for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert not missing, f"options without help: {missing}"
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("caltrain ")
