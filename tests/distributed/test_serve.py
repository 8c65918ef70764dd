"""`caltrain serve --workers 2` over loopback HTTP, with the members' own commands: participants attest the one
server enclave and submit; the owner's job trains on two worker enclaves; the auditor's trace fans out over their
shards and comes back with proofs `caltrain trace` checks; a participant checks its records against its receipt."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caltrain.cli.main import main
from caltrain.data.datasets import load_dataset
from caltrain.service.loopback import LoopbackServer, free_port
from tests.distributed.conftest import BLOCKS


def run(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    code = main([str(a) for a in args])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


@pytest.mark.slow
@pytest.mark.parametrize("machines", [1, 2])
def test_serve_with_workers_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str], machines: int) -> None:
    """Two workers: both on the server's machine, or one there and one on a second "machine" (another state
    directory, its own `caltrain serve --join`) joining through torchrun's c10d rendezvous on loopback."""
    train, test = load_dataset("digits")
    consortium = tmp_path / "consortium.json"
    for name, roles in (("alice", ["participant"]), ("bob", ["participant"]), ("audit", ["auditor", "owner"])):
        run(capsys, "participant", "init", "--home", tmp_path / name, "--name", name)
        run(capsys, "consortium", "add", "--file", consortium, "--home", tmp_path / name,
            *[a for r in roles for a in ("--role", r)])
    run(capsys, "consortium", "schema", "--file", consortium, "--shape", "1,8,8", "--classes", "10")
    containers = {}
    for i, name in enumerate(("alice", "bob")):
        npz = tmp_path / f"{name}.npz"
        idx = np.arange(i * 300, i * 300 + 300)
        np.savez(npz, x=(train.x[idx, 0] * 255).astype(np.uint8), y=train.y[idx])
        containers[name] = tmp_path / f"{name}.ctd"
        run(capsys, "pack", "--home", tmp_path / name, "--data", npz, "--out", containers[name], "--dataset-id", "d")
    scale = ["--workers", "2"]
    joiner = None
    if machines == 2:
        rdzv, control = f"127.0.0.1:{free_port()}", free_port()
        scale = ["--workers", "1", "--world-size", "2", "--nnodes", "2", "--rdzv-endpoint", rdzv,
                 "--control-port", str(control)]
    with LoopbackServer(tmp_path / "state", consortium, tmp_path / "server.log", extra_args=scale,
                        timeout_s=120) as server:
        if machines == 2:  # the second machine runs on the deployment's (simulated) platform
            shutil.copytree(tmp_path / "state" / "platform", tmp_path / "second" / "platform")
            joiner = subprocess.Popen(
                [sys.executable, "-m", "caltrain", "serve", "--join", f"127.0.0.1:{control}", "--state",
                 str(tmp_path / "second"), "--consortium", str(consortium), *scale],
                stdout=(tmp_path / "second.log").open("wb"), stderr=subprocess.STDOUT,
            )
        policy = tmp_path / "policy.json"
        run(capsys, "policy", "--server", server.url, "--out", policy)
        for name in ("alice", "bob"):
            run(capsys, "submit", "--home", tmp_path / name, "--server", server.url, "--policy", policy,
                "--container", containers[name])
        config = tmp_path / "train.json"  # `caltrain pack`'s default policy: the whole model inside
        config.write_text(json.dumps({"frontnet_layers": BLOCKS, "epochs": 1, "batch_size": 64,
                                      "datasets": ["alice/d", "bob/d"]}))
        out = run(capsys, "train", "--server", server.url, "--config", config, "--home", tmp_path / "audit",
                  "--policy", policy)
        job_id = out.split()[1]
        assert '"state": "done"' in out
        queries = tmp_path / "q.npz"
        np.savez(queries, x=test.x[:3])
        run(capsys, "trace", "--server", server.url, "--home", tmp_path / "audit", "--policy", policy, "--job", job_id,
            "--input", queries, "--method", "caltrain-knn", "--k", "4", "--out", tmp_path / "trace.json")
        report = json.loads((tmp_path / "trace.json").read_text())["report"]
        assert [len(a["records"]) for a in report["answers"]] == [4, 4, 4]
        for name in ("alice", "bob"):
            run(capsys, "proofs", "verify", "--home", tmp_path / name, "--trace", tmp_path / "trace.json",
                "--container", containers[name])
    if joiner is not None:
        joiner.wait(timeout=60)  # its workers stop with the server
    log = (tmp_path / "server.log").read_text()
    assert "done on 2 workers" in log
