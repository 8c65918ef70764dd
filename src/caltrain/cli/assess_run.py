"""`caltrain assess` at work (the command is registered by `caltrain.cli.assess`).

`--model` takes a zoo name (trained here first) or a caltrain model file (`caltrain.cli.model_file`, what
`caltrain export` writes; loaded with `weights_only=True`, so it cannot run code). Without `--model`, the
dataset's zoo model is trained first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from caltrain.cli.model_file import ModelFile
from caltrain.data import load_dataset
from caltrain.errors import ModelError
from caltrain.exposure import TIERS, AssessConfig, assess
from caltrain.models import ZOO, build_model, spec_for_dataset
from caltrain.models.fit import accuracy, fit


def _model(args: argparse.Namespace) -> tuple[torch.nn.Module, str, bool]:
    """The model, its name, and whether it still needs training."""
    if args.model is None or args.model in ZOO:
        name = args.model or spec_for_dataset(args.data).name
        return build_model(name, seed=args.seed), name, True
    path = Path(args.model)
    if not path.is_file():
        raise ModelError(f"--model {args.model!r} is neither a zoo model {sorted(ZOO)} nor a file")
    saved = ModelFile.load(path)
    return saved.build(), f"{saved.model} ({path.name})", False


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    train, test = load_dataset(args.data, root=args.data_root, seed=args.seed)
    model, name, untrained = _model(args)
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
    report = assess(model, train_data=train, targets=test, config=config, model_name=name, progress=progress)
    files = report.write(args.out)
    data = report.to_json()
    print(f"assessed {len(report.layers)} layers in {report.seconds:.0f} s (seed {args.seed}, budget {args.budget})")
    for layer in data["layers"]:
        worst = max(o["ssim"]["mean"]["value"] for o in layer["attacks"].values())
        verdict = ", ".join(f"{t}: {'safe' if ok else 'UNSAFE'}" for t, ok in layer["safe"].items())
        print(
            f"  {layer['name']:>10}: best-attack SSIM {worst:.3f}, seed rule safe for "
            f"{layer['seed_rule']['fraction_safe']:.0%}; {verdict}"
        )
    print(
        f"recommended cut: after {data['recommended_layer']} ({data['recommended_tier']}); "
        f"seed rule alone: after {data['seed_rule_layer']}"
    )
    for miss in data["seed_rule_misses"]:
        print(f"  seed rule says safe but {miss['attack']} reconstructs at {miss['layer']}")
    if data["training_time_hijacking"]["applies"]:
        print("note: FrontNet trained with host gradients: training-time hijacking (FSHA) applies; no cut helps")
    print(f"report: {files[-1]} and {files[0]}")
    return 0
