"""Entry point: `caltrain <command> ...`. Errors of caltrain's hierarchy become one readable line, exit 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from caltrain.errors import CaltrainError

# Each module defines `register(subparsers)`, which adds its commands and sets `func(args) -> int`.
COMMAND_MODULES = (
    "caltrain.cli.measure",
    "caltrain.cli.ingest",
    "caltrain.cli.serve",
    "caltrain.cli.train",
    "caltrain.cli.trace",
    "caltrain.cli.assess",
    "caltrain.cli.model",
    "caltrain.cli.infer",
    "caltrain.cli.demo",
    "caltrain.cli.evidence",
    "caltrain.cli.enclave",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caltrain", description="Confidential and accountable deep learning on TEEs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CaltrainError as exc:
        print(f"caltrain: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
