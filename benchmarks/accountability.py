"""Side-by-side accountability benchmark: attribution methods × poisoning scenarios × seeds.

    python benchmarks/accountability.py --out out/accountability                     # Fashion-MNIST (20k subset)
    python benchmarks/accountability.py --datasets digits --out out/accountability-digits
    python benchmarks/accountability.py --quick --out out/accountability-quick       # digits smoke run

Per (seed, scenario) one model is trained (cached under --out/models by a digest of its training data, so
re-measuring a method does not retrain); every method is fitted on it and traced on three query sets: the attack's
mispredictions, natural mispredictions into other classes, and natural mispredictions into the target class; where
an honest participant sits behind another device, also every misprediction of the test images passed through that
device, traced together (does a method blame that participant for its device's natural errors?).
Contributor naming is scored on the attack queries (TPR over attacker identities, FPR over honest ones) and its
false-positive rate is measured by re-dealing every record among the honest participants (evenly and with
Dirichlet 0.3 label skew), where by construction nobody is responsible.

Writes runs.jsonl (one line per dataset/seed/scenario/method, appended as it goes; tables are built from the whole
file, a later line replacing an earlier one for the same cell, so a run can be resumed or one method re-measured),
results.json, results.md and a PNG per dataset into --out. The last output line is {"methods": {METHOD: {SCENARIO:
{metric: mean over seeds}}}} for Fashion-MNIST when present.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from caltrain.accountability.attacks import Dealing, Scenario, make_scenario  # noqa: E402
from caltrain.accountability.attribution import TrainingSet  # noqa: E402
from caltrain.accountability.baselines import get_host_method, host_methods  # noqa: E402
from caltrain.accountability.evaluation import (  # noqa: E402
    collect_queries,
    refit_redeal_rates,
    score_method,
    train_model,
)
from caltrain.data.datasets import ArrayDataset, DatasetUnavailable, load_dataset  # noqa: E402
from caltrain.models.zoo import build_model, spec_for_dataset  # noqa: E402


@dataclass(frozen=True)
class Spec:
    attack: str
    rate: float = 0.01
    dealing: Dealing = field(default_factory=Dealing)


SCENARIOS: dict[str, Spec] = {
    "clean": Spec("clean"),
    "badnets": Spec("badnets"),
    "blended": Spec("blended"),
    "sig": Spec("sig", 0.08),
    "label-flip": Spec("label-flip"),
    "split-colluders": Spec("split-colluders"),
    "multi-trigger": Spec("multi-trigger"),
    "sybil": Spec("sybil", dealing=Dealing(camouflage=10)),
    "wanet": Spec("wanet", 0.05),
    "wanet-sybil": Spec("wanet", 0.05, dealing=Dealing(identities=10, camouflage=10)),
    "adaptive-blend": Spec("adaptive-blend", 0.01),
    "label-consistent": Spec("label-consistent", 0.05),
    "badnets@0.5%": Spec("badnets", 0.005),
    "blended@0.5%": Spec("blended", 0.005),
    "label-skew": Spec("blended", dealing=Dealing(skew=0.3)),
    "device-shift": Spec("badnets", dealing=Dealing(shifted=1)),
}
RECIPE = "adam-cosine"  # train_model's recipe, part of the cache key
TRACIN_EVERY = 5
# epochs, peak learning rate, one-pixel shifts (on 8×8 digits a shift moves a trigger by an eighth of the image)
SCHEDULE = {"digits": (30, 1e-3, False), "fashion-mnist": (15, 3e-3, True)}
METHODS = ["ours", "caltrain-knn", "pixel-knn", "tracin-cp-fast", "art-activation", "art-spectral", "cleanlab"]
SUMMARY = ["p10", "ap", "answered", "natural_answered", "natural_into_target_answered", "contributor_tpr",
           "contributor_fpr", "auroc", "attack_success", "clean_accuracy", "seeds", "device_natural_answered",
           "device_owner_named"]
COLUMNS = ["attack_success", "clean_accuracy", "answered", "p10", "ap", "natural_answered",
           "natural_into_target_answered", "contributor_tpr", "contributor_fpr", "contributor_tpr_at_10",
           "natural_contributor_fpr", "device_natural_answered", "device_owner_named", "auroc", "redeal_fpr_even",
           "redeal_fpr_dirichlet", "redeal_fwer_dirichlet", "query_latency_ms", "fit_s"]


def cached_model(cache: Path, merged: ArrayDataset, dataset: str, epochs: int, seed: int
                 ) -> tuple[nn.Sequential, list[dict[str, object]], float]:
    """Train once per (training data, seed, epochs); the training time measured then is kept with it."""
    digest = hashlib.sha256(merged.x.tobytes() + merged.y.tobytes()).hexdigest()[:16]
    _, lr, augment = SCHEDULE.get(dataset, (0, 1e-3, False))
    path = cache / f"{dataset}-{digest}-s{seed}-e{epochs}-lr{lr:g}-{RECIPE}{'-shift' * augment}.pt"
    if path.exists():
        saved = torch.load(path)
        model = build_model(spec_for_dataset(dataset).name)
        assert isinstance(model, nn.Sequential)
        model.load_state_dict(saved["model"])
        return model.eval(), saved["checkpoints"], saved["train_s"]
    t0 = time.perf_counter()
    model, checkpoints = train_model(merged, dataset=dataset, epochs=epochs, seed=seed, lr=lr, augment=augment)
    train_s = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "checkpoints": checkpoints, "train_s": train_s}, path)
    return model, checkpoints, train_s


def build_scenario(name: str, train: ArrayDataset, dataset: str, epochs: int, seed: int, cache: Path) -> Scenario:
    """The label-consistent attacker's surrogate is the clean scenario's model of the same seed."""
    spec = SCENARIOS[name]
    surrogate = None
    if spec.attack == "label-consistent":
        surrogate = cached_model(cache, build_scenario("clean", train, dataset, epochs, seed, cache).merged(),
                                 dataset, epochs, seed)[0]
    return make_scenario(spec.attack, train, rate=spec.rate, dealing=spec.dealing, seed=seed, surrogate=surrogate,
                         name=name)


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
        epochs = args.epochs or SCHEDULE.get(dataset, (15, 0.0, False))[0]
        jobs = [(seed, sc) for seed in args.seeds for sc in args.scenarios
                if args.train_only or any((dataset, seed, sc, m) not in done for m in args.methods)]
        for seed, name in tqdm(jobs, desc=dataset, file=sys.stderr):
            scenario = build_scenario(name, train, dataset, epochs, seed, out / "models")
            merged = scenario.merged()
            model, checkpoints, train_s = cached_model(out / "models", merged, dataset, epochs, seed)
            t0 = time.perf_counter()
            # TracIn replays every fifth epoch's checkpoint (and the last): 3 of 15 on Fashion-MNIST
            replayed = checkpoints[TRACIN_EVERY - 1 :: TRACIN_EVERY] or checkpoints[-1:]
            ts = TrainingSet.build(model, merged.x, merged.y, scenario.contributors, checkpoints=replayed)
            fingerprint_ms_per_1k = 1000 * (time.perf_counter() - t0) / len(merged) * 1000
            queries = collect_queries(ts, scenario, test, limit=args.queries, seed=seed)
            common = {
                "dataset": dataset, "seed": seed, "scenario": name, "records": len(merged),
                "poison": int(scenario.poison_mask.sum()), "epochs": epochs, "train_s": train_s,
                "fingerprint_ms_per_1k": fingerprint_ms_per_1k, "clean_accuracy": queries.clean_accuracy,
                "attack_success": queries.attack_success,
            }
            if args.train_only:
                print(json.dumps(common), flush=True)
                continue
            for method_name in args.methods:
                if (dataset, seed, name, method_name) in done:
                    continue
                method = get_host_method(method_name)
                t0 = time.perf_counter()
                method.fit(ts)
                fit_s = time.perf_counter() - t0
                row = {**common, "method": method_name, "fit_s": fit_s,
                       **score_method(method, ts, scenario, queries, seed=seed, redeals=args.redeals)}
                if args.refit_redeals:
                    row.update(refit_redeal_rates(partial(get_host_method, method_name), ts, queries,
                                                  len(scenario.honest), np.random.default_rng(seed + 1),
                                                  redeals=args.refit_redeals))
                log.write(json.dumps(row) + "\n")
                log.flush()


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["dataset"], row["seed"], row["scenario"], row["method"]


def load_runs(path: Path) -> list[dict[str, Any]]:
    """Every measured cell of runs.jsonl, the latest line winning for a repeated (dataset, seed, scenario, method)."""
    latest = {_key(row): row for row in map(json.loads, path.read_text().splitlines() if path.exists() else [])}
    return list(latest.values())


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """dataset → method → scenario → mean of every numeric metric over the seeds that have it (None: no seed has
    it), and `seeds`: how many seeds the cell holds."""
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
        for method in [m for m in METHODS if m in methods]:
            for scenario in [s for s in SCENARIOS if s in methods[method]]:
                cell = methods[method][scenario]
                vals = ["n/a" if cell.get(c) is None else f"{cell[c]:.3f}" for c in COLUMNS]
                lines.append(f"| {method} | {scenario} | {cell['seeds']} | " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(table: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("answered", "p10", "natural_into_target_answered", "contributor_tpr")
    for dataset, methods in table.items():
        scenarios = [s for s in SCENARIOS if any(s in m for m in methods.values())]
        fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5))
        for ax, metric in zip(axes, metrics, strict=True):
            names = [m for m in METHODS if m in methods]
            width = 0.8 / max(1, len(names))
            for i, m in enumerate(names):
                vals = [(methods[m].get(s) or {}).get(metric) or 0.0 for s in scenarios]
                ax.bar(np.arange(len(scenarios)) + i * width, vals, width, label=m)
            ax.set_xticks(np.arange(len(scenarios)) + 0.4, scenarios, rotation=40, ha="right", fontsize=7)
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
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=0, help="0: 30 on digits, 15 on Fashion-MNIST")
    parser.add_argument("--subset", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=100, help="queries of each kind traced, at most")
    parser.add_argument("--redeals", type=int, default=100, help="re-deals per cell for the false-positive rate")
    parser.add_argument("--refit-redeals", type=int, default=0,
                        help="re-deals per cell with the method refitted on each (refit_redeal_*; a fit apiece)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=host_methods())
    parser.add_argument("--resume", action="store_true", help="skip cells runs.jsonl already holds")
    parser.add_argument("--train-only", action="store_true", help="fill the model cache, print accuracy and success")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.seeds, args.epochs = ["digits"], [0], 20
        args.methods = ["ours", "caltrain-knn", "pixel-knn", "cleanlab"]
        args.scenarios = [s for s in args.scenarios if SCENARIOS[s].attack != "label-consistent"]
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    run(args)
    if args.train_only:
        return
    out = Path(args.out)
    table = aggregate(load_runs(out / "runs.jsonl"))
    (out / "results.json").write_text(json.dumps({"args": vars(args), "table": table}, indent=1))
    (out / "results.md").write_text(markdown(table))
    plot(table, out)
    print(markdown(table))
    main_dataset = "fashion-mnist" if "fashion-mnist" in table else next(iter(table), None)
    summary = {m: {s: {k: c.get(k) for k in SUMMARY} for s, c in scenarios.items()}
               for m, scenarios in (table.get(main_dataset, {}) if main_dataset else {}).items()}
    print(json.dumps({"methods": summary}))


if __name__ == "__main__":
    main()
