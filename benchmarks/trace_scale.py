"""Forensic query latency and memory at 10^4, 10^5, 10^6 records (issue 4 item 7).

Synthetic unit 128-d fingerprints over 10 labels; one query at a time, exact search, label filter applied.
Last line: JSON with "p50_ms_at_1e6".
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from caltrain.accountability.search import FingerprintIndex  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", type=int, default=[10**4, 10**5, 10**6])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rows = [measure(n, dim=128, labels=10, queries=args.queries, k=args.k, seed=0) for n in args.sizes]
    print("| records | p50 ms | p95 ms | numpy full scan p50 ms | build s | index MiB | RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['records']:,} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['numpy_full_scan_p50_ms']:.1f} | "
              f"{r['build_s']:.2f} | {r['index_mib']:.0f} | {r['rss_mib']:.0f} |")
    at = {r["records"]: r for r in rows}
    print(json.dumps({"rows": rows, "p50_ms_at_1e6": at[10**6]["p50_ms"] if 10**6 in at else None}))


if __name__ == "__main__":
    main()
