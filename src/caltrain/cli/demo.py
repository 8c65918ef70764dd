"""`caltrain demo`: the whole protocol on loopback, end to end (`caltrain.cli.demo_run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltrain.cli.args import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole protocol on loopback and write report.json")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for report.json and the run's files")
    p.add_argument("--dataset", default="digits", choices=["digits", "colour-digits", "fashion-mnist"],
                   help="the data to use; colour-digits: digits as generated 3x32x32 colour images, trained with "
                   "cifar-resnet")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split and the poisoning")
    p.add_argument("--epochs", type=positive_int,
                   help="training epochs (default: 20 on digits, 8 on colour-digits, 2 on fashion-mnist)")
    p.add_argument("--records", type=positive_int, default=12000, help="fashion-mnist: training records to use")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltrain.cli.demo_run import run as run_demo

    return run_demo(args)
