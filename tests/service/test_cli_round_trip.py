"""End to end over loopback HTTP: two participants init, pack, submit; status lists both; bad input is
rejected with a typed error and the server keeps serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from caltrain.cli.main import main
from caltrain.crypto.container import read_header
from caltrain.data.datasets import load_dataset


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().out


def submit(home: Path, url: str, policy: Path, container: Path) -> int:
    """`caltrain submit`, leaving stderr to the caller (typed errors are read from it)."""
    return main(
        ["submit", "--home", str(home), "--server", url, "--policy", str(policy), "--container", str(container)]
    )


def status(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{url}/v1/status").json()
    return result


def test_two_participants_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str], start_server: Any) -> None:
    train, _ = load_dataset("digits")
    consortium = tmp_path / "consortium.json"
    for name, role in (("alice", "participant"), ("bob", "participant"), ("carol", "auditor")):
        code, out = run(capsys, "participant", "init", "--home", tmp_path / name, "--name", name)
        assert code == 0 and [len(bytes.fromhex(line.split()[-1])) for line in out.splitlines()] == [32, 32]
        assert run(capsys, "consortium", "add", "--file", consortium, "--home", tmp_path / name, "--role", role)[0] == 0
    assert run(capsys, "consortium", "schema", "--file", consortium, "--shape", "1,8,8", "--classes", "10")[0] == 0
    assert [m["name"] for m in json.loads(consortium.read_text())["members"]] == ["alice", "bob", "carol"]

    containers = {}
    for i, name in enumerate(("alice", "bob")):
        npz = tmp_path / f"{name}.npz"
        idx = np.arange(i * 300, i * 300 + 300 + 50 * i)
        np.savez(npz, x=(train.x[idx, 0] * 255).astype(np.uint8), y=train.y[idx])
        containers[name] = tmp_path / f"{name}.ctd"
        code, _ = run(capsys, "pack", "--home", tmp_path / name, "--data", npz, "--out", containers[name])
        assert code == 0

    server = start_server(tmp_path / "state", consortium, tmp_path / "server.log")
    code, measured = run(capsys, "measure", "--consortium", consortium)
    policy = tmp_path / "policy.json"
    code, out = run(capsys, "policy", "--server", server.url, "--out", policy)
    assert code == 0 and "SIMULATED" in out
    assert json.loads(policy.read_text())["measurements"] == [measured.strip()], "server runs the code we measured"

    for name in ("alice", "bob"):
        code, out = run(
            capsys,
            "submit",
            "--home",
            tmp_path / name,
            "--server",
            server.url,
            "--policy",
            policy,
            "--container",
            containers[name],
        )
        assert code == 0
        assert json.loads(out[: out.rindex("}") + 1])["commitment_matches"] is True

    listed = {d["participant"]: d for d in status(server.url)["datasets"]}
    for name, count in (("alice", 300), ("bob", 350)):  # pack packs every record (no --holdout)
        header, _ = read_header(containers[name].read_bytes())
        assert listed[name]["record_count"] == count == header.record_count
        assert listed[name]["merkle_root"] == header.merkle_root.hex()
    code, out = run(capsys, "status", "--server", server.url)
    assert code == 0 and json.loads(out)["enclave"]["simulated"] is True

    # Bad input: a replay, a tampered container, an outsider. Each fails typed; nothing changes; still serving.
    before = status(server.url)
    code = submit(tmp_path / "alice", server.url, policy, containers["alice"])
    assert code == 2 and "DuplicateDataset" in capsys.readouterr().err
    # A corrupted container under a fresh dataset id gets past the duplicate check and fails on its chunk.
    run(
        capsys,
        "pack",
        "--home",
        tmp_path / "bob",
        "--data",
        tmp_path / "bob.npz",
        "--out",
        tmp_path / "bob2.ctd",
        "--dataset-id",
        "bob-2",
    )
    blob = bytearray((tmp_path / "bob2.ctd").read_bytes())
    blob[-5] ^= 0xFF
    (tmp_path / "bob2.ctd").write_bytes(bytes(blob))
    code = submit(tmp_path / "bob", server.url, policy, tmp_path / "bob2.ctd")
    err = capsys.readouterr().err
    assert code == 2 and "IntegrityError" in err and "chunk" in err
    assert run(capsys, "participant", "init", "--home", tmp_path / "mallory", "--name", "mallory")[0] == 0
    run(capsys, "pack", "--home", tmp_path / "mallory", "--data", tmp_path / "bob.npz", "--out", tmp_path / "m.ctd")
    code = submit(tmp_path / "mallory", server.url, policy, tmp_path / "m.ctd")
    assert code == 2 and "AuthError" in capsys.readouterr().err
    assert status(server.url) == before


def test_submit_refuses_enclave_that_fails_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], start_server: Any
) -> None:
    """A policy expecting other code: the key is never wrapped, nothing is uploaded."""
    consortium = tmp_path / "consortium.json"
    run(capsys, "participant", "init", "--home", tmp_path / "alice", "--name", "alice")
    run(capsys, "consortium", "add", "--file", consortium, "--home", tmp_path / "alice", "--role", "participant")
    run(capsys, "consortium", "schema", "--file", consortium, "--shape", "1,8,8", "--classes", "10")
    run(capsys, "pack", "--home", tmp_path / "alice", "--data", "digits", "--out", tmp_path / "a.ctd")
    server = start_server(tmp_path / "state", consortium, tmp_path / "server.log")
    policy = tmp_path / "policy.json"
    run(capsys, "policy", "--server", server.url, "--out", policy)
    doc = json.loads(policy.read_text())
    doc["measurements"] = ["00" * 32]
    policy.write_text(json.dumps(doc))
    code = submit(tmp_path / "alice", server.url, policy, tmp_path / "a.ctd")
    assert code == 2 and "MeasurementMismatch" in capsys.readouterr().err
    assert status(server.url)["datasets"] == []
