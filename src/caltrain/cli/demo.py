"""`caltrain demo`: the main job, end to end on loopback.

A consortium forms, each participant packs and encrypts its share, attests the server's (simulated)
enclave and submits; the server trains partitioned while the same training runs plainly beside it; the
demo checks both gave the same model and writes report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from caltrain.attestation import Policy
from caltrain.data.datasets import ArrayDataset, DatasetUnavailable, load_dataset, split_among
from caltrain.enclave.consortium import Consortium, Member, Role
from caltrain.enclave.manifest import EnclaveConfig, measure
from caltrain.errors import CaltrainError
from caltrain.models import spec_for_dataset
from caltrain.service.client import CaltrainClient, draft_policy
from caltrain.service.participant import ParticipantHome
from caltrain.training.config import TrainConfig
from caltrain.training.plain import train_plain

PARTICIPANTS = ("hospital-a", "hospital-b", "lab-c")
AUDITOR = "auditor"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole protocol on loopback and write report.json")
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="default: 20 on digits, 2 on fashion-mnist")
    p.add_argument("--records", type=int, default=12000, help="fashion-mnist: training records to use")
    p.set_defaults(func=run)


def say(text: str) -> None:
    print(text, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackServer:
    """`caltrain serve` in its own process group, stopped when the demo ends."""

    def __init__(self, state: Path, consortium: Path, log: Path) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        port = self.url.rsplit(":", 1)[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        cmd = [
            sys.executable,
            "-m",
            "caltrain",
            "serve",
            "--state",
            str(state),
            "--port",
            port,
            "--consortium",
            str(consortium),
        ]
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CaltrainError(f"server exited early; see {log}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise CaltrainError(f"server did not start within 90 s; see {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def demo_data(name: str, records: int, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    try:
        train, test = load_dataset(name)
    except DatasetUnavailable as exc:
        raise CaltrainError(str(exc)) from None
    if name != "digits":
        rng = np.random.default_rng(seed)
        train = train.subset(np.sort(rng.permutation(len(train))[:records]))
        test = test.subset(np.sort(rng.permutation(len(test))[: max(1000, records // 6)]))
    return train, test


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    started = time.perf_counter()
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise CaltrainError(f"{out} is not empty; pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    epochs = args.epochs or (20 if args.dataset == "digits" else 2)
    say("caltrain demo — SIMULATED TEE: the enclave is an ordinary process here (no hardware protection)")

    train, test = demo_data(args.dataset, args.records, args.seed)
    shares = split_among(train, len(PARTICIPANTS), seed=args.seed)
    homes = {n: ParticipantHome.init(out / "participants" / n, n) for n in (*PARTICIPANTS, AUDITOR)}
    consortium = Consortium(
        tuple(
            Member(n, Role.AUDITOR if n == AUDITOR else Role.PARTICIPANT, h.identity.public_key)
            for n, h in homes.items()
        )
    )
    consortium.save(out / "consortium.json")
    say(f"1. consortium of {len(PARTICIPANTS)} participants + 1 auditor -> {out / 'consortium.json'}")

    containers: dict[str, Path] = {}
    participants: list[dict[str, Any]] = []
    for name, share in zip(PARTICIPANTS, shares, strict=True):
        containers[name] = out / "participants" / name / "train.ctd"
        receipt = homes[name].pack(share, containers[name], dataset_id=f"{name}-train")
        participants.append(
            {
                "name": name,
                "dataset_id": receipt.dataset_id,
                "records": receipt.record_count,
                "merkle_root": receipt.merkle_root.hex(),
            }
        )
    eval_path = out / "participants" / PARTICIPANTS[0] / "eval.ctd"
    homes[PARTICIPANTS[0]].pack(test, eval_path, dataset_id="heldout-eval")
    say(
        f"2. each participant packed its share ({', '.join(str(p['records']) for p in participants)} records), "
        f"encrypted with AES-256-GCM and signed"
    )

    server = LoopbackServer(out / "server-state", out / "consortium.json", out / "server.log")
    try:
        report = _protocol(args, out, server, homes, containers, eval_path, participants, train, test, epochs)
    finally:
        server.stop()
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _summary(report, out)
    return 0 if report["training"]["weights_identical"] else 1


def _protocol(
    args: argparse.Namespace,
    out: Path,
    server: LoopbackServer,
    homes: dict[str, ParticipantHome],
    containers: dict[str, Path],
    eval_path: Path,
    participants: list[dict[str, Any]],
    train: ArrayDataset,
    test: ArrayDataset,
    epochs: int,
) -> dict[str, Any]:
    expected = measure(EnclaveConfig(Consortium.load(out / "consortium.json")))
    with CaltrainClient(server.url) as client:
        evidence = client.evidence(os.urandom(32))
    policy = draft_policy(evidence)
    if policy.measurements != [expected]:
        raise CaltrainError(f"server measurement {policy.measurements} != {expected} computed from this source")
    policy.save(out / "policy.json")
    say(f"3. server at {server.url}: enclave measurement {expected[:16]}… matches this source tree")

    for name in PARTICIPANTS:
        uploads = [(containers[name], f"{name}-train")]
        if name == PARTICIPANTS[0]:
            uploads.append((eval_path, "heldout-eval"))
        with CaltrainClient(server.url, identity=homes[name].identity, name=name) as client:
            for path, dataset_id in uploads:
                result = client.submit(
                    path.read_bytes(), homes[name].data_key(dataset_id), Policy.load(out / "policy.json")
                )
                assert result["merkle_root"] == homes[name].receipt(dataset_id).merkle_root.hex()
    say(
        "4. every participant attested the enclave (fresh nonce, policy), wrapped its data key to the enclave "
        "key with HPKE and uploaded; the enclave verified and ingested all containers"
    )

    spec = spec_for_dataset(args.dataset)
    config = TrainConfig(
        model=spec.name,
        frontnet_layers=2,
        epochs=epochs,
        batch_size=64,
        lr=0.05,
        seed=args.seed,
        datasets=[p["dataset_id"] for p in participants],
        eval_datasets=["heldout-eval"],
    )
    (out / "train.json").write_text(json.dumps(config.to_dict(), indent=2))
    auditor = homes[AUDITOR]
    with CaltrainClient(server.url, identity=auditor.identity, name=auditor.name) as client:
        job = client.start_job(config)
        say(
            f"5. training {spec.name} partitioned (FrontNet = first {config.frontnet_layers} blocks in the enclave, "
            f"{epochs} epochs) and plainly, side by side"
        )
        plain_train = ArrayDataset(
            np.concatenate([s.x for s in split_among(train, len(PARTICIPANTS), seed=args.seed)]),
            np.concatenate([s.y for s in split_among(train, len(PARTICIPANTS), seed=args.seed)]),
            train.name,
            train.num_classes,
        )
        plain_model, plain = train_plain(config, plain_train, test)
        done = client.wait_job(job["job_id"])
        front = client.export_frontnet(job["job_id"])
        back = client.backnet(job["job_id"])
    plain_state = plain_model.state_dict()
    protected = {**front, **back}
    identical = protected.keys() == plain_state.keys() and all(
        torch.equal(protected[k], plain_state[k]) for k in plain_state
    )
    max_diff = max(float((protected[k] - plain_state[k]).abs().max()) for k in plain_state)
    return {
        "seed": args.seed,
        "dataset": args.dataset,
        "simulated_tee": True,
        "server": {"measurement": expected, "platform": "simulated"},
        "participants": participants,
        "training": {
            "model": spec.name,
            "frontnet_layers": config.frontnet_layers,
            "epochs": epochs,
            "job_id": job["job_id"],
            "accuracy_plain": plain.final_accuracy,
            "accuracy_protected": done["progress"][-1]["eval_accuracy"],
            "weights_identical": identical,
            "max_abs_weight_difference": max_diff,
            "front_digest": done["front_digest"],
            "protected_samples_per_s": done["progress"][-1]["samples_per_s"],
            "plain_samples_per_s": plain.epochs[-1].samples_per_s,
        },
    }


def _summary(report: dict[str, Any], out: Path) -> None:
    t = report["training"]
    say("")
    say("=" * 72)
    say(
        f"dataset {report['dataset']}, seed {report['seed']}, {len(report['participants'])} participants, "
        f"{report['seconds']} s"
    )
    say(f"accuracy  plain {t['accuracy_plain']:.4f}   protected {t['accuracy_protected']:.4f}")
    say(f"weights identical (FrontNet from the enclave + BackNet from the host vs plain): {t['weights_identical']}")
    say(f"report -> {out / 'report.json'}")
    say("=" * 72)
