"""A consortium, a server and a workload for the restart tests: real `caltrain serve` processes on loopback,
really killed with SIGKILL (the server, or its enclave) and started again on the same state."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from caltrain.attestation import Policy
from caltrain.cli.main import main
from caltrain.crypto.container import read_header
from caltrain.data.datasets import ArrayDataset, load_records
from caltrain.enclave.consent import Grantees
from caltrain.errors import CaltrainError
from caltrain.service.auth import sign_request
from caltrain.service.client import CaltrainClient
from caltrain.service.inference_client import InferenceClient
from caltrain.service.loopback import LoopbackServer, equals_plain_training, solo_consortium
from caltrain.service.participant import MemberHome
from caltrain.training.config import TrainConfig
from tests.helpers import uncounted

CONFIG = {"model": "digits-cnn", "frontnet_layers": 2, "epochs": 3, "batch_size": 8, "checkpoint_every": 25,
          "lr": 0.05}


@dataclass
class Site:
    """One participant-owner-auditor (alice), her packed containers, and the server."""

    root: Path
    server: LoopbackServer
    home: MemberHome
    policy: Policy
    _open_sockets: list[socket.socket] = field(default_factory=list)

    def client(self) -> CaltrainClient:
        return CaltrainClient(self.server.url, home=self.home, timeout=120)

    def pack(self, dataset_id: str, records: slice) -> Path:
        data = load_records("digits")
        np.savez(self.root / f"{dataset_id}.npz", x=data.x[records, 0], y=data.y[records])
        out = self.root / f"{dataset_id}.ctd"
        assert main(["pack", "--home", str(self.root / "alice"), "--data", str(self.root / f"{dataset_id}.npz"),
                     "--out", str(out), "--dataset-id", dataset_id]) == 0
        consent = self.home.policy(dataset_id).model_copy(
            update={"min_frontnet_blocks": 2, "frontnet_recipients": Grantees(members=["alice"])})
        consent.save(self.root / f"{dataset_id}.consent.json")
        return out

    def submit(self, container: Path) -> dict[str, Any]:
        dataset_id = read_header(container.read_bytes())[0].dataset_id
        from caltrain.enclave.consent import DataUsePolicy

        consent = DataUsePolicy.load(self.root / f"{dataset_id}.consent.json")
        with self.client() as client:
            receipt, _ = client.submit(container.read_bytes(), self.home.data_key(dataset_id), self.policy, consent)
        return {"dataset_id": receipt.dataset_id, "merkle_root": receipt.merkle_root}

    def datasets(self) -> dict[str, str]:
        with self.client() as client:
            return {d["dataset_id"]: d["merkle_root"] for d in client.status()["datasets"]}

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as client:
            return client.job(job_id)

    def wait(self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout_s: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                job = self.job(job_id)
                if until(job):
                    return job
                if job["state"] in ("failed", "cancelled"):
                    raise AssertionError(f"job {job_id} {job['state']}: {job['error']}")
            except CaltrainError:
                pass  # restarting
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not get there in {timeout_s:.0f} s")

    def half_upload(self, container: Path) -> None:
        """Start uploading `container` and stop half-way (the connection stays open until the server dies)."""
        blob = container.read_bytes()
        headers = sign_request(self.home.identity, self.home.name, "POST", "/v1/datasets", blob)
        headers.update({f"x-caltrain-{h}": "AA==" for h in ("request-id", "auth", "wrapped-key", "data-policy")})
        sock = socket.create_connection(("127.0.0.1", self.server.port))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(blob)}\r\n\r\n".encode())
        sock.sendall(blob[: len(blob) // 2])
        self._open_sockets.append(sock)



@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    root = tmp_path
    consortium = solo_consortium(root)
    server = LoopbackServer(root / "state", consortium, root / "server.log")
    assert main(["policy", "--server", server.url, "--out", str(root / "policy.json")]) == 0
    s = Site(root, server, MemberHome.load(root / "alice"), Policy.load(root / "policy.json"))
    yield s
    server.stop()
    for sock in s._open_sockets:
        sock.close()


def start_job(site: Site, **changes: Any) -> str:
    with site.client() as client:
        return client.start_job(TrainConfig.from_dict({**CONFIG, **changes}), site.policy).job_id


def identical_to_uninterrupted(site: Site, job_id: str, records: slice) -> bool:
    """The job's final weights (FrontNet exported sealed to alice, BackNet from the host) equal plain training of
    its seed on the same records: what an uninterrupted run gives (tests/training: partitioned == plain)."""
    with site.client() as client:
        config, state, seed = client.trained_model(job_id, site.policy)
    data = load_records("digits")
    return equals_plain_training(state, config, seed, ArrayDataset(data.x[records], data.y[records], "digits", 10))


def trace_report(site: Site, job_id: str, x: np.ndarray) -> dict[str, Any]:
    with site.client() as client:
        report = client.trace(job_id, x, site.policy, k=5).reply.report  # type: ignore[attr-defined]
    return uncounted({k: report[k] for k in ("answers", "contributors", "statement")})


def deploy(site: Site, model_id: str, job_id: str) -> None:
    with InferenceClient(site.server.url, site.policy, home=site.home) as client:
        client.deploy_job(model_id, job_id)


def classify(site: Site, model_id: str, xs: np.ndarray) -> list[list[int]]:
    with InferenceClient(site.server.url, site.policy) as client:
        return [p.labels for p in client.classify_many(xs, model_id, top_k=2, concurrency=4)]


class Load:
    """Inference requests from `threads` clients until stopped; counts answers and errors."""

    def __init__(self, site: Site, model_id: str, xs: np.ndarray, threads: int = 8) -> None:
        self.site, self.model_id, self.xs = site, model_id, xs
        self.ok = self.errors = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(threads)
        self._futures = [self._pool.submit(self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with InferenceClient(self.site.server.url, self.site.policy) as client:
                    while not self._stop.is_set():
                        client.classify(self.xs[self.ok % len(self.xs)], self.model_id, top_k=1)
                        self.ok += 1
            except (CaltrainError, httpx.HTTPError):
                self.errors += 1
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for f in self._futures:
            f.result(60)
        self._pool.shutdown()


def health(site: Site) -> httpx.Response:
    return httpx.get(f"{site.server.url}/v1/health", timeout=5)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
