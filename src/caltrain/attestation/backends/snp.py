"""AMD SEV-SNP backend: report signature by the VCEK (per chip) or VLEK (per cloud provider), the key's
certificate chain ASK/ASVK <- ARK to a pinned ARK (Milan, Genoa, Turin), and the key certificate's binding
to the report (its TCB extensions equal REPORTED_TCB, its hwID equals CHIP_ID).

The VCEK comes as supporting evidence (`vcek`, DER or PEM; fetched from AMD KDS by chip id and TCB, or
read from the configfs-tsm `auxblob` certificate table). The ASK/ASVK are shipped with the package and
verified under the pinned ARK on every use; `cert_chain` may supply others. `crl` is AMD's CRL (optional).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from caltrain.attestation.backends.dcap import check_tcb_policy
from caltrain.attestation.collect import ConfigfsTsmCollector
from caltrain.attestation.errors import (
    BadQuoteSignature,
    CertificateChainError,
    KeyCertificateMismatch,
    MalformedQuote,
    ReportFieldMismatch,
    SvnTooLow,
    UntrustedRoot,
)
from caltrain.attestation.evidence import Evidence, QuoteClaims
from caltrain.attestation.pki import (
    check_crl,
    der_int,
    describe,
    extension_bytes,
    load_certificates,
    load_packaged,
    load_root,
    verify_chain,
    verify_ecdsa_raw,
)
from caltrain.attestation.policy import Policy, SnpPolicy, admits
from caltrain.attestation.quotes import to_jsonable
from caltrain.attestation.quotes.reader import Reader
from caltrain.attestation.quotes.snp import SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, SnpReport, TcbVersion, parse_snp_report
from caltrain.attestation.registry import register_backend
from caltrain.attestation.trace import Trace

PRODUCTS = ("milan", "genoa", "turin")
NO_CRL_CAVEAT = (
    "signature and chain verified; TCB status not checked against AMD's CRL (none supplied); "
    "REPORTED_TCB is judged by the policy's min_tcb"
)
_AMD = "1.3.6.1.4.1.3704.1."
_SPL_OIDS = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8", "fmc": "3.9"}
_HWID_OID = _AMD + "4"
_GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes_le
_GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes_le


def key_certificate_from_auxblob(auxblob: bytes) -> bytes:
    """The VCEK/VLEK from the GUID-keyed certificate table the host attaches (configfs-tsm `auxblob`)."""
    r = Reader(auxblob, "SNP certificate table")
    while True:
        guid, offset, length = r.take(16, "guid"), r.u32("offset"), r.u32("length")
        if guid == bytes(16):
            raise MalformedQuote("SNP certificate table has no VCEK or VLEK entry")
        if guid in (_GUID_VCEK, _GUID_VLEK):
            if offset + length > len(auxblob):
                raise MalformedQuote("SNP certificate table entry points past the end")
            return auxblob[offset : offset + length]


@dataclass(frozen=True)
class SnpResult:
    report: SnpReport
    product: str
    key_kind: str  # "VCEK" or "VLEK"
    reported_tcb: TcbVersion
    collateral_checked: bool
    caveats: tuple[str, ...]

    def claims(self) -> QuoteClaims:
        turin = self.product == "turin"
        details: dict[str, Any] = {
            "report": {k: v for k, v in to_jsonable(self.report).items() if k not in ("signed_bytes",)},
            "product": self.product,
            "signing_key": self.key_kind,
            **{
                name: to_jsonable(TcbVersion.decode(getattr(self.report, name), turin=turin))
                for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")
            },
        }
        return QuoteClaims(
            measurement=self.report.measurement.hex(),
            report_data=self.report.report_data,
            debug=self.report.debug,
            simulated=False,
            details=details,
            caveats=self.caveats,
        )


def _candidates(supporting: Mapping[str, bytes]) -> list[x509.Certificate]:
    if "cert_chain" in supporting:
        return load_certificates(supporting["cert_chain"], "AMD certificate chain")
    return [load_packaged(f"amd_ask_{p}.pem") for p in PRODUCTS] + [load_packaged("amd_asvk_milan.pem")]


def verify_snp(raw: bytes, supporting: Mapping[str, bytes], *, now: datetime, trace: Trace) -> SnpResult:
    """Everything about an SNP report that does not depend on the relying party's policy."""
    with trace.step("parse") as notes:
        report = parse_snp_report(raw)
        if report.signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
            raise MalformedQuote(f"SEV-SNP report signing key field is {report.signing_key}: not signed by VCEK/VLEK")
        key_kind = "VLEK" if report.signing_key == SIGNING_KEY_VLEK else "VCEK"
        notes.append(f"report v{report.version}, signed by {key_kind}")
    with trace.step("key certificate chain") as notes:
        if "vcek" in supporting:
            leaf_bytes = supporting["vcek"]
        elif "auxblob" in supporting:
            leaf_bytes = key_certificate_from_auxblob(supporting["auxblob"])
        else:
            raise CertificateChainError("no VCEK/VLEK certificate supplied (supporting 'vcek', or 'auxblob')")
        leaf = load_certificates(leaf_bytes, key_kind)[0]
        arks = {p: load_root(f"amd_ark_{p}.pem") for p in PRODUCTS}
        intermediate = next((c for c in _candidates(supporting) if _issued(leaf, c)), None)
        if intermediate is None:
            raise UntrustedRoot(f"{key_kind} {leaf.issuer.rfc4514_string()} is not issued by a known ASK/ASVK")
        root = verify_chain([leaf, intermediate], list(arks.values()), now, f"{key_kind} chain")
        product = next(p for p, ark in arks.items() if ark == root)
        issuer_cn = describe(intermediate)
        if ("VLEK" in issuer_cn) != (key_kind == "VLEK"):
            raise KeyCertificateMismatch(f"the report says {key_kind} but the key certificate is issued by {issuer_cn}")
        notes.append(f"{key_kind} <- {issuer_cn} <- {describe(root)}")
    with trace.step("report signature"):
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not verify_ecdsa_raw(
            key, report.signature_r, report.signature_s, report.signed_bytes, hashes.SHA384()
        ):
            raise BadQuoteSignature(f"SEV-SNP report signature does not verify under the {key_kind}")
    reported = TcbVersion.decode(report.reported_tcb, turin=product == "turin")
    with trace.step("key certificate binding"):
        _check_binding(leaf, report, reported, key_kind)
    caveats: list[str] = []
    if "crl" in supporting:
        with trace.step("revocation (AMD CRL)"):
            check_crl(supporting["crl"], root, [intermediate], now, "AMD CRL")
    else:
        trace.skip("collateral", NO_CRL_CAVEAT)
        caveats.append(NO_CRL_CAVEAT)
    return SnpResult(report, product, key_kind, reported, "crl" in supporting, tuple(caveats))


