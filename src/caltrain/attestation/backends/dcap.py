"""Intel DCAP backends, `sgx-dcap` (SGX quote v3 from Gramine) and `tdx` (quote v4/v5), over one shared core.

Offline verification: quote signature by the attestation key, QE report binding of that key, PCK chain to
the pinned Intel SGX Root CA, QE report signature by the PCK key; then, when collateral is supplied, its
signatures, CRLs, QE identity and TCB level. The policy decides whether missing collateral is acceptable.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from caltrain.attestation.collect import ConfigfsTsmCollector, GramineCollector
from caltrain.attestation.errors import (
    BadQeReportSignature,
    BadQuoteSignature,
    CollateralMissing,
    MalformedQuote,
    MeasurementMismatch,
    QeBindingMismatch,
    ReportFieldMismatch,
    SignerMismatch,
    SvnTooLow,
    TcbOutOfDate,
)
from caltrain.attestation.evidence import Evidence, QuoteClaims
from caltrain.attestation.intel import DcapCollateral, PckInfo, evaluate_collateral
from caltrain.attestation.pki import describe, load_certificates, load_root, p256_key, verify_chain, verify_p256_rs
from caltrain.attestation.policy import HardwarePolicy, Policy, SgxPolicy, TdxPolicy, admits, admits_one_of
from caltrain.attestation.quotes import to_jsonable
from caltrain.attestation.quotes.dcap import DcapQuote, SgxReportBody, TdReportBody, parse_dcap_quote
from caltrain.attestation.registry import register_backend
from caltrain.attestation.trace import Trace

NO_TCB_CAVEAT = "signature and chain verified; TCB status not checked (no collateral supplied)"
INTEL_ROOT = "intel_sgx_root_ca.der"


@dataclass(frozen=True)
class DcapResult:
    """A DCAP quote whose signatures and chain verified, with the TCB verdict when collateral was given."""

    quote: DcapQuote
    pck: PckInfo
    tcb_statuses: Mapping[str, str] | None  # None without collateral
    advisories: tuple[str, ...]
    caveats: tuple[str, ...]

    def claims(self) -> QuoteClaims:
        body = self.quote.body
        measurement = body.mr_td if isinstance(body, TdReportBody) else body.mr_enclave
        details: dict[str, Any] = {
            "header": to_jsonable(self.quote.header),
            "body": to_jsonable(body),
            "qe_report": to_jsonable(self.quote.certification.qe_report),
            "fmspc": self.pck.fmspc.hex(),
            "pck_tcb_components": list(self.pck.sgx_tcb_components),
            "pck_pce_svn": self.pck.pce_svn,
            "tcb_statuses": dict(self.tcb_statuses or {}),
            "advisories": list(self.advisories),
            "trailing_bytes": len(self.quote.trailing),
        }
        return QuoteClaims(
            measurement=measurement.hex(),
            report_data=body.report_data,
            debug=body.debug,
            simulated=False,
            details=details,
            caveats=self.caveats,
        )


def verify_dcap(raw: bytes, supporting: Mapping[str, bytes], *, tdx: bool, now: datetime, trace: Trace) -> DcapResult:
    """Everything about a DCAP quote that does not depend on the relying party's policy."""
    caveats: list[str] = []
    with trace.step("parse") as notes:
        quote = parse_dcap_quote(raw)
        if quote.is_tdx != tdx:
            raise MalformedQuote(
                f"this is {'a TDX' if quote.is_tdx else 'an SGX'} quote, not {'TDX' if tdx else 'SGX'}"
            )
        if quote.trailing.strip(b"\0"):
            raise MalformedQuote(f"{len(quote.trailing)} non-zero bytes follow the signature data; they are unsigned")
        if quote.trailing:
            caveats.append(f"{len(quote.trailing)} zero padding bytes after the signature data ignored")
        notes.append(f"DCAP v{quote.header.version}, {'TDX' if tdx else 'SGX'}")
    cert = quote.certification
    with trace.step("quote signature"):
        attestation_key = p256_key(quote.attestation_key)
        if not verify_p256_rs(attestation_key, quote.signature, quote.signed_bytes):
            raise BadQuoteSignature("quote signature does not verify under its attestation key")
    with trace.step("QE report binding"):
        expected = hashlib.sha256(quote.attestation_key + cert.qe_auth_data).digest() + bytes(32)
        if not hmac.compare_digest(cert.qe_report.report_data, expected):
            raise QeBindingMismatch("QE report_data is not SHA-256(attestation key || QE auth data) || zeros")
    with trace.step("PCK certificate chain") as notes:
        chain_pem = supporting.get("cert_chain", cert.pck_chain_pem)
        chain = load_certificates(chain_pem, "PCK certificate chain")
        root = verify_chain(chain, [load_root(INTEL_ROOT)], now, "PCK chain")
        if "cert_chain" not in supporting and b"".join(c.public_bytes(Encoding.PEM) for c in chain) != chain_pem.rstrip(
            b"\0"
        ):
            # PEM framing is not signed; insist on the canonical form so no byte of a quote is malleable
            raise MalformedQuote("the PCK chain in the quote is not canonical PEM (altered framing or whitespace)")
        notes.append(" <- ".join(describe(c) for c in chain))
    with trace.step("QE report signature"):
        pck_key = chain[0].public_key()
        if not isinstance(pck_key, ec.EllipticCurvePublicKey) or not verify_p256_rs(
            pck_key, cert.qe_report_signature, cert.qe_report_raw
        ):
            raise BadQeReportSignature("QE report is not signed by the PCK certificate's key")
    pck = PckInfo.from_certificate(chain[0])
    statuses: dict[str, str] | None = None
    advisories: list[str] = []
    if "collateral" in supporting:
        collateral = DcapCollateral.from_json(supporting["collateral"])
        statuses, advisories = evaluate_collateral(
            collateral, body=quote.body, qe_report=cert.qe_report, pck_chain=chain, root=root, now=now, trace=trace
        )
    else:
        trace.skip("collateral", NO_TCB_CAVEAT)
        caveats.append(NO_TCB_CAVEAT)
    return DcapResult(quote, pck, statuses, tuple(advisories), tuple(caveats))


