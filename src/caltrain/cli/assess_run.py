"""`caltrain assess` at work (the command is registered by `caltrain.cli.assess`).

`--model` takes a zoo name or a spec file (trained here first), or a caltrain model file (`caltrain.cli.model_file`,
what `caltrain export` writes; loaded with `weights_only=True`, so it cannot run code). Without `--model`, the
dataset's zoo model is trained first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from caltrain.cli.model import spec_from_arg
from caltrain.cli.model_file import ModelFile
from caltrain.data import load_dataset
from caltrain.errors import ModelError
from caltrain.exposure import TIERS, AssessConfig, assess
from caltrain.models import ZOO, ModelSpec, resolve_model, spec_for_dataset
from caltrain.models.fit import accuracy, fit


def _model(args: argparse.Namespace) -> tuple[torch.nn.Module, ModelSpec, str, bool]:
    """The model, its spec, its name on the report, and whether it still needs training."""
    if args.model is None or args.model in ZOO or args.model.endswith(".json"):
        spec = spec_from_arg(args.model) if args.model else spec_for_dataset(args.data)
        return spec.build(args.seed), spec, spec.name, True
    path = Path(args.model)
    if not path.is_file():
        raise ModelError(f"--model {args.model!r} is neither a zoo model {sorted(ZOO)}, a spec .json nor a file")
    saved = ModelFile.load(path)
    spec = resolve_model(saved.model)
    return saved.build(), spec, f"{spec.name} ({path.name})", False


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    train, test = load_dataset(args.data, root=args.data_root, seed=args.seed)
    model, spec, name, untrained = _model(args)
    for part in (train, test):
        spec.check_data(part.sample_shape, int(part.y.max()) + 1 if len(part) else 0)
    if untrained:
        epochs = args.epochs or max(1, min(30, 45_000 // len(train)))
        started = time.perf_counter()
        fit(model, train.x, train.y, epochs=epochs, seed=args.seed, progress=progress)
        print(f"trained {name} for {epochs} epochs in {time.perf_counter() - started:.0f} s")
    print(f"{name}: test accuracy {accuracy(model, test.x, test.y):.3f}")
    config = AssessConfig(
        budget=args.budget,
        tiers=tuple(args.tier or TIERS),
        seed=args.seed,
        layers=tuple(args.layers) if args.layers else None,
        untrusted_gradients=not args.trusted_training,
    )
    report = assess(
        model, train_data=train, targets=test, config=config, model_name=name, model_hash=spec.hash, progress=progress
    )
    files = report.write(args.out)
    data = report.to_json()
    summary = data["summary"]
    print(f"assessed {len(report.layers)} cuts in {report.seconds:.0f} s (seed {args.seed}, budget {args.budget})")
    print()
    print(summary["headline"])
    print(summary["cost"])
    print(summary["reason"])
    for line in summary["by_tier"]:
        print(f"  {line['tier']:>9}: {line['advice']}")
    print(summary["seed_rule"])
    print()
    for layer in data["layers"]:
        worst = max(o["ssim"]["mean"]["value"] for o in layer["attacks"].values())
        reid = max(o["reidentification_top1"]["value"] for o in layer["attacks"].values())
        verdict = ", ".join(f"{t}: {'safe' if ok else 'not safe'}" for t, ok in layer["safe"].items())
        print(
            f"  after {layer['name']:>8}: best attack SSIM {worst:.3f}, re-identification {reid:.0%} "
            f"(chance {data['thresholds']['chance']:.0%}); seed rule safe for "
            f"{layer['seed_rule']['fraction_safe']:.0%} of targets; {verdict}"
        )
    if data["training_time_hijacking"]["applies"]:
        print("note: FrontNet trained with host gradients: training-time hijacking (FSHA) applies; no cut helps")
    print(f"report: {files[-1]} (every number in {files[0]})")
    return 0