def _issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    return cert.issuer == issuer.subject


def _check_binding(leaf: x509.Certificate, report: SnpReport, reported: TcbVersion, key_kind: str) -> None:
    """A VCEK is derived from the chip secret and the TCB: it must certify exactly this report's TCB and chip."""
    for name, suffix in _SPL_OIDS.items():
        raw = extension_bytes(leaf, _AMD + suffix)
        if raw is None:
            if name == "fmc":
                continue
            raise KeyCertificateMismatch(f"{key_kind} lacks the {name} SPL extension")
        if der_int(raw, f"{key_kind} {name} SPL") != getattr(reported, name):
            raise KeyCertificateMismatch(
                f"{key_kind} certifies {name} SVN {der_int(raw, name)}, "
                f"the report's REPORTED_TCB says {getattr(reported, name)}"
            )
    if key_kind == "VCEK" and not report.mask_chip_id:
        hwid = extension_bytes(leaf, _HWID_OID) or b""
        if hwid[:2] == b"\x04\x40":  # some issuers wrap it in an OCTET STRING
            hwid = hwid[2:]
        if hwid != report.chip_id:
            raise KeyCertificateMismatch("VCEK hwID is not this report's CHIP_ID")


def check_snp_policy(result: SnpResult, section: SnpPolicy) -> None:
    report, tcb = result.report, result.reported_tcb
    for name in ("bootloader", "tee", "snp", "microcode", "fmc"):
        if getattr(tcb, name) < getattr(section.min_tcb, name):
            raise SvnTooLow(
                f"REPORTED_TCB {name} SVN {getattr(tcb, name)} is below the minimum {getattr(section.min_tcb, name)}"
            )
    if report.guest_svn < section.min_guest_svn:
        raise SvnTooLow(f"GUEST_SVN {report.guest_svn} is below the minimum {section.min_guest_svn}")
    if report.vmpl not in section.vmpls:
        raise ReportFieldMismatch(f"VMPL {report.vmpl} is not among the accepted {section.vmpls}")
    if not admits(section.host_data, report.host_data):
        raise ReportFieldMismatch(f"HOST_DATA {report.host_data.hex()} is not {section.host_data}")
    if section.id_key_digests and report.id_key_digest.hex() not in section.id_key_digests:
        raise ReportFieldMismatch(f"ID_KEY_DIGEST {report.id_key_digest.hex()} is not among {section.id_key_digests}")
    if section.chip_ids and report.chip_id.hex() not in section.chip_ids:
        raise ReportFieldMismatch(f"CHIP_ID {report.chip_id.hex()[:16]}… is not among the accepted chips")
    if result.key_kind == "VLEK" and not section.allow_vlek:
        raise ReportFieldMismatch("the report is signed by a VLEK (cloud-provider key) and the policy forbids VLEKs")


class SnpVerifier:
    platform = "sev-snp"
    simulated = False

    def verify_quote(
        self, evidence: Evidence, policy: Policy, *, now: datetime, trace: Trace | None = None
    ) -> QuoteClaims:
        trace = trace or Trace()
        result = verify_snp(evidence.quote, evidence.supporting, now=now, trace=trace)
        with trace.step("platform policy"):
            section = policy.snp_section()
            check_tcb_policy({} if result.collateral_checked else None, section, self.platform)
            check_snp_policy(result, section)
        return result.claims()


register_backend(SnpVerifier(), lambda **options: ConfigfsTsmCollector("sev-snp", **options))
