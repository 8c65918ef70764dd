"""`caltrain assess`: where to cut a model, measured by attacking the IR at every candidate cut (issue 6).

`--model` takes a zoo name (trained here first) or a file written by `torch.save(model.state_dict(), PATH)` for
the zoo architecture of the dataset (or `--arch`); loaded with `weights_only=True`, so it cannot run code.
Without `--model`, the dataset's zoo model is trained first.
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import torch

from caltrain.data import load_dataset
from caltrain.errors import ModelError
from caltrain.exposure import BUDGETS, TIERS, AssessConfig, assess
from caltrain.models import ZOO, build_model, spec_for_dataset
from caltrain.models.fit import accuracy, fit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assess", help="measure what the host can reconstruct at each cut and recommend one")
    p.add_argument("--model", help="zoo model name (trained here) or a state_dict file (see --arch)")
    p.add_argument("--arch", choices=sorted(ZOO), help="architecture of a state_dict file (default: the dataset's)")
    p.add_argument("--data", required=True, help="digits, fashion-mnist, mnist, cifar10, imagefolder:PATH or .npz")
    p.add_argument("--data-root", type=Path, help="folder of the dataset's files (mnist, cifar10)")
    p.add_argument("--out", type=Path, required=True, help="folder for report.json, report.html and PNG plots")
    p.add_argument("--tier", action="append", choices=list(TIERS), help="threat tier(s) (default: all)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="quick")
    p.add_argument("--layers", nargs="+", help="cuts to assess (default: every distinct candidate cut)")
    p.add_argument("--epochs", type=int, help="training epochs when the model is trained here")
    p.add_argument(
        "--trusted-training",
        action="store_true",
        help="the FrontNet was never updated by host gradients (drops the FSHA flag)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _model(args: argparse.Namespace) -> tuple[torch.nn.Module, str, bool]:
    """The model, its name, and whether it still needs training."""
    if args.model is None or args.model in ZOO:
        name = args.model or spec_for_dataset(args.data).name
        return build_model(name, seed=args.seed), name, True
    path = Path(args.model)
    if not path.is_file():
        raise ModelError(f"--model {args.model!r} is neither a zoo model {sorted(ZOO)} nor a file")
    name = args.arch or spec_for_dataset(args.data).name
    model = build_model(name)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelError(f"{path}: not a state_dict of {name} ({exc})") from None
    return model, f"{name} ({path.name})", False


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
