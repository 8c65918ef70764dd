"""Scale-out on this machine: partitioned training on 1, 2 and 4 attested worker enclaves (torchrun, gloo on
loopback), the bytes each worker sends per step against plain DDP, the cost of masking, the exactness check,
and sharded trace latency at 10^6 and 10^7 records.

THIS MACHINE HAS 2 CORES. N workers are 2N processes here (a host and an enclave each) plus the server's enclave,
all sharing those 2 cores, so more workers cannot train faster: the throughput figures show the protocol's
overheads, not a speed-up. Bytes per step and masking cost do not depend on the cores; they check the cost model
of docs/scale.md.

- training: the 28x28 CNN (fmnist-cnn), FrontNet = first two conv blocks, random 28x28 images (step time and bytes do
  not depend on pixel values), batch 128 cut into micro-batches of 32, one thread per process;
- bytes: measured from each worker's `wchar` around its collectives (what it wrote to its sockets), and what
  plain DDP of the same model (float32, its default all-reduce) writes per step, measured the same way;
- exactness: the 2-worker and the 1-worker job each equal, bit for bit, the one-process fixed-point reference of
  their seed (exported to the owner) - the arithmetic one worker performs, so 2 workers = 1 worker;
- traces: synthetic unit 32-d fingerprints over 10 labels, split over 2 shard processes that each answer with
  their best k (faiss candidates, exact float64 rescoring: the workers' code), merged by score; plus the fixed
  cost of one real fan-out through the enclaves (plan, partial answers signed and sealed, proofs checked).

    python benchmarks/scale_out.py [--workers 1 2 4] [--records 4096] [--trace-sizes 1000000 10000000]

Last line: JSON with workers, epoch_s, samples_per_s, bytes_per_step_per_worker,
plain_ddp_bytes_per_step_per_worker, mask_ms_per_step, weights_identical_2_vs_1, trace_p50_ms_1e6,
trace_p50_ms_1e7 and more.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from tests.helpers import People, call_sealed, create_job, ingest, make_people, pack, signed_by  # noqa: E402

from caltrain.accountability.search import FingerprintIndex  # noqa: E402
from caltrain.accountability.sharded import best_k  # noqa: E402
from caltrain.data.datasets import ArrayDataset  # noqa: E402
from caltrain.enclave.authority import UNSIGNED, seal_request  # noqa: E402
from caltrain.enclave.consortium import DatasetSchema  # noqa: E402
from caltrain.enclave.host import EnclaveHost  # noqa: E402
from caltrain.enclave.manifest import EnclaveConfig  # noqa: E402
from caltrain.enclave.wire import Exported, ExportModel, TraceQuery  # noqa: E402
from caltrain.models import build_model, partition  # noqa: E402
from caltrain.service.loopback import free_port  # noqa: E402
from caltrain.training.aggregation import SecureSum, quantize  # noqa: E402
from caltrain.training.cluster import Cluster, ClusterConfig, ClusterRun  # noqa: E402
from caltrain.training.config import TrainConfig  # noqa: E402
from caltrain.training.core import build_split, loss_fn, state_digest  # noqa: E402
from caltrain.training.distributed import _written_bytes, train_reference  # noqa: E402

MICRO = 32
CONFIG = TrainConfig(model="fmnist-cnn", frontnet_layers=2, epochs=2, batch_size=128, augment=False,
                     datasets=["alice/bench", "bob/bench"])


def records(n: int) -> ArrayDataset:
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    return ArrayDataset(x, rng.integers(0, 10, n).astype(np.int64), "random-28x28", 10)


# --- training on N workers ---------------------------------------------------------------------------------


def train_on(workers: int, root: Path, leader: EnclaveHost, people: People, consortium: Path,
             traces: int) -> tuple[ClusterRun, str, TrainConfig, list[float]]:
    cluster = Cluster(leader, ClusterConfig(state_dir=root / "leader", consortium=consortium, workers=workers,
                                            micro_batch=MICRO))
    cluster.start()
    try:
        created = create_job(leader, people.owner, CONFIG)
        spec = TrainConfig.from_dict(created.spec)
        run = cluster.train(created.job_id, spec)
        latencies = []
        queries = records(traces + 1).x
        for i in range(traces):
            buf = io.BytesIO()
            np.savez(buf, x=queries[i : i + 1])
            msg = signed_by(TraceQuery(job_id=created.job_id, inputs=buf.getvalue(), k=10, method="caltrain-knn",
                                       auth=UNSIGNED), people.auditor, leader.keys)
            started = time.perf_counter()
            cluster.trace(created.job_id, seal_request(msg, leader.keys).ciphertext)
            latencies.append(1000 * (time.perf_counter() - started))
        return run, created.job_id, spec, latencies[1:]  # the first one attaches nothing but warms up
    finally:
        cluster.stop()


def identical_to_reference(leader: EnclaveHost, people: People, job_id: str, spec: TrainConfig, run: ClusterRun,
                           data: ArrayDataset) -> bool:
    """The job's FrontNet (exported with the seed) and BackNet (by its signed digest) equal the one-process
    fixed-point reference of that seed, bit for bit."""
    exported = call_sealed(leader, ExportModel(job_id=job_id, auth=UNSIGNED), people.owner, Exported)
    front = torch.load(io.BytesIO(exported.front_state), weights_only=True)
    reference = train_reference(spec.model_copy(update={"seed": exported.seed}), torch.from_numpy(data.x),
                                torch.from_numpy(data.y), micro_batch=MICRO)
    part = partition(reference, spec.frontnet_layers)
    expected = part.front.state_dict()
    return (front.keys() == expected.keys() and all(torch.equal(front[k], expected[k]) for k in front)
            and run.result.back_digest == state_digest(part.back))


# --- plain DDP, for the bytes -------------------------------------------------------------------------------


def _plain_ddp(rank: int, world: int, port: int, steps: int, out: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(build_model(CONFIG.model))
    data = records(CONFIG.batch_size)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    written = []
    for _ in range(steps):
        loss = loss_fn(model(x[rank::world]), y[rank::world])
        before = _written_bytes()
        loss.backward()
        written.append(_written_bytes() - before)
    if rank == 0:
        out.put(statistics.median(written))
    dist.destroy_process_group()


def plain_ddp_bytes(world: int, steps: int = 5) -> float:
    if world == 1:
        return 0.0
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(_plain_ddp, args=(world, free_port(), steps, out), nprocs=world, start_method="spawn")
    return float(out.get())


# --- masking --------------------------------------------------------------------------------------------------


def mask_ms(size: int, world: int, repeats: int = 3) -> float:
    """One worker's share of masking a `size`-element step among `world` workers: its masked contribution (a
    keystream per peer, the common mask, the MACs) and the check of the sum (the common mask, the MACs: the same
    work at any `world`, timed on a sum of one)."""
    values = quantize(torch.randn(size) * 0.01)
    worker, alone = (SecureSum(os.urandom(32), rank=0, world=w, size=size) for w in (world, 1))
    times = []
    for step in range(repeats):
        started = time.perf_counter()
        worker.mask(step, values)
        masked = time.perf_counter()
        total = alone.mask(step, values)
        checking = time.perf_counter()
        alone.unmask(step, total, micros=1)
        times.append(1000 * (masked - started + time.perf_counter() - checking))
    return statistics.median(times)


# --- sharded search ---------------------------------------------------------------------------------------


def _shard(conn: Connection, seed: int, count: int, start: int, dim: int, labels: int) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, labels, count)
    index = FingerprintIndex(x, y)
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        query, label, k = msg
        conn.send([(score, start + row) for score, row in best_k(index, x, query, label, k)])


def sharded_search_p50(total: int, shards: int = 2, queries: int = 100, dim: int = 32, labels: int = 10,
                       k: int = 10) -> float:
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    per = total // shards
    for r in range(shards):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_shard, args=(child, r, per, r * per, dim, labels), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for p in pipes:
        assert p.recv() == "ready"
    rng = np.random.default_rng(99)
    times = []
    for _ in range(queries):
        q = rng.standard_normal(dim).astype(np.float32)
        q /= np.linalg.norm(q)
        label = int(rng.integers(0, labels))
        started = time.perf_counter()
        for p in pipes:
            p.send((q, label, k))
        merged = sorted((hit for p in pipes for hit in p.recv()), key=lambda h: (-h[0], h[1]))[:k]
        times.append(1000 * (time.perf_counter() - started))
        assert len(merged) == k
    for p in pipes:
        p.send(None)
    for proc in procs:
        proc.join()
    return float(np.percentile(times, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--records", type=int, default=4096)
    parser.add_argument("--trace-sizes", type=int, nargs="+", default=[10**6, 10**7])
    parser.add_argument("--traces", type=int, default=8, help="real fan-out traces per worker count")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = records(args.records)
    half = args.records // 2
    people = make_people()
    rows: list[dict[str, Any]] = []
    identical: dict[int, bool] = {}
    _, part = build_split(CONFIG.model_copy(update={"seed": 0}))
    front_params = sum(p.numel() for p in part.front.parameters())
    back_params = sum(p.numel() for p in part.back.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        consortium_obj = people.consortium.with_schema(DatasetSchema((1, 28, 28), 10))
        consortium = root / "consortium.json"
        consortium.write_bytes(consortium_obj.canonical_bytes())
        with EnclaveHost(state_dir=root / "leader", config=EnclaveConfig(consortium_obj)) as leader:
            ingest(leader, pack(data.subset(np.arange(half)), people.alice, "bench", chunk_bytes=1 << 20),
                   people.alice)
            ingest(leader, pack(data.subset(np.arange(half, args.records)), people.bob, "bench", chunk_bytes=1 << 20),
                   people.bob)
            for n in args.workers:
                run, job_id, spec, latencies = train_on(n, root, leader, people, consortium, args.traces)
                counters = run.counters
                steps = statistics.mean(c["steps"] for c in counters)
                if n in (1, 2):
                    identical[n] = identical_to_reference(leader, people, job_id, spec, run, data)
                epoch_s = statistics.median(e.seconds for e in run.report.epochs)
                rows.append({
                    "workers": n,
                    "epoch_s": epoch_s,
                    "samples_per_s": args.records / epoch_s,
                    "bytes_per_step_per_worker": statistics.mean(c["wire_bytes"] for c in counters) / steps,
                    "payload_bytes_per_step_per_worker": statistics.mean(c["payload_bytes"] for c in counters) / steps,
                    "allreduce_ms_per_step": 1000 * statistics.mean(c["allreduce_s"] for c in counters) / steps,
                    "mask_ms_per_step": 1000 * statistics.mean(c["mask_s"] for c in counters) / steps,
                    "plain_ddp_bytes_per_step_per_worker": plain_ddp_bytes(n),
                    "trace_fanout_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
                    "attempts": run.attempts,
                })
                print(json.dumps(rows[-1]), flush=True)
    masking = {f"{size}x{world}": mask_ms(size, world) for size in (front_params + back_params, 10**6)
               for world in (2, 8, 64)}
    fanout = statistics.median(r["trace_fanout_p50_ms"] for r in rows if r["workers"] > 1 and r["trace_fanout_p50_ms"])
    search = {n: sharded_search_p50(n) for n in args.trace_sizes}
    print(f"\nTHIS MACHINE: {os.cpu_count()} cores. N workers = 2N processes sharing them: no speed-up is possible.")
    print(f"fmnist-cnn: FrontNet {front_params:,} parameters (in the enclaves), BackNet {back_params:,} (hosts)\n")
    print("| workers | epoch s | samples/s | bytes/step/worker | plain DDP bytes/step/worker | all-reduce ms/step | "
          "mask ms/step | trace fan-out p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['epoch_s']:.2f} | {r['samples_per_s']:.0f} | "
              f"{r['bytes_per_step_per_worker']:,.0f} | {r['plain_ddp_bytes_per_step_per_worker']:,.0f} | "
              f"{r['allreduce_ms_per_step']:.2f} | {r['mask_ms_per_step']:.2f} | {r['trace_fanout_p50_ms'] or 0:.1f} |")
    print("\nmasking + unmasking, one worker, ms:", json.dumps(masking))
    print("sharded search p50 ms (2 shard processes, merged):", json.dumps(search))
    at = {r["workers"]: r for r in rows}
    result = {
        "workers": [r["workers"] for r in rows],
        "epoch_s": [r["epoch_s"] for r in rows],
        "samples_per_s": [r["samples_per_s"] for r in rows],
        "bytes_per_step_per_worker": [r["bytes_per_step_per_worker"] for r in rows],
        "payload_bytes_per_step_per_worker": [r["payload_bytes_per_step_per_worker"] for r in rows],
        "plain_ddp_bytes_per_step_per_worker": [r["plain_ddp_bytes_per_step_per_worker"] for r in rows],
        "allreduce_ms_per_step": [r["allreduce_ms_per_step"] for r in rows],
        "mask_ms_per_step": [r["mask_ms_per_step"] for r in rows],
        "weights_identical_2_vs_1": bool(identical.get(1) and identical.get(2)),
        "weights_identical_to_reference": {str(k): v for k, v in identical.items()},
        "trace_fanout_p50_ms": fanout,
        "trace_search_p50_ms": {str(k): v for k, v in search.items()},
        "trace_p50_ms_1e6": search.get(10**6, float("nan")) + fanout,
        "trace_p50_ms_1e7": search.get(10**7, float("nan")) + fanout,
        "mask_ms_one_worker": masking,
        "front_params": front_params,
        "back_params": back_params,
        "cores": os.cpu_count(),
        "speedup_possible": False,
        "attempts": {str(k): v["attempts"] for k, v in at.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
