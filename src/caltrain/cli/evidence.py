"""`caltrain evidence inspect`: every parsed field of a quote/report and a step-by-step verdict
(`caltrain.cli.evidence_inspect`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltrain.cli.args import iso_time

PLATFORMS = ("sgx-dcap", "tdx", "sev-snp")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evidence", help="inspect TEE evidence (SGX/TDX quotes, SEV-SNP reports)")
    inner = p.add_subparsers(dest="evidence_command", required=True, metavar="SUBCOMMAND")
    q = inner.add_parser("inspect", help="print every parsed field and a step-by-step verdict")
    q.add_argument("file", type=Path, help="raw quote/report (binary or hex) or a caltrain evidence JSON")
    q.add_argument("--platform", choices=("auto", *PLATFORMS), default="auto", help="evidence format")
    q.add_argument("--at", dest="at", type=iso_time, help="verification time, ISO 8601 (default: now)")
    q.add_argument("--cert-chain", type=Path, help="SGX/TDX: PCK chain (PEM); SNP: VCEK/VLEK first, then ASK/ARK")
    q.add_argument("--collateral", type=Path, help="SGX/TDX: Intel collateral JSON; SNP: AMD CRL")
    q.add_argument("--policy", type=Path, help="policy JSON to judge the evidence against")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caltrain.cli.evidence_inspect import run as run_inspect

    return run_inspect(args)
