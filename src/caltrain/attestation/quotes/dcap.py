"""Intel DCAP quotes: SGX quote v3, TDX quote v4 and v5 (TD 1.0 / TD 1.5 bodies), ECDSA-P256 attestation keys.

One parser for all three: they share the header, the signature-data layout and the QE report; they differ in
the body (SGX report, TD report) and in whether the QE certification data is nested (type 6, v4/v5).
Layouts follow Intel's "Intel TDX DCAP Quoting Library API" and "SGX ECDSA Quote Library API" documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from caltrain.attestation.errors import MalformedQuote, UnsupportedEvidenceVersion
from caltrain.attestation.quotes.reader import Reader

HEADER_BYTES = 48
SGX_REPORT_BYTES = 384
TD10_REPORT_BYTES = 584
TD15_REPORT_BYTES = 648
ECDSA_P256_KEY_TYPE = 2
TEE_SGX = 0x00000000
TEE_TDX = 0x00000081
SGX_ATTR_DEBUG = 0x02  # ATTRIBUTES.flags bit 1
TD_ATTR_DEBUG = 0x01  # TDATTRIBUTES bit 0 (TUD.DEBUG)


class CertDataType(IntEnum):
    PCK_CERT_CHAIN = 5
    QE_REPORT_CERTIFICATION_DATA = 6


class BodyType(IntEnum):
    SGX = 1
    TD10 = 2
    TD15 = 3


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class SgxReportBody:
    """An SGX REPORT body (the application enclave's in a quote, or the QE's own)."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes  # flags (u64 LE) || xfrm (u64 LE)
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & SGX_ATTR_DEBUG)


@dataclass(frozen=True)
class TdReportBody:
    """A TD report body (TD 1.0; TD 1.5 adds TEE_TCB_SVN2 and MRSERVICETD)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & TD_ATTR_DEBUG)


@dataclass(frozen=True)
class QeCertificationData:
    """The quoting enclave's report, its PCK signature, the auth data it binds, and the PCK chain (PEM)."""

    qe_report: SgxReportBody
    qe_report_raw: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes


@dataclass(frozen=True)
class DcapQuote:
    header: QuoteHeader
    body: SgxReportBody | TdReportBody
    signed_bytes: bytes  # what the attestation key signs: header (|| v5 body descriptor) || body
    signature: bytes  # raw r || s, 64 bytes
    attestation_key: bytes  # raw x || y, 64 bytes
    certification: QeCertificationData
    trailing: bytes  # bytes after the signature data (seen on real TDX quotes); not covered by any signature

    @property
    def is_tdx(self) -> bool:
        return isinstance(self.body, TdReportBody)


def _header(r: Reader) -> QuoteHeader:
    h = QuoteHeader(
        version=r.u16("version"),
        attestation_key_type=r.u16("attestation_key_type"),
        tee_type=r.u32("tee_type"),
        qe_svn=r.u16("qe_svn"),
        pce_svn=r.u16("pce_svn"),
        qe_vendor_id=r.take(16, "qe_vendor_id"),
        user_data=r.take(20, "user_data"),
    )
    if h.version not in (3, 4, 5):
        raise UnsupportedEvidenceVersion(f"DCAP quote version {h.version} is not 3, 4 or 5")
    if h.attestation_key_type != ECDSA_P256_KEY_TYPE:
        raise UnsupportedEvidenceVersion(f"DCAP attestation key type {h.attestation_key_type} is not ECDSA-P256 (2)")
    if h.version == 3 and h.tee_type != TEE_SGX:
        raise UnsupportedEvidenceVersion(f"DCAP quote v3 must be SGX, tee_type is {h.tee_type:#x}")
    if h.tee_type not in (TEE_SGX, TEE_TDX):
        raise UnsupportedEvidenceVersion(f"DCAP tee_type {h.tee_type:#x} is neither SGX (0) nor TDX (0x81)")
    return h


def parse_sgx_report(raw: bytes) -> SgxReportBody:
    r = Reader(raw, "SGX report")
    cpu_svn = r.take(16, "cpu_svn")
    misc_select = r.u32("misc_select")
    r.take(12, "reserved1")
    isv_ext_prod_id = r.take(16, "isv_ext_prod_id")
    attributes = r.take(16, "attributes")
    mr_enclave = r.take(32, "mr_enclave")
    r.take(32, "reserved2")
    mr_signer = r.take(32, "mr_signer")
    r.take(32, "reserved3")
    config_id = r.take(64, "config_id")
    isv_prod_id = r.u16("isv_prod_id")
    isv_svn = r.u16("isv_svn")
    config_svn = r.u16("config_svn")
    r.take(42, "reserved4")
    isv_family_id = r.take(16, "isv_family_id")
    report_data = r.take(64, "report_data")
    r.expect_end()
    return SgxReportBody(
        cpu_svn, misc_select, isv_ext_prod_id, attributes, mr_enclave, mr_signer, config_id,
        isv_prod_id, isv_svn, config_svn, isv_family_id, report_data,
    )  # fmt: skip


