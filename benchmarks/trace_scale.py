"""Forensic search and the `ours` method's cost as the training set grows (10^4 … 10^6 records), one core.

    python benchmarks/trace_scale.py                       # exact search latency and memory at 10^4, 10^5, 10^6
    python benchmarks/trace_scale.py --ours MODEL.pt       # + `ours` fit and query on Fashion-MNIST subsets, and
                                                           #   its neighbour searches at 10^5 and 10^6 (synthetic)

Search rows: synthetic unit 128-d fingerprints over 10 labels; one query at a time, exact, label filter applied.
`--ours` fits the method end to end on 10k / 20k / 60k Fashion-MNIST records with a trained zoo model (any
`torch.save`d state dict of fmnist-cnn, e.g. one the accountability benchmark cached), and times the parts of the
fit whose cost grows with N on synthetic vectors of the method's dimensions (64-d input projection, 128-d
fingerprints): each all-records neighbour search is timed on 2,000 sampled rows and scaled to N, plus the time to
build its index. Above `Ours.exact_up_to` records those searches run on HNSW graphs, as the method does. The
transplant nulls and recipients are a fixed number of forward passes, independent of N. Last line: JSON.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from caltrain.accountability.attribution import (  # noqa: E402
    Ours,
    QueryBatch,
    TrainingSet,
    acting_parties,
    get_method,
)
from caltrain.accountability.fingerprints import l2_normalize  # noqa: E402
from caltrain.accountability.search import FingerprintIndex  # noqa: E402
from caltrain.data.datasets import load_dataset  # noqa: E402
from caltrain.models.zoo import build_model  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(n: int, *, dim: int, labels: int, queries: int, k: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, labels, n)
    before = rss_mib()
    t0 = time.perf_counter()
    index = FingerprintIndex(x, y)
    build_s = time.perf_counter() - t0
    index_mib = rss_mib() - before
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ql = rng.integers(0, labels, queries)
    index.search(q[:1], k, int(ql[0]))  # warm-up
    times = []
    for i in range(queries):
        t0 = time.perf_counter()
        index.search(q[i : i + 1], k, int(ql[i]))
        times.append(1000 * (time.perf_counter() - t0))
    brute = []
    for i in range(min(queries, 20)):
        t0 = time.perf_counter()
        scores = x @ q[i]
        np.argpartition(-np.where(y == ql[i], scores, -np.inf), k)[:k]
        brute.append(1000 * (time.perf_counter() - t0))
    return {
        "records": n, "p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
        "numpy_full_scan_p50_ms": float(np.median(brute)), "build_s": build_s, "index_mib": index_mib,
        "rss_mib": rss_mib(),
    }


def ours_end_to_end(model_path: Path, sizes: list[int], queries: int) -> list[dict[str, Any]]:
    """`ours` fit and per-query trace time on real Fashion-MNIST subsets with a trained model."""
    train, test = load_dataset("fashion-mnist")
    model = build_model("fmnist-cnn")
    model.load_state_dict(torch.load(model_path)["model"] if model_path.suffix == ".pt" else torch.load(model_path))
    assert isinstance(model, torch.nn.Sequential)
    model.eval()
    rows = []
    for n in sizes:
        part = train.subset(np.random.default_rng(0).permutation(len(train))[:n])
        ts = TrainingSet.build(model, part.x, part.y, np.zeros(n, np.int64))
        method = get_method("ours")
        t0 = time.perf_counter()
        method.fit(ts)
        fit_s = time.perf_counter() - t0
        batch = QueryBatch.build(ts, test.x[:queries])
        method.trace(batch.select(np.arange(1)), k=10)  # warm-up
        single = []
        for i in range(queries):
            t0 = time.perf_counter()
            method.trace(batch.select(np.arange(i, i + 1)), k=10)
            single.append(1000 * (time.perf_counter() - t0))
        t0 = time.perf_counter()
        method.trace(batch, k=10)
        batched = 1000 * (time.perf_counter() - t0) / queries
        rows.append({"records": n, "fit_s": fit_s, "query_p50_ms": float(np.percentile(single, 50)),
                     "query_p95_ms": float(np.percentile(single, 95)), "query_batched_ms": batched,
                     "rss_mib": rss_mib()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def ours_searches(n: int, *, sample: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The N-dependent parts of `ours` on synthetic vectors: all-records input-space kNN (label conflict and
    surprise), who acts as one party among 20 contributors (`acting_parties`), every record's within-class
    embedding kNN (pooling), every record's look-alikes of other labels (the ranking's shared part), the index
    builds, and one query's searches (candidates, look-alikes, surroundings, nearest records with and without the
    set-aside ones), which the fit also runs for each of its null inputs. All-records searches are timed on
    `sample` rows and scaled to N."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    pixels = rng.standard_normal((n, 64), dtype=np.float32)
    fps = l2_normalize(rng.standard_normal((n, 128), dtype=np.float32))
    rows = rng.choice(n, min(sample, n), replace=False)
    approximate = n > Ours.exact_up_to  # what the method itself does at this size
    t0 = time.perf_counter()
    flat = FingerprintIndex(pixels, np.zeros(n, np.int64), metric="l2", approximate=approximate)
    build_flat_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    by_label = FingerprintIndex(pixels, y, metric="l2", approximate=approximate)
    embedding = FingerprintIndex(fps, y, approximate=approximate)
    kept = np.sort(rng.permutation(n)[: round((1 - Ours.set_aside) * n)])
    kept_index = FingerprintIndex(fps[kept], y[kept], approximate=approximate)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    flat.search(pixels[rows], Ours.overfetch * Ours.neighbours + 1, 0)
    input_s = build_flat_s + (time.perf_counter() - t0) * n / len(rows)
    nearest = rng.integers(0, n, (n, Ours.overfetch * Ours.neighbours))  # its cost does not depend on who is near
    t0 = time.perf_counter()
    acting_parties(y, rng.integers(0, 20, n), nearest)
    parties_s = time.perf_counter() - t0
    del nearest
    t0 = time.perf_counter()
    embedding.search(fps[rows], 21, y[rows])
    pooling_s = (time.perf_counter() - t0) * n / len(rows)
    t0 = time.perf_counter()
    by_label.search_other_labels(pixels[rows], Ours.lookalikes, y[rows])
    record_alikes_s = (time.perf_counter() - t0) * n / len(rows)
    times = []
    for i in rows[:100]:
        t0 = time.perf_counter()
        embedding.search(fps[i : i + 1], 100, y[i : i + 1])
        by_label.search_other_labels(pixels[i : i + 1], 11, y[i : i + 1])
        embedding.search(fps[i : i + 1], max(Ours.surroundings, Ours.support_neighbours) + 1)
        kept_index.search(fps[i : i + 1], Ours.support_neighbours + 1)
        times.append(1000 * (time.perf_counter() - t0))
    query_ms = float(np.percentile(times, 50))
    return {"records": n, "approximate": approximate, "index_build_s": build_s, "input_knn_s": input_s,
            "parties_s": parties_s, "pooling_knn_s": pooling_s, "record_alikes_s": record_alikes_s,
            "null_searches_s": 10 * Ours.null_inputs * query_ms / 1000, "query_searches_p50_ms": query_ms,
            "rss_mib": rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[10**4, 10**5, 10**6])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ours", type=Path, help="a trained fmnist-cnn state dict: also measure the `ours` method")
    parser.add_argument("--ours-sizes", nargs="+", type=int, default=[10**4, 2 * 10**4, 6 * 10**4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    rows = [measure(n, dim=128, labels=10, queries=args.queries, k=args.k, seed=0) for n in args.sizes]
    print("| records | p50 ms | p95 ms | numpy full scan p50 ms | build s | index MiB | RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['records']:,} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['numpy_full_scan_p50_ms']:.1f} | "
              f"{r['build_s']:.2f} | {r['index_mib']:.0f} | {r['rss_mib']:.0f} |")
    at = {r["records"]: r for r in rows}
    result: dict[str, Any] = {"rows": rows, "p50_ms_at_1e6": at[10**6]["p50_ms"] if 10**6 in at else None}
    if args.ours:
        result["ours"] = ours_end_to_end(args.ours, args.ours_sizes, queries=50)
        result["ours_searches"] = [ours_searches(n) for n in args.sizes]
        print("| records | search | input-space kNN s | parties s | pooling kNN s | record look-alikes s | "
              "index builds s | null searches s | one query's searches p50 ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in result["ours_searches"]:
            search = "HNSW" if r["approximate"] else "exact"
            print(f"| {r['records']:,} | {search} | {r['input_knn_s']:.1f} | {r['parties_s']:.1f} | "
                  f"{r['pooling_knn_s']:.1f} | {r['record_alikes_s']:.1f} | "
                  f"{r['index_build_s']:.1f} | {r['null_searches_s']:.1f} | {r['query_searches_p50_ms']:.2f} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
