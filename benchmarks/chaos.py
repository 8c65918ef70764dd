"""Chaos on loopback: inference load at concurrency 16, an upload and a training job, while the enclave and the
server are killed with SIGKILL at random points and started again (the server by this script, the enclave by the
server's supervisor). Bounded: it stops by itself after --seconds (plus the time the job needs to finish).

Counts every inference request and its errors; an error while the server or enclave is down or coming back
(from a kill until health is 200 again, plus a grace second) is expected, one after that is an
`errors_after_recovery`. At the end: acknowledged datasets missing from the server (`datasets_lost`), and whether
the job, interrupted many times, reached the weights of an uninterrupted run (`jobs_resumed_identical`: the
exported model equals plain training of its seed). The last line is JSON.

    python benchmarks/chaos.py [--seconds 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from caltrain.attestation import Policy
from caltrain.cli.main import main as cli
from caltrain.crypto.container import read_header
from caltrain.data.datasets import ArrayDataset, load_records
from caltrain.enclave.consent import DataUsePolicy, Grantees
from caltrain.enclave.errors import DuplicateDataset
from caltrain.errors import CaltrainError
from caltrain.models import build_model
from caltrain.service.client import CaltrainClient
from caltrain.service.inference_client import InferenceClient
from caltrain.service.loopback import LoopbackServer, equals_plain_training, solo_consortium
from caltrain.service.participant import MemberHome
from caltrain.training.config import TrainConfig

CONFIG = {"model": "digits-cnn", "frontnet_layers": 2, "epochs": 4, "batch_size": 8, "checkpoint_every": 25,
          "lr": 0.05, "datasets": ["alice/a"]}
TRAIN = slice(0, 1400)


class Chaos:
    def __init__(self, root: Path, seconds: float, seed: int) -> None:
        self.root, self.seconds, self.rng = root, seconds, random.Random(seed)
        self.requests = self.errors = self.errors_after_recovery = 0
        self.kills = {"server": 0, "enclave": 0}
        self.recoveries: list[float] = []  # seconds from a kill until health is 200 again
        self.acknowledged: set[str] = set()
        self._lock = threading.Lock()
        self._recovered_at = 0.0  # requests failing before this moment are expected
        self._stop = threading.Event()
        consortium = solo_consortium(root)
        self.home = MemberHome.load(root / "alice")
        data = load_records("digits")
        self.containers = {}
        for dataset_id, part in (("a", TRAIN), ("b", slice(1400, 1797))):
            np.savez(root / f"{dataset_id}.npz", x=data.x[part, 0], y=data.y[part])
            out = root / f"{dataset_id}.ctd"
            cli(["pack", "--home", str(root / "alice"), "--data", str(root / f"{dataset_id}.npz"), "--out", str(out),
                 "--dataset-id", dataset_id])
            self.containers[dataset_id] = out
        self.server = LoopbackServer(root / "state", consortium, root / "server.log")
        cli(["policy", "--server", self.server.url, "--out", str(root / "policy.json")])
        self.policy = Policy.load(root / "policy.json")

    def consent(self, dataset_id: str) -> DataUsePolicy:
        return self.home.policy(dataset_id).model_copy(
            update={"min_frontnet_blocks": 2, "frontnet_recipients": Grantees(members=["alice"])})

    def client(self) -> CaltrainClient:
        return CaltrainClient(self.server.url, home=self.home, timeout=120)

    def submit(self, dataset_id: str, deadline: float) -> None:
        """Upload until the enclave acknowledges it (a receipt), or says it already holds it."""
        blob = self.containers[dataset_id].read_bytes()
        qualified = f"alice/{read_header(blob)[0].dataset_id}"
        while time.monotonic() < deadline:
            try:
                with self.client() as client:
                    client.submit(blob, self.home.data_key(dataset_id), self.policy, self.consent(dataset_id))
                self.acknowledged.add(qualified)
                return
            except DuplicateDataset:  # acknowledged inside before the answer was lost to a kill
                self.acknowledged.add(qualified)
                return
            except CaltrainError:
                time.sleep(0.5)

    def load(self, model_id: str, xs: np.ndarray) -> None:
        while not self._stop.is_set():
            try:
                with InferenceClient(self.server.url, self.policy) as client:
                    while not self._stop.is_set():
                        client.classify(xs[self.requests % len(xs)], model_id, top_k=1)
                        with self._lock:
                            self.requests += 1
            except (CaltrainError, httpx.HTTPError):
                with self._lock:
                    self.requests += 1
                    self.errors += 1
                    if time.monotonic() > self._recovered_at and self.server.proc.poll() is None:
                        self.errors_after_recovery += 1
                time.sleep(1.0)  # as a client honouring Retry-After would

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.server.url}/v1/health", timeout=2).status_code == 200:
                    self._recovered_at = time.monotonic() + 1.0
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit("the server did not recover within 180 s")

    def kill(self) -> None:
        victim = self.rng.choice(["server", "enclave"])
        self._recovered_at = float("inf")
        killed = time.monotonic()
        if victim == "server":
            self.server.kill()
            self.server.restart()
        else:
            self.server.kill_enclave()
            time.sleep(0.2)  # let the supervisor notice before asking for health
        self.kills[victim] += 1
        self.wait_healthy()
        self.recoveries.append(round(time.monotonic() - killed, 1))

    def run(self) -> dict[str, object]:
        started = time.monotonic()
        self.submit("a", started + 120)
        with self.client() as client:
            job_id = client.start_job(TrainConfig.from_dict(CONFIG), self.policy).job_id
        with InferenceClient(self.server.url, self.policy, home=self.home) as client:
            client.deploy_external("chaos", "digits-cnn", 1, build_model("digits-cnn", seed=3).state_dict())
        xs = load_records("digits").x[1700:1764]
        threads = [threading.Thread(target=self.load, args=("chaos", xs), daemon=True) for _ in range(16)]
        threads.append(threading.Thread(target=self.submit, args=("b", started + self.seconds), daemon=True))
        for t in threads:
            t.start()
        self._recovered_at = time.monotonic()
        while time.monotonic() - started < self.seconds:
            time.sleep(self.rng.uniform(2.0, 6.0))
            if time.monotonic() - started < self.seconds:
                self.kill()
        self._stop.set()
        for t in threads:
            t.join(60)
        job = self.finish(job_id, time.monotonic() + 300)
        with self.client() as client:
            held = {d["dataset_id"] for d in client.status()["datasets"]}
        return {
            "seconds": round(time.monotonic() - started, 1),
            "kills": self.kills,
            "recovery_s": self.recoveries,
            "requests": self.requests,
            "errors": self.errors,
            "errors_after_recovery": self.errors_after_recovery,
            "datasets_acknowledged": sorted(self.acknowledged),
            "datasets_lost": len(self.acknowledged - held),
            "job_attempts": job["attempts"],
            "jobs_resumed_identical": self.identical(job_id),
        }

    def finish(self, job_id: str, deadline: float) -> dict[str, object]:
        while time.monotonic() < deadline:
            with self.client() as client:
                job = client.job(job_id)
            if job["state"] in ("done", "failed", "cancelled"):
                return job
            time.sleep(0.5)
        raise SystemExit(f"job {job_id} did not finish within 300 s after the chaos")

    def identical(self, job_id: str) -> bool:
        with self.client() as client:
            config, state, seed = client.trained_model(job_id, self.policy)
        data = load_records("digits")
        return equals_plain_training(state, config, seed, ArrayDataset(data.x[TRAIN], data.y[TRAIN], "digits", 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to kill things")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="caltrain-chaos-") as tmp:
        chaos = Chaos(Path(tmp), args.seconds, args.seed)
        try:
            result = chaos.run()
        finally:
            chaos.server.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
