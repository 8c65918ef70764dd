"""`caltrain assess`: where to cut a model, measured by attacking the IR at every candidate cut
(`caltrain.cli.assess_run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltrain.cli.args import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assess", help="measure what the host can reconstruct at each cut and recommend one")
    p.add_argument("--model", help="a zoo model name or a spec .json (both trained here first), or a caltrain model "
                   "file (as `caltrain export` writes) (default: the dataset's zoo model)")
    p.add_argument("--data", required=True, help="digits, fashion-mnist, mnist, cifar10, imagefolder:PATH or .npz")
    p.add_argument("--data-root", type=Path, help="folder of the dataset's files (mnist, cifar10)")
    p.add_argument("--out", type=Path, required=True, help="folder for report.json, report.html and PNG plots")
    p.add_argument("--tier", action="append", help="threat tier(s): no-data, black-box, white-box (default: all)")
    p.add_argument("--budget", default="quick", help="attack budget: tiny, quick, full")
    p.add_argument("--layers", nargs="+", help="cuts to assess (default: every distinct candidate cut)")
    p.add_argument("--epochs", type=positive_int, help="training epochs when the model is trained here")
    p.add_argument(
        "--trusted-training",
        action="store_true",
        help="the FrontNet was never updated by host gradients (drops the FSHA flag)",
    )
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the training and the attacks")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltrain.cli.assess_run import run as run_assess

    return run_assess(args)