def check_tcb_policy(statuses: Mapping[str, str] | None, section: HardwarePolicy, platform: str) -> None:
    """Shared by every hardware backend: is the TCB verdict (None: no collateral) good enough for this policy?"""
    if statuses is None:
        if section.require_collateral:
            raise CollateralMissing(
                f"the policy requires collateral for {platform} (TCB status, revocation) and none was supplied; "
                f"set {platform}.require_collateral: false to accept signature-and-chain-only evidence"
            )
        return
    for component, status in statuses.items():
        if status not in section.accepted_tcb_statuses:
            raise TcbOutOfDate(
                f"{component} TCB status is {status}; the policy accepts {section.accepted_tcb_statuses}"
            )


def check_sgx_policy(body: SgxReportBody, section: SgxPolicy) -> None:
    if section.mrsigners and body.mr_signer.hex() not in section.mrsigners:
        raise SignerMismatch(f"MRSIGNER {body.mr_signer.hex()} is not among the accepted {section.mrsigners}")
    if section.isv_prod_id is not None and body.isv_prod_id != section.isv_prod_id:
        raise ReportFieldMismatch(f"ISVPRODID {body.isv_prod_id} is not {section.isv_prod_id}")
    if body.isv_svn < section.min_isv_svn:
        raise SvnTooLow(f"ISVSVN {body.isv_svn} is below the minimum {section.min_isv_svn}")


def check_tdx_policy(body: TdReportBody, section: TdxPolicy) -> None:
    for index, expected in sorted(section.rtmrs.items()):
        if not admits(expected, body.rtmrs[index]):
            raise MeasurementMismatch(f"RTMR{index} is {body.rtmrs[index].hex()}, the policy expects {expected}")
    if not admits_one_of(section.mr_seams, body.mr_seam):
        raise MeasurementMismatch(f"MRSEAM {body.mr_seam.hex()} (TDX module) is not among {section.mr_seams}")
    for name, label in (("mr_config_id", "MRCONFIGID"), ("mr_owner", "MROWNER"), ("mr_owner_config", "MROWNERCONFIG")):
        expected_value = getattr(section, name)
        if not admits(expected_value, getattr(body, name)):
            raise ReportFieldMismatch(f"{label} is {getattr(body, name).hex()}, the policy expects {expected_value}")
    if section.min_tee_tcb_svn is not None:
        minimum = bytes.fromhex(section.min_tee_tcb_svn)
        if any(own < low for own, low in zip(body.tee_tcb_svn, minimum, strict=True)):
            raise SvnTooLow(f"TEE_TCB_SVN {body.tee_tcb_svn.hex()} is below {minimum.hex()} in some component")


class DcapVerifier:
    """SGX and TDX share the DCAP quote format, its chain and its collateral; only the report body and the
    policy section differ."""

    simulated = False

    def __init__(self, platform: str) -> None:
        self.platform = platform
        self._tdx = platform == "tdx"

    def verify_quote(
        self, evidence: Evidence, policy: Policy, *, now: datetime, trace: Trace | None = None
    ) -> QuoteClaims:
        trace = trace or Trace()
        result = verify_dcap(evidence.quote, evidence.supporting, tdx=self._tdx, now=now, trace=trace)
        body = result.quote.body
        with trace.step("platform policy"):
            if isinstance(body, TdReportBody) and self._tdx:
                tdx = policy.tdx_section()
                check_tcb_policy(result.tcb_statuses, tdx, self.platform)
                check_tdx_policy(body, tdx)
            elif isinstance(body, SgxReportBody) and not self._tdx:
                sgx = policy.sgx_section()
                check_tcb_policy(result.tcb_statuses, sgx, self.platform)
                check_sgx_policy(body, sgx)
            else:
                raise AssertionError("verify_dcap returned a report body of the other platform")
        return result.claims()


register_backend(DcapVerifier("sgx-dcap"), GramineCollector)
register_backend(DcapVerifier("tdx"), lambda **options: ConfigfsTsmCollector("tdx", **options))
