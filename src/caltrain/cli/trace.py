"""`caltrain trace` (auditor) and `caltrain proofs verify` (participant): forensic accountability."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caltrain.cli.args import out_file, positive_int
from caltrain.errors import DataError

if TYPE_CHECKING:
    import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="auditor: which training instances and contributors caused these mispredictions")
    p.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8700")
    p.add_argument("--home", type=Path, required=True, help="the auditor's home (signs the request)")
    p.add_argument("--policy", type=Path, required=True, help="attestation policy: inputs go to a verified enclave")
    p.add_argument("--job", required=True, help="training job whose model mispredicted")
    p.add_argument("--input", type=Path, required=True, help=".npz with x (images) and optionally predicted")
    p.add_argument("--predicted", type=int, help="the label the model predicted (for every input)")
    p.add_argument("--k", type=positive_int, default=10, help="training records to answer per misprediction")
    p.add_argument("--method", default="ours", choices=("ours", "caltrain-knn"),
                   help="attribution method: ours, or the paper's caltrain-knn")
    p.add_argument("--out", type=out_file, default=Path("trace.json"), help="where to write the signed report")
    p.set_defaults(func=trace)

    v = sub.add_parser("proofs", help="participant: verify answers' proofs about your own records, offline")
    vsub = v.add_subparsers(dest="action", required=True)
    check = vsub.add_parser("verify", help="check every record of yours in a trace report against your receipts")
    check.add_argument("--home", type=Path, required=True, help="the participant's home")
    check.add_argument("--trace", type=Path, required=True, help="trace.json written by `caltrain trace`")
    check.add_argument(
        "--container",
        type=Path,
        action="append",
        required=True,
        help="your container(s) (.ctd); opened with your key to rebuild your receipt proofs",
    )
    check.set_defaults(func=verify_proofs)


def _load_inputs(path: Path, predicted: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    import zipfile

    import numpy as np

    from caltrain.data.datasets import as_images

    try:
        with np.load(path, allow_pickle=False) as data:
            x = as_images(data["x"])
            labels = np.asarray(data["predicted"], dtype=np.int64) if "predicted" in data else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: expected an .npz with array 'x' (and optional 'predicted'): {exc}") from None
    if predicted is not None:
        labels = np.full(len(x), predicted, dtype=np.int64)
    return x, labels


def _print_report(report: dict[str, Any]) -> None:
    attributed = [a for a in report["answers"] if a["responsible"]]
    print(
        f"method {report['method']}: {len(report['answers'])} mispredictions traced, {len(attributed)} attributed, "
        f"{len(report['answers']) - len(attributed)} 'no responsible training data found'; "
        f"blame judged against all {report['traced']} queries the enclave has traced for this job with this method"
    )
    for i, answer in enumerate(report["answers"][:5]):
        top = [(r["record"]["contributor"], r["record"]["record_id"]) for r in answer["records"][:3]]
        print(
            f"  query {i}: predicted {answer['predicted']} -> {answer['verdict']} "
            f"(confidence {answer['confidence']:.2f}); top records {top}"
        )
    named = [row for row in report["contributors"] if row.get("named")]
    print(f"contributors named: {', '.join(row['contributor'] for row in named) or 'nobody'}")
    for row in report["contributors"][:5]:
        verdict = "named" if row.get("named") else "not named"
        print(f"  {row['contributor']:<20} {verdict:<9} {row['records']} evidence records "
              f"(chance: {row['expected_records']:.1f}), behind {row['answers']} of {row['answered']} distinct "
              f"answered inputs, p {row['p_value']:.2g}")


def trace(args: argparse.Namespace) -> int:
    from caltrain.attestation import Policy
    from caltrain.enclave.wire import ForensicReply
    from caltrain.service.client import CaltrainClient
    from caltrain.service.participant import MemberHome

    home = MemberHome.load(args.home)
    x, predicted = _load_inputs(args.input, args.predicted)
    policy = Policy.load(args.policy)
    with CaltrainClient(args.server, home=home) as client:
        answer = client.trace(args.job, x, policy, predicted=predicted, k=args.k, method=args.method)
    assert isinstance(answer.reply, ForensicReply)
    report = answer.reply.report
    args.out.write_text(json.dumps({"report": report, **answer.to_json()}, indent=2))
    _print_report(report)
    print(
        f"the enclave signed this report for your query, its log statement is job {args.job}'s, and every proof "
        f"verified against that signed log root; report -> {args.out}"
    )
    return 0


def verify_proofs(args: argparse.Namespace) -> int:
    from caltrain.service.errors import HomeError
    from caltrain.service.participant import MemberHome

    home = MemberHome.load(args.home)
    try:
        trace_doc = json.loads(args.trace.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read trace report {args.trace}: {exc}") from None
    if not isinstance(trace_doc, dict) or not isinstance(trace_doc.get("signed"), dict):
        raise HomeError(f"{args.trace} is not a trace report written by `caltrain trace` (no signed answer)")
    checked = home.verify_trace(trace_doc, args.container)
    print(
        f"the report is signed by the enclave you submitted to; {checked} answer records naming {home.name} "
        "verified: each is in that job's enclave-signed log and is an instance you committed to at upload"
    )
    return 0
