"""Side-by-side accountability benchmark (issue 4 item 5): attribution methods × poisoning scenarios × seeds.

    python benchmarks/accountability.py --out out/accountability            # digits + Fashion-MNIST (20k subset)
    python benchmarks/accountability.py --quick --out out/accountability-quick

Writes runs.jsonl (one line per dataset/seed/scenario/method, appended as it goes; tables are built from the whole
file, a later line replacing an earlier one for the same cell, so a run can be resumed or one method re-measured),
results.json, results.md and PNG plots into --out; trained models are cached under --out/models, so re-measuring a
method does not retrain; the last output line is {"methods": {NAME: {SCENARIO: {"p10", "contributor_top1_at_10",
"auroc"}}}} (means over seeds, Fashion-MNIST when present).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from caltrain.accountability.attacks import make_scenario  # noqa: E402
from caltrain.accountability.attribution import TrainingSet  # noqa: E402
from caltrain.accountability.baselines import get_host_method, host_methods  # noqa: E402
from caltrain.accountability.evaluation import collect_queries, score_method, train_model  # noqa: E402
from caltrain.data.datasets import ArrayDataset, DatasetUnavailable, load_dataset  # noqa: E402
from caltrain.models.zoo import build_model, spec_for_dataset  # noqa: E402

SCENARIOS = ["badnets", "blended", "sig", "label-flip", "split-colluders", "badnets@0.5%", "blended@0.5%"]
METHODS = ["ours", "caltrain-knn", "pixel-knn", "tracin-cp-fast", "art-activation", "art-spectral", "cleanlab"]
COLUMNS = ["p10", "ap", "contributor_top1_at_1", "contributor_top1_at_5", "contributor_top1_at_10", "auroc",
           "recall_at_5pct", "natural_blamed", "query_latency_ms"]


def parse_scenario(name: str) -> tuple[str, float]:
    attack, _, rate = name.partition("@")
    return attack, float(rate.rstrip("%")) / 100 if rate else 0.01


def cached_model(
    cache: Path, merged: ArrayDataset, dataset: str, epochs: int, seed: int, scenario: str
) -> tuple[nn.Sequential, list[dict[str, object]], float]:
    """Train once per (dataset, scenario, seed, epochs, size); the training time measured then is kept with it."""
    path = cache / f"{dataset}-{scenario.replace('%', 'pct')}-s{seed}-e{epochs}-n{len(merged)}.pt"
    if path.exists():
        saved = torch.load(path)
        model = build_model(spec_for_dataset(dataset).name)
        model.load_state_dict(saved["model"])
        return model.eval(), saved["checkpoints"], saved["train_s"]
    t0 = time.perf_counter()
    model, checkpoints = train_model(merged, dataset=dataset, epochs=epochs, seed=seed)
    train_s = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "checkpoints": checkpoints, "train_s": train_s}, path)
    return model, checkpoints, train_s


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {_key(r) for r in load_runs(out / "runs.jsonl")} if args.resume else set()
    log = (out / "runs.jsonl").open("a")
    for dataset in args.datasets:
        try:
            train, test = load_dataset(dataset)
        except DatasetUnavailable as exc:
            print(f"SKIP {dataset}: {exc}", flush=True)
            continue
        if args.subset and len(train) > args.subset:
            train = train.subset(np.random.default_rng(0).permutation(len(train))[: args.subset])
        epochs = args.epochs if args.epochs else (30 if dataset == "digits" else 2)
        jobs = [(seed, sc) for seed in range(args.seeds) for sc in args.scenarios
                if any((dataset, seed, sc, m) not in done for m in args.methods)]
        for seed, scenario_name in tqdm(jobs, desc=dataset, file=sys.stderr):
            attack, rate = parse_scenario(scenario_name)
            scenario = make_scenario(attack, train, rate=rate, seed=seed)
            merged = scenario.merged()
            model, checkpoints, train_s = cached_model(out / "models", merged, dataset, epochs, seed, scenario_name)
            t0 = time.perf_counter()
            ts = TrainingSet.build(model, merged.x, merged.y, scenario.contributors, checkpoints=checkpoints)
            fingerprint_ms_per_1k = 1000 * (time.perf_counter() - t0) / len(merged) * 1000
            queries = collect_queries(ts, scenario, test, limit=args.queries, seed=seed)
            for method_name in args.methods:
                if (dataset, seed, scenario_name, method_name) in done:
                    continue
                method = get_host_method(method_name)
                t0 = time.perf_counter()
                method.fit(ts)
                fit_s = time.perf_counter() - t0
                row = {
                    "dataset": dataset, "seed": seed, "scenario": scenario_name, "method": method_name,
                    "records": len(merged), "poison": int(scenario.poison_mask.sum()), "epochs": epochs,
                    "train_s": train_s, "fit_s": fit_s, "fingerprint_ms_per_1k": fingerprint_ms_per_1k,
                    "clean_accuracy": queries.clean_accuracy, "attack_success": queries.attack_success,
                    **score_method(method, ts, scenario, queries, seed=seed),
                }
                log.write(json.dumps(row) + "\n")
                log.flush()


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["dataset"], row["seed"], row["scenario"], row["method"]


def load_runs(path: Path) -> list[dict[str, Any]]:
    """Every measured cell of runs.jsonl, the latest line winning for a repeated (dataset, seed, scenario, method)."""
    latest = {_key(row): row for row in map(json.loads, path.read_text().splitlines() if path.exists() else [])}
    return list(latest.values())


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """dataset → method → scenario → mean of every numeric metric over seeds (None when a method lacks it)."""
    table: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for r in runs:
        cell = table.setdefault(r["dataset"], {}).setdefault(r["method"], {}).setdefault(r["scenario"], {})
        for key, value in r.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "seed":
                cell.setdefault(key, []).append(value)
            elif value is None:
                cell.setdefault(key, [])
        cell["seeds"] = cell.get("seeds", 0) + 1
    for methods in table.values():
        for scenarios in methods.values():
            for cell in scenarios.values():
                for key, values in cell.items():
                    if isinstance(values, list):
                        cell[key] = float(np.mean(values)) if values else None
    return table


def markdown(table: dict[str, Any]) -> str:
    lines = []
    for dataset, methods in table.items():
        lines += [f"### {dataset}", "", "| method | scenario | seeds | " + " | ".join(COLUMNS) + " |",
                  "|---|---|---|" + "---|" * len(COLUMNS)]
        for method in METHODS:
            for scenario in SCENARIOS:
                cell = methods.get(method, {}).get(scenario)
                if cell is None:
                    continue
                vals = ["n/a" if cell.get(c) is None else f"{cell[c]:.2f}" for c in COLUMNS]
                lines.append(f"| {method} | {scenario} | {cell['seeds']} | " + " | ".join(vals) + " |")
        first = next(iter(methods.values()))
        costs = [f"{s}: train {c['train_s']:.0f} s, fingerprints {c['fingerprint_ms_per_1k']:.1f} ms/1k records, "
                 f"clean acc {c['clean_accuracy']:.3f}, attack success {c['attack_success']:.2f}, "
                 f"{c['seeds']} seed(s)" for s, c in first.items()]
        lines += ["", *[f"- {c}" for c in costs], ""]
    return "\n".join(lines)


def plot(table: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for dataset, methods in table.items():
        fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
        for ax, metric in zip(axes, ("p10", "contributor_top1_at_10", "auroc"), strict=True):
            names = [m for m in METHODS if m in methods]
            width = 0.8 / max(1, len(names))
            for i, m in enumerate(names):
                vals = [(methods[m].get(s) or {}).get(metric) or 0.0 for s in SCENARIOS]
                ax.bar(np.arange(len(SCENARIOS)) + i * width, vals, width, label=m)
            ax.set_xticks(np.arange(len(SCENARIOS)) + 0.4, SCENARIOS, rotation=30, ha="right")
            ax.set_title(f"{dataset}: {metric}")
            ax.set_ylim(0, 1.05)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{dataset}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/accountability")
    parser.add_argument("--quick", action="store_true", help="digits, one seed, cheap methods: a smoke run")
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0, help="0: 30 on digits, 2 on Fashion-MNIST")
    parser.add_argument("--subset", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=100, help="attack and natural mispredictions traced, at most")
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=host_methods())
    parser.add_argument("--resume", action="store_true", help="skip cells runs.jsonl already holds")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.seeds, args.epochs = ["digits"], 1, 20
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    run(args)
    out = Path(args.out)
    table = aggregate(load_runs(out / "runs.jsonl"))
    (out / "results.json").write_text(json.dumps({"args": vars(args), "table": table}, indent=1))
    (out / "results.md").write_text(markdown(table))
    plot(table, out)
    print(markdown(table))
    main_dataset = "fashion-mnist" if "fashion-mnist" in table else next(iter(table), None)
    summary = {
        m: {s: {k: c.get(k) for k in ("p10", "contributor_top1_at_10", "auroc")} for s, c in scenarios.items()}
        for m, scenarios in (table.get(main_dataset, {}) if main_dataset else {}).items()
    }
    print(json.dumps({"methods": summary}))


if __name__ == "__main__":
    main()
