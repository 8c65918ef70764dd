"""Inference load test and protected-vs-plain comparison for the 28x28 CNN (fmnist-cnn, cut m).

1. `caltrain serve` on loopback; the model deployed through external registration (fresh weights: load numbers
   do not need a trained model); 1,000 requests at concurrency 16, each answer checked against the plain model.
2. Batch 1: HTTP round trip (client sealing and opening included) vs the protected compute path vs plain.
3. Batch 64, in this process with its own enclave: the protected path (decrypt in the enclave, FrontNet,
   boundary, host part, softmax/top-k, encrypt the answers) vs the same model run plainly, alternating runs.
   Besides wall-clock medians it sums the CPU time both processes spent (this one: host side and plain
   model; the enclave's from /proc), which contention from other jobs distorts far less than wall time.

Run: python benchmarks/inference_load.py [m]. One thread per process; every process keeps freed memory
(`keep_freed_memory`), as `caltrain serve` and the enclave do. The last line is a JSON summary.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from caltrain.data.datasets import DatasetUnavailable, load_dataset  # noqa: E402
from caltrain.enclave.allocator import keep_freed_memory  # noqa: E402
from caltrain.enclave.authority import UNSIGNED, authorize  # noqa: E402
from caltrain.enclave.consortium import Consortium, DatasetSchema, Role  # noqa: E402
from caltrain.enclave.host import EnclaveHost  # noqa: E402
from caltrain.enclave.manifest import EnclaveConfig  # noqa: E402
from caltrain.enclave.wire import DeployModel  # noqa: E402
from caltrain.errors import CaltrainError  # noqa: E402
from caltrain.inference.owner import prepare_deployment  # noqa: E402
from caltrain.inference.requests import ClientSession  # noqa: E402
from caltrain.inference.serving import BatchingConfig, InferenceService  # noqa: E402
from caltrain.models import build_model  # noqa: E402
from caltrain.service.client import CaltrainClient, draft_policy  # noqa: E402
from caltrain.service.inference_client import InferenceClient  # noqa: E402
from caltrain.service.participant import MemberHome  # noqa: E402

torch.set_num_threads(1)
ARCH, MODEL_ID, BATCH, K = "fmnist-cnn", "fmnist", 64, 5
REQUESTS, CONCURRENCY = 1000, 16


def inputs(n: int) -> tuple[np.ndarray, str]:
    try:
        _, test = load_dataset("fashion-mnist")
        return test.x[:n], "fashion-mnist t10k"
    except DatasetUnavailable:
        return np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32), "random"


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def plain_top_k(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.topk(torch.softmax(model(x), 1), K, dim=1).indices


def start_server(tmp: Path, consortium: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "caltrain", "serve", "--state", str(tmp / "state"), "--port", str(port),
           "--consortium", str(consortium), "--max-batch", str(BATCH), "--max-wait-ms", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(cmd, stdout=(tmp / "server.log").open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not come up")


def owner_consortium(owner: MemberHome) -> Consortium:
    return Consortium((owner.member(frozenset({Role.OWNER})),), DatasetSchema((1, 28, 28), 10))


def http_part(tmp: Path, owner: MemberHome, model: torch.nn.Module, m: int, xs: np.ndarray) -> dict[str, float]:
    consortium = tmp / "consortium.json"
    owner_consortium(owner).save(consortium)
    proc, url = start_server(tmp, consortium)
    try:
        with CaltrainClient(url) as probe:
            policy = draft_policy(probe.evidence(os.urandom(32)))
        with InferenceClient(url, policy, home=owner) as client:
            client.deploy_external(MODEL_ID, ARCH, m, model.state_dict())
            expected = plain_top_k(model, torch.from_numpy(xs))[:, 0].tolist()
            errors, latencies = 0, []

            def one(i: int) -> None:
                nonlocal errors
                started = time.perf_counter()
                try:
                    label = client.classify(xs[i % len(xs)], MODEL_ID, top_k=K).labels[0]
                    errors += label != expected[i % len(xs)]
                except CaltrainError as exc:
                    print(f"request {i}: {type(exc).__name__}: {exc}")
                    errors += 1
                latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                list(pool.map(one, range(REQUESTS)))
            wall = time.perf_counter() - started
            batch1 = []
            for i in range(60):
                t0 = time.perf_counter()
                client.classify(xs[i], MODEL_ID, top_k=K)
                batch1.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "load_requests": REQUESTS,
        "load_concurrency": CONCURRENCY,
        "load_req_per_s": round(REQUESTS / wall, 1),
        "load_p50_ms": median_ms(latencies),
        "load_p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 3),
        "errors": errors,
        "http_batch1_p50_ms": median_ms(batch1[10:]),
    }


class Protected:
    """The protected path in this process: an enclave, the host's batching pipeline, fresh sealed requests."""

    def __init__(self, tmp: Path, owner: MemberHome, model: torch.nn.Module, m: int) -> None:
        self.host = EnclaveHost(state_dir=tmp / "bench-state", config=EnclaveConfig(owner_consortium(owner)))
        self.host.start()
        self.service = InferenceService(self.host, BatchingConfig(max_batch=BATCH, max_wait_ms=5))
        prep = prepare_deployment(self.host.keys, MODEL_ID, ARCH, m, False, model.state_dict())
        request = DeployModel(model_id=MODEL_ID, job_id="", front_digest="", architecture=ARCH, m=m, ternary=False,
                              sealed_weights=prep.sealed_weights, slot_paths=[], max_batch=0, auth=UNSIGNED)
        signed = authorize(request, identity=owner.identity, member=owner.name, keys=self.host.keys)
        self.service.deploy(signed, prep.host_state)
        self.server = self.service.get(MODEL_ID)
        self.session = ClientSession(self.host.keys.hpke)
        self.service.open_session(self.session.session_id, self.session.sealed)
        assert self.host.pid is not None
        self._enclave_stat = Path(f"/proc/{self.host.pid}/stat")

    def sealed(self, xs: np.ndarray) -> list[tuple[int, bytes]]:
        """Client work, done before timing: one fresh request per input (the enclave rejects replays)."""
        return [self.session.seal(MODEL_ID, x, K) for x in xs]

    def run(self, requests: list[tuple[int, bytes]]) -> None:
        futures = [self.server.submit(self.session.session_id, counter, K, ct) for counter, ct in requests]
        for f in futures:
            f.result(60)

    def enclave_cpu_s(self) -> float:
        utime, stime = self._enclave_stat.read_text().rsplit(")", 1)[1].split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        """CPU seconds so far of both processes: this one (host side; idle during plain runs) and the enclave."""
        return time.process_time() + self.enclave_cpu_s()

    def close(self) -> None:
        self.service.close()
        self.host.stop()


