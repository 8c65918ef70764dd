"""A relying party's attestation policy: small, typed, serialisable to JSON, strict on load."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from caltrain.attestation.errors import PolicyError
from caltrain.errors import CaltrainError
from caltrain.jsonfile import JsonFileModel


def _hex_list(values: list[str], what: str) -> list[str]:
    out = []
    for v in values:
        try:
            bytes.fromhex(v)
        except ValueError:
            raise ValueError(f"{what} entry {v!r} is not hex") from None
        out.append(v.lower())
    return out


class SimulatedPolicy(BaseModel):
    """Which simulated "platform keys" (stand-ins for hardware roots) this policy trusts."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    platform_keys: list[str] = Field(default_factory=list)

    @field_validator("platform_keys")
    @classmethod
    def _hex(cls, v: list[str]) -> list[str]:
        return _hex_list(v, "simulated.platform_keys")


def _hex_field(v: str | None, what: str, size: int) -> str | None:
    if v is None:
        return None
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raise ValueError(f"{what} {v!r} is not hex") from None
    if len(raw) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(raw)}")
    return v.lower()


class HardwarePolicy(BaseModel):
    """What every real platform section shares: how much of the vendor's TCB verdict is required.

    Fail closed by default: without collateral (Intel TCB info / QE identity / CRLs, or AMD's CRL) only the
    signature and chain are known, not whether the platform is patched or revoked, so evidence without it is
    refused unless `require_collateral` is false. Only "UpToDate" TCB statuses are accepted unless listed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    require_collateral: bool = True
    accepted_tcb_statuses: list[str] = Field(default_factory=lambda: ["UpToDate"])


class SgxPolicy(HardwarePolicy):
    """SGX (Gramine) specifics. MRENCLAVE goes in the top-level `measurements`."""

    mrsigners: list[str] = Field(default_factory=list)  # accepted enclave signers; empty: any signer
    isv_prod_id: int | None = None
    min_isv_svn: int = Field(default=0, ge=0)

    @field_validator("mrsigners")
    @classmethod
    def _signers_hex(cls, v: list[str]) -> list[str]:
        return _hex_list(v, "sgx-dcap.mrsigners")


class TdxPolicy(HardwarePolicy):
    """TDX specifics. MRTD goes in the top-level `measurements`; RTMRs pin firmware, kernel and command line."""

    rtmrs: dict[int, str] = Field(default_factory=dict)  # index 0..3 -> expected 48-byte value
    mr_config_id: str | None = None
    mr_owner: str | None = None
    mr_owner_config: str | None = None
    mr_seams: list[str] = Field(default_factory=list)  # accepted TDX module measurements; empty: any
    min_tee_tcb_svn: str | None = None  # 16 bytes, compared byte by byte

    @field_validator("rtmrs")
    @classmethod
    def _rtmrs(cls, v: dict[int, str]) -> dict[int, str]:
        if any(i not in range(4) for i in v):
            raise ValueError("tdx.rtmrs keys must be 0..3")
        return {i: str(_hex_field(x, f"tdx.rtmrs[{i}]", 48)) for i, x in v.items()}

    @field_validator("mr_config_id", "mr_owner", "mr_owner_config")
    @classmethod
    def _48(cls, v: str | None) -> str | None:
        return _hex_field(v, "tdx field", 48)

    @field_validator("min_tee_tcb_svn")
    @classmethod
    def _16(cls, v: str | None) -> str | None:
        return _hex_field(v, "tdx.min_tee_tcb_svn", 16)

    @field_validator("mr_seams")
    @classmethod
    def _seams(cls, v: list[str]) -> list[str]:
        return _hex_list(v, "tdx.mr_seams")


class SnpTcb(BaseModel):
    """An SEV-SNP TCB version by component (fmc exists on Turin and later only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    bootloader: int = Field(default=0, ge=0, le=255)
    tee: int = Field(default=0, ge=0, le=255)
    snp: int = Field(default=0, ge=0, le=255)
    microcode: int = Field(default=0, ge=0, le=255)
    fmc: int = Field(default=0, ge=0, le=255)


class SnpPolicy(HardwarePolicy):
    """SEV-SNP specifics. MEASUREMENT goes in the top-level `measurements`.

    `require_collateral` here means AMD's CRL for the product; the TCB itself is judged by `min_tcb` against
    the REPORTED_TCB that the VCEK certifies.
    """

    min_tcb: SnpTcb = Field(default_factory=SnpTcb)
    min_guest_svn: int = Field(default=0, ge=0)
    vmpls: list[int] = Field(default_factory=lambda: [0])  # accepted VMPLs; 0 is the guest kernel's own level
    host_data: str | None = None
    id_key_digests: list[str] = Field(default_factory=list)  # accepted ID-block signers; empty: any
    chip_ids: list[str] = Field(default_factory=list)  # accepted chips; empty: any
    allow_vlek: bool = True  # VLEK: key issued by AMD to a cloud provider rather than per chip

    @field_validator("host_data")
    @classmethod
    def _host_data(cls, v: str | None) -> str | None:
        return _hex_field(v, "sev-snp.host_data", 32)

    @field_validator("id_key_digests", "chip_ids")
    @classmethod
    def _hexes(cls, v: list[str]) -> list[str]:
        return _hex_list(v, "sev-snp field")


class Policy(JsonFileModel):
    """What evidence a participant accepts before releasing a key. Everything unlisted is denied."""

    what: ClassVar[str] = "policy"
    error: ClassVar[type[CaltrainError]] = PolicyError

    version: int = 1
    platforms: list[str]
    measurements: list[str]
    allow_simulated: bool = False
    allow_debug: bool = False
    max_evidence_age_s: float = Field(default=300.0, gt=0)
    simulated: SimulatedPolicy | None = None
    # Real platforms: a listed platform with no section gets that section's (fail-closed) defaults.
    sgx_dcap: SgxPolicy | None = Field(default=None, alias="sgx-dcap")
    tdx: TdxPolicy | None = None
    sev_snp: SnpPolicy | None = Field(default=None, alias="sev-snp")

    @field_validator("measurements")
    @classmethod
    def _measurements_hex(cls, v: list[str]) -> list[str]:
        return _hex_list(v, "measurements")

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"unsupported policy version {v}")
        return v

    def sgx_section(self) -> SgxPolicy:
        return self.sgx_dcap or SgxPolicy()

    def tdx_section(self) -> TdxPolicy:
        return self.tdx or TdxPolicy()

    def snp_section(self) -> SnpPolicy:
        return self.sev_snp or SnpPolicy()