def parse_td_report(raw: bytes) -> TdReportBody:
    r = Reader(raw, "TD report")
    fields = dict(
        tee_tcb_svn=r.take(16, "tee_tcb_svn"),
        mr_seam=r.take(48, "mr_seam"),
        mr_signer_seam=r.take(48, "mr_signer_seam"),
        seam_attributes=r.take(8, "seam_attributes"),
        td_attributes=r.take(8, "td_attributes"),
        xfam=r.take(8, "xfam"),
        mr_td=r.take(48, "mr_td"),
        mr_config_id=r.take(48, "mr_config_id"),
        mr_owner=r.take(48, "mr_owner"),
        mr_owner_config=r.take(48, "mr_owner_config"),
    )
    rtmrs = (r.take(48, "rtmr0"), r.take(48, "rtmr1"), r.take(48, "rtmr2"), r.take(48, "rtmr3"))
    report_data = r.take(64, "report_data")
    extra: dict[str, bytes] = {}
    if len(raw) == TD15_REPORT_BYTES:
        extra = {"tee_tcb_svn2": r.take(16, "tee_tcb_svn2"), "mr_service_td": r.take(48, "mr_service_td")}
    r.expect_end()
    return TdReportBody(rtmrs=rtmrs, report_data=report_data, **fields, **extra)


def _qe_certification(r: Reader) -> QeCertificationData:
    qe_report_raw = r.take(SGX_REPORT_BYTES, "qe_report")
    qe_report_signature = r.take(64, "qe_report_signature")
    qe_auth_data = r.take(r.u16("qe_auth_data_size"), "qe_auth_data")
    cert_type = r.u16("certification_data_type")
    cert_data = r.take(r.u32("certification_data_size"), "certification_data")
    r.expect_end()
    if cert_type != CertDataType.PCK_CERT_CHAIN:
        raise UnsupportedEvidenceVersion(
            f"QE certification data type {cert_type} is not a PCK certificate chain (5); "
            "fetch the chain from the PCCS for types 1-4"
        )
    return QeCertificationData(
        qe_report=parse_sgx_report(qe_report_raw),
        qe_report_raw=qe_report_raw,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=cert_data.rstrip(b"\0"),
    )


def parse_dcap_quote(quote: bytes) -> DcapQuote:
    """Parse an SGX v3 or TDX v4/v5 quote; bytes after the signature data are kept as `trailing`, not parsed."""
    r = Reader(quote, "DCAP quote")
    header = _header(r)
    if header.version == 5:
        body_type = r.u16("body_type")
        body_size = r.u32("body_size")
        expected = {BodyType.SGX: SGX_REPORT_BYTES, BodyType.TD10: TD10_REPORT_BYTES, BodyType.TD15: TD15_REPORT_BYTES}
        if body_type not in expected:
            raise UnsupportedEvidenceVersion(f"DCAP v5 body type {body_type} is not 1, 2 or 3")
        if body_size != expected[BodyType(body_type)]:
            raise MalformedQuote(f"DCAP v5 body type {body_type} declares {body_size} bytes")
        if (body_type == BodyType.SGX) != (header.tee_type == TEE_SGX):
            raise MalformedQuote(f"DCAP v5 body type {body_type} does not match tee_type {header.tee_type:#x}")
    else:
        body_size = SGX_REPORT_BYTES if header.tee_type == TEE_SGX else TD10_REPORT_BYTES
    body_raw = r.take(body_size, "body")
    body: SgxReportBody | TdReportBody = (
        parse_sgx_report(body_raw) if header.tee_type == TEE_SGX else parse_td_report(body_raw)
    )
    signed_bytes = quote[: r.pos]
    sig = r.sub(r.u32("signature_data_size"), "signature_data")
    signature = sig.take(64, "quote_signature")
    attestation_key = sig.take(64, "attestation_key")
    if header.version == 3:
        certification = _qe_certification(sig)
    else:
        cert_type = sig.u16("certification_data_type")
        if cert_type != CertDataType.QE_REPORT_CERTIFICATION_DATA:
            raise UnsupportedEvidenceVersion(
                f"DCAP v{header.version} certification data type {cert_type} is not QE report data (6)"
            )
        certification = _qe_certification(sig.sub(sig.u32("certification_data_size"), "qe_certification"))
        sig.expect_end()
    return DcapQuote(header, body, signed_bytes, signature, attestation_key, certification, quote[r.pos :])
