"""`caltrain evidence inspect`: every parsed field of a quote/report and a step-by-step verdict.

Attestation failures are the main pain users report; this shows which check failed and why, so nobody needs to
switch checks off. No option or environment variable weakens verification: without `--policy` the policy
step is reported as not judged, and the exit status is 0 only when every check that ran passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from caltrain.attestation.errors import MalformedEvidence, UnknownPlatform
from caltrain.attestation.evidence import Evidence
from caltrain.attestation.pki import load_certificates
from caltrain.attestation.policy import Policy, SnpPolicy, TdxPolicy
from caltrain.attestation.quotes import to_jsonable
from caltrain.attestation.quotes.dcap import TEE_TDX, parse_dcap_quote
from caltrain.attestation.quotes.snp import REPORT_BYTES, parse_snp_report
from caltrain.attestation.registry import get_backend
from caltrain.attestation.trace import Trace
from caltrain.attestation.verifier import check_claims
from caltrain.errors import AttestationError

# Every status Intel's TCB info uses: without a policy the TCB status is reported, not judged.
ALL_TCB_STATUSES = [
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked",
]  # fmt: skip


def _detect(quote: bytes) -> str:
    if len(quote) >= 8 and quote[2:4] == b"\x02\x00" and quote[0] in (3, 4, 5) and quote[1] == 0:
        return "tdx" if int.from_bytes(quote[4:8], "little") == TEE_TDX else "sgx-dcap"
    if len(quote) == REPORT_BYTES:
        return "sev-snp"
    raise UnknownPlatform("cannot tell the platform from the file; pass --platform")


def _read_evidence(args: argparse.Namespace) -> Evidence:
    try:
        raw = args.file.read_bytes()
    except OSError as exc:
        raise MalformedEvidence(f"cannot read {args.file}: {exc.strerror or exc}") from None
    if raw.lstrip().startswith(b"{"):
        try:
            evidence = Evidence.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedEvidence(f"{args.file}: not a caltrain evidence JSON ({exc})") from None
    else:
        with contextlib.suppress(UnicodeDecodeError, ValueError):  # hex text; otherwise binary, as captured
            raw = bytes.fromhex(raw.decode().strip())
        evidence = Evidence(args.platform if args.platform != "auto" else _detect(raw), raw, b"", b"")
    platform = evidence.platform if args.platform == "auto" else args.platform
    supporting = dict(evidence.supporting)
    if args.cert_chain:
        chain = args.cert_chain.read_bytes()
        if platform == "sev-snp":
            certs = load_certificates(chain, str(args.cert_chain))
            supporting["vcek"] = certs[0].public_bytes(Encoding.DER)
            if len(certs) > 1:
                supporting["cert_chain"] = b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:])
        else:
            supporting["cert_chain"] = chain
    if args.collateral:
        supporting["crl" if platform == "sev-snp" else "collateral"] = args.collateral.read_bytes()
    return Evidence(platform, evidence.quote, evidence.enclave_public_key, evidence.nonce, supporting)


def _parsed(evidence: Evidence) -> Any:
    """Every parsed field; raw blobs that are only signature input are summarised by their size."""
    try:
        if evidence.platform == "sev-snp":
            fields = to_jsonable(parse_snp_report(evidence.quote))
        else:
            fields = to_jsonable(parse_dcap_quote(evidence.quote))
            cert = fields["certification"]
            cert["qe_report_raw"] = f"{len(cert['qe_report_raw']) // 2} bytes"
            cert["pck_chain_pem"] = f"{len(cert['pck_chain_pem']) // 2} bytes of PEM"
        fields["signed_bytes"] = f"{len(fields['signed_bytes']) // 2} bytes"
        return fields
    except MalformedEvidence as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _permissive(platform: str) -> Policy:
    """Judges nothing beyond signatures and chains: every register is written out as "any"."""
    explicit = {"tdx": TdxPolicy.explicit, "sev-snp": SnpPolicy.explicit}.get(platform, {})
    section = {**explicit, "require_collateral": False, "accepted_tcb_statuses": ALL_TCB_STATUSES}
    if platform == "sev-snp":
        section["vmpls"] = [0, 1, 2, 3]
    return Policy.from_dict({"platforms": [platform], "measurements": [], platform: section})


def inspect(evidence: Evidence, policy: Policy | None, now: datetime) -> dict[str, Any]:
    """Run every check, recording each; a failure stops the run and is reported, never raised."""
    trace = Trace()
    report: dict[str, Any] = {
        "platform": evidence.platform,
        "verified_at": now.isoformat(),
        "parsed": _parsed(evidence),
    }
    try:
        backend = get_backend(evidence.platform)
        claims = backend.verify_quote(evidence, policy or _permissive(evidence.platform), now=now, trace=trace)
        report["claims"] = {
            "measurement": claims.measurement,
            "report_data": claims.report_data.hex(),
            "debug": claims.debug,
            "tcb_statuses": claims.details.get("tcb_statuses"),
            "advisories": claims.details.get("advisories"),
        }
        report["caveats"] = list(claims.caveats)
        if policy is None:
            trace.skip("policy", "no --policy given: TCB status, measurement and debug are reported, not judged")
        else:
            with trace.step("policy (measurement, debug)"):
                if evidence.platform not in policy.platforms:
                    raise UnknownPlatform(f"the policy does not accept {evidence.platform}")
                check_claims(policy, claims, now)
        report["verified"] = True
    except AttestationError as exc:
        report["verified"] = False
        report["error"] = f"{type(exc).__name__}: {exc}"
    report["steps"] = [{"step": s.name, "outcome": s.outcome, "detail": s.detail} for s in trace.steps]
    return report


def _print_text(report: dict[str, Any]) -> None:
    print(f"platform: {report['platform']}    verified at: {report['verified_at']}")
    print("\nparsed fields:")
    _print_tree(report["parsed"], "  ")
    print("\nverdict:")
    marks = {"pass": "PASS", "fail": "FAIL", "skipped": "SKIP"}
    for step in report["steps"]:
        print(f"  [{marks[step['outcome']]}] {step['step']}" + (f": {step['detail']}" if step["detail"] else ""))
    for caveat in report.get("caveats", ()):
        print(f"  caveat: {caveat}")
    if report["verified"]:
        print(f"\nVERIFIED (measurement {report['claims']['measurement']})")
    else:
        print(f"\nNOT VERIFIED: {report['error']}")


def _print_tree(value: Any, indent: str) -> None:
    for key, item in value.items():
        if isinstance(item, dict):
            print(f"{indent}{key}:")
            _print_tree(item, indent + "  ")
        else:
            print(f"{indent}{key}: {item}")


def run(args: argparse.Namespace) -> int:
    now = args.at or datetime.now(UTC)
    evidence = _read_evidence(args)
    policy = Policy.load(args.policy) if args.policy else None
    report = inspect(evidence, policy, now)
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        _print_text(report)
    return 0 if report["verified"] else 1
