"""`caltrain assess`: where to cut a model, measured by attacking the IR at every candidate cut (issue 6).

`--model` takes a zoo name or a spec file (trained here first), or a weights file: what `caltrain export` writes
(the model and its state_dict) or a bare `torch.save(model.state_dict(), PATH)` for the architecture `--arch`
(default: the dataset's zoo model). Weights load with `weights_only=True`, so they cannot run code.
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from caltrain.cli.model import spec_from_arg
from caltrain.data import load_dataset
from caltrain.errors import ModelError
from caltrain.exposure import BUDGETS, TIERS, AssessConfig, assess
from caltrain.models import ZOO, ModelSpec, resolve_model, spec_for_dataset
from caltrain.models.fit import accuracy, fit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assess", help="measure what the host can reconstruct at each cut and recommend one")
    p.add_argument("--model", help="zoo model name or spec .json (trained here), or a weights file (see --arch)")
    p.add_argument("--arch", help=f"zoo name {sorted(ZOO)} or spec file of a bare state_dict (default: the dataset's)")
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


def _model(args: argparse.Namespace) -> tuple[torch.nn.Module, ModelSpec, str, bool]:
    """The model, its spec, its name on the report, and whether it still needs training."""
    if args.model is None or args.model in ZOO or args.model.endswith(".json"):
        spec = spec_from_arg(args.model) if args.model else spec_for_dataset(args.data)
        return spec.build(args.seed), spec, spec.name, True
    path = Path(args.model)
    if not path.is_file():
        raise ModelError(f"--model {args.model!r} is neither a zoo model {sorted(ZOO)}, a spec .json nor a file")
    try:
        saved: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelError(f"{path}: not a weights file ({str(exc).splitlines()[0]})") from None
    if isinstance(saved, dict) and set(saved) == {"model", "state_dict"}:  # `caltrain export`: model and weights
        spec, state = resolve_model(saved["model"]), saved["state_dict"]
    else:
        spec, state = (spec_from_arg(args.arch) if args.arch else spec_for_dataset(args.data)), saved
    model = spec.build()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path}: not a state_dict of {spec.name} ({str(exc).splitlines()[0]})") from None
    return model, spec, f"{spec.name} ({path.name})", False


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
