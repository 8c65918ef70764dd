"""AMD SEV-SNP attestation reports (ABI spec 56860, ATTESTATION_REPORT), versions 2 and later.

The report is a fixed 1184 bytes: 672 signed bytes, then an ECDSA-P384 signature with little-endian r and s.
Fields added in later versions (v3: CPUID family/model/stepping) sit in space reserved in v2.
"""

from __future__ import annotations

from dataclasses import dataclass

from caltrain.attestation.errors import MalformedQuote, UnsupportedEvidenceVersion
from caltrain.attestation.quotes.reader import Reader

REPORT_BYTES = 0x4A0
SIGNED_BYTES = 0x2A0
SIG_ALGO_ECDSA_P384_SHA384 = 1
POLICY_DEBUG = 1 << 19
POLICY_RESERVED_ONE = 1 << 17  # must be 1 in every valid guest policy
SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION: SVNs of the firmware components. Turin (family 0x1A) adds FMC and moves the bytes."""

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int

    @classmethod
    def decode(cls, raw: int, *, turin: bool) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if turin:
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7], fmc=0)


@dataclass(frozen=True)
class SnpReport:
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_family: int  # 0 in v2 reports
    cpuid_model: int
    cpuid_stepping: int
    chip_id: bytes
    committed_tcb: int
    current_version: tuple[int, int, int]  # major, minor, build
    committed_version: tuple[int, int, int]
    launch_tcb: int
    signed_bytes: bytes
    signature_r: int
    signature_s: int

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def signing_key(self) -> int:
        """0 = VCEK, 1 = VLEK, 7 = none (FLAGS bits 2..4)."""
        return (self.flags >> 2) & 0x7

    @property
    def mask_chip_id(self) -> bool:
        return bool(self.flags & 0x2)


def _version(r: Reader, what: str) -> tuple[int, int, int]:
    build, minor, major = r.u8(f"{what}_build"), r.u8(f"{what}_minor"), r.u8(f"{what}_major")
    r.take(1, f"{what}_reserved")
    return major, minor, build


def parse_snp_report(raw: bytes) -> SnpReport:
    if len(raw) != REPORT_BYTES:
        raise MalformedQuote(f"SEV-SNP report must be {REPORT_BYTES} bytes, got {len(raw)}")
    r = Reader(raw, "SEV-SNP report")
    version = r.u32("version")
    if version < 2:
        raise UnsupportedEvidenceVersion(f"SEV-SNP report version {version} is older than 2")
    head = dict(
        guest_svn=r.u32("guest_svn"),
        policy=r.u64("policy"),
        family_id=r.take(16, "family_id"),
        image_id=r.take(16, "image_id"),
        vmpl=r.u32("vmpl"),
        signature_algo=r.u32("signature_algo"),
        current_tcb=r.u64("current_tcb"),
        platform_info=r.u64("platform_info"),
        flags=r.u32("flags"),
    )
    r.take(4, "reserved0")
    mid = dict(
        report_data=r.take(64, "report_data"),
        measurement=r.take(48, "measurement"),
        host_data=r.take(32, "host_data"),
        id_key_digest=r.take(48, "id_key_digest"),
        author_key_digest=r.take(48, "author_key_digest"),
        report_id=r.take(32, "report_id"),
        report_id_ma=r.take(32, "report_id_ma"),
        reported_tcb=r.u64("reported_tcb"),
        cpuid_family=r.u8("cpuid_fam_id"),
        cpuid_model=r.u8("cpuid_mod_id"),
        cpuid_stepping=r.u8("cpuid_step"),
    )
    r.take(0x1A0 - r.pos, "reserved1")
    chip_id = r.take(64, "chip_id")
    committed_tcb = r.u64("committed_tcb")
    current_version = _version(r, "current")
    committed_version = _version(r, "committed")
    launch_tcb = r.u64("launch_tcb")
    r.take(SIGNED_BYTES - r.pos, "reserved2")
    sig_r = int.from_bytes(r.take(72, "signature_r"), "little")
    sig_s = int.from_bytes(r.take(72, "signature_s"), "little")
    if r.take(REPORT_BYTES - r.pos, "signature_reserved").strip(b"\0"):
        raise MalformedQuote("SEV-SNP signature area has non-zero reserved bytes (they are not signed)")
    report = SnpReport(
        version=version, **head, **mid,  # type: ignore[arg-type]
        chip_id=chip_id, committed_tcb=committed_tcb, current_version=current_version,
        committed_version=committed_version, launch_tcb=launch_tcb,
        signed_bytes=raw[:SIGNED_BYTES], signature_r=sig_r, signature_s=sig_s,
    )  # fmt: skip
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise UnsupportedEvidenceVersion(f"SEV-SNP signature algorithm {report.signature_algo} is not ECDSA-P384 (1)")
    if not report.policy & POLICY_RESERVED_ONE:
        raise MalformedQuote("SEV-SNP guest policy bit 17 (reserved, must be one) is zero")
    return report