def timed(fn: Callable[[], object], cpu_s: Callable[[], float] = time.process_time) -> tuple[float, float]:
    """Wall and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), cpu_s()
    fn()
    return time.perf_counter() - wall, cpu_s() - cpu


def compute_part(tmp: Path, owner: MemberHome, model: torch.nn.Module, m: int, xs: np.ndarray) -> dict[str, float]:
    protected = Protected(tmp, owner, model, m)
    x64 = torch.from_numpy(xs[:BATCH])
    try:
        for _ in range(3):  # warm both paths
            protected.run(protected.sealed(xs[:BATCH]))
            plain_top_k(model, x64)

        def run_protected(x: np.ndarray) -> tuple[float, float]:
            requests = protected.sealed(x)
            return timed(lambda: protected.run(requests), protected.cpu_s)

        one = torch.from_numpy(xs[:1])
        b1_protected, b1_plain = [], []
        for i in range(40):
            b1_protected.append(run_protected(xs[i : i + 1])[0])
            b1_plain.append(timed(lambda: plain_top_k(model, one))[0])
        protected.server.timings.clear()
        lat_protected, lat_plain = [], []
        enclave_cpu = protected.enclave_cpu_s()
        for _ in range(25):  # alternate, so machine noise hits both alike
            lat_protected.append(run_protected(xs[:BATCH]))
            lat_plain.append(timed(lambda: plain_top_k(model, x64)))
        enclave_cpu = (protected.enclave_cpu_s() - enclave_cpu) / len(lat_protected)
        breakdown = {
            key: median_ms([t[key] for t in protected.server.timings])
            for key in ("decrypt_s", "front_s", "front_call_s", "host_s", "finish_call_s", "finish_s", "encrypt_s")
        }
        rounds, thr_protected, thr_plain = 16, [], []
        for _ in range(3):
            thr_protected.append(run_protected(np.concatenate([xs[:BATCH]] * rounds)))
            thr_plain.append(timed(lambda: [plain_top_k(model, x64) for _ in range(rounds)]))
    finally:
        protected.close()
    p50_p, p50_plain = (statistics.median(w for w, _ in runs) for runs in (lat_protected, lat_plain))
    tp_p, tp_plain = (rounds * BATCH / statistics.median(w for w, _ in runs) for runs in (thr_protected, thr_plain))
    cpu_lat, cpu_thr = (sum(c for _, c in mine) / sum(c for _, c in plain)
                        for mine, plain in ((lat_protected, lat_plain), (thr_protected, thr_plain)))
    boundary = breakdown["front_call_s"] - breakdown["decrypt_s"] - breakdown["front_s"]
    boundary += breakdown["finish_call_s"] - breakdown["finish_s"] - breakdown["encrypt_s"]
    print(f"batch {BATCH} p50: protected {p50_p * 1000:.2f} ms, plain {p50_plain * 1000:.2f} ms")
    print(f"batch {BATCH} throughput: protected {tp_p:.0f}/s, plain {tp_plain:.0f}/s (pipelined, 2 processes)")
    print(f"batch {BATCH} CPU time, protected / plain (both processes summed): {cpu_lat:.3f} in the latency runs, "
          f"{cpu_thr:.3f} in the throughput runs")
    cpu_p, cpu_plain = (statistics.mean(c for _, c in runs) * 1000 for runs in (lat_protected, lat_plain))
    print(f"CPU ms per batch of {BATCH} (latency runs): plain {cpu_plain:.1f}; protected {cpu_p:.1f} = enclave "
          f"{enclave_cpu * 1000:.1f} + host process {cpu_p - enclave_cpu * 1000:.1f}")
    print("where a protected batch of 64 spends its time (median ms): " + ", ".join(
        f"{k.removesuffix('_s')} {v}" for k, v in breakdown.items()) + f", boundary (IPC) {boundary:.3f}")
    return {
        "p50_latency_ratio": round(p50_p / p50_plain, 3),
        "throughput_ratio": round(tp_p / tp_plain, 3),
        "cpu_ratio_latency_runs": round(cpu_lat, 3),
        "cpu_ratio_throughput_runs": round(cpu_thr, 3),
        "batch64_cpu_plain_ms": round(cpu_plain, 3),
        "batch64_cpu_enclave_ms": round(enclave_cpu * 1000, 3),
        "batch64_cpu_host_process_ms": round(cpu_p - enclave_cpu * 1000, 3),
        "batch64_protected_p50_ms": round(p50_p * 1000, 3),
        "batch64_plain_p50_ms": round(p50_plain * 1000, 3),
        "batch64_protected_per_s": round(tp_p, 1),
        "batch64_plain_per_s": round(tp_plain, 1),
        "batch1_protected_p50_ms": median_ms(b1_protected),
        "batch1_plain_p50_ms": median_ms(b1_plain),
        **{f"batch64_{k.removesuffix('_s')}_ms": v for k, v in breakdown.items()},
        "batch64_boundary_ms": round(boundary, 3),
    }


def main() -> None:
    m = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    keep_freed_memory()  # as the enclave and `caltrain serve` do: the plain baseline and host side get it too
    model = build_model(ARCH, seed=0).eval()
    xs, source = inputs(REQUESTS)
    with tempfile.TemporaryDirectory() as tmp:
        owner = MemberHome.init(Path(tmp) / "owner", "owner")
        http = http_part(Path(tmp), owner, model, m, xs)
        print(f"load: {REQUESTS} requests at concurrency {CONCURRENCY}: {http['load_req_per_s']} req/s, "
              f"p50 {http['load_p50_ms']} ms, p99 {http['load_p99_ms']} ms, errors {http['errors']}")
        compute = compute_part(Path(tmp), owner, model, m, xs)
    http["http_overhead_batch1_ms"] = round(http["http_batch1_p50_ms"] - compute["batch1_protected_p50_ms"], 3)
    print(f"batch 1 p50: over HTTP {http['http_batch1_p50_ms']} ms (client sealing/opening included), protected "
          f"compute {compute['batch1_protected_p50_ms']} ms, plain {compute['batch1_plain_p50_ms']} ms; HTTP and "
          f"client overhead {http['http_overhead_batch1_ms']} ms")
    print(json.dumps({**compute, **http, "model": ARCH, "m": m, "inputs": source}))


if __name__ == "__main__":
    main()
