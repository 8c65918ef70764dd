"""`caltrain measure`: the enclave measurement, reproducible from a source checkout."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltrain.enclave.manifest import EnclaveConfig, measure


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("measure", help="print the enclave measurement for this source tree and configuration")
    p.add_argument("--consortium", type=Path, help="consortium file the enclave is configured with")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = EnclaveConfig.from_consortium_file(args.consortium) if args.consortium else EnclaveConfig()
    print(measure(config))
    return 0
