"""A relying party's attestation policy: small, typed, serialisable to JSON, strict on load."""

from __future__ import annotations

import json
from typing import Any, ClassVar, NoReturn, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

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


# Written in place of a value a policy must otherwise pin: accepting anything is a choice, never a default.
ANY = "any"


def _pinned(v: str, what: str, size: int) -> str:
    if v == ANY:
        return ANY
    try:
        return str(_hex_field(v, what, size))
    except ValueError as exc:
        raise PolicyError(f'{exc}; write the register\'s value in hex, or "any" to accept any value') from None


def _pinned_list(v: list[str], what: str, size: int) -> list[str]:
    if ANY in v and v != [ANY]:
        raise PolicyError(f'{what} lists "any" beside other values: write ["any"] alone to accept any value')
    return v if v == [ANY] else [_pinned(x, f"{what} entry", size) for x in v]


def admits(expected: str, actual: bytes) -> bool:
    """Whether a pinned value (hex, or "any" written out) admits this register."""
    return expected == ANY or actual.hex() == expected


def admits_one_of(accepted: list[str], actual: bytes) -> bool:
    """Whether a list of accepted values (or ["any"] written out) admits this register."""
    return accepted == [ANY] or actual.hex() in accepted


class HardwarePolicy(BaseModel):
    """What every real platform section shares: how much of the vendor's TCB verdict is required.

    Fail closed by default: without collateral (Intel TCB info / QE identity / CRLs, or AMD's CRL) only the
    signature and chain are known, not whether the platform is patched or revoked, so evidence without it is
    refused unless `require_collateral` is false. Only "UpToDate" TCB statuses are accepted unless listed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str]
    # The fields that identify the workload and must be written out, each with its explicit "accept any" form.
    explicit: ClassVar[dict[str, Any]] = {}

    require_collateral: bool = True
    accepted_tcb_statuses: list[str] = Field(default_factory=lambda: ["UpToDate"])

    @model_validator(mode="before")
    @classmethod
    def _explicit_fields_written(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for field, anything in cls.explicit.items():
                if data.get(field) in (None, []):  # TdxPolicy._rtmrs names absent RTMRs
                    state = "empty" if data.get(field) is not None else "missing"
                    raise PolicyError(
                        f"{cls.name}.{field} is {state}: write the value it must have, or "
                        f"{json.dumps(anything)} to accept any value explicitly"
                    )
        return data


class SgxPolicy(HardwarePolicy):
    """SGX (Gramine) specifics. MRENCLAVE goes in the top-level `measurements` and fixes the enclave's code and
    initial data, so the signer may be left open; but ISVPRODID and ISVSVN are whatever the signer wrote, so
    judging them needs a pinned signer."""

    name: ClassVar[str] = "sgx-dcap"

    mrsigners: list[str] = Field(default_factory=list)  # accepted enclave signers; empty: any signer
    isv_prod_id: int | None = None
    min_isv_svn: int = Field(default=0, ge=0)

    @field_validator("mrsigners")
    @classmethod
    def _signers_hex(cls, v: list[str]) -> list[str]:
        return _hex_list(v, "sgx-dcap.mrsigners")

    @model_validator(mode="after")
    def _signer_vouches_for_svn(self) -> Self:
        if not self.mrsigners and (self.isv_prod_id is not None or self.min_isv_svn > 0):
            raise PolicyError(
                "sgx-dcap.isv_prod_id/min_isv_svn are chosen by whoever signs the enclave: "
                "pin sgx-dcap.mrsigners too, or anyone can sign the same MRENCLAVE with any product id and SVN"
            )
        return self


class TdxPolicy(HardwarePolicy):
    """TDX specifics. MRTD (top-level `measurements`) is only the TD firmware: the kernel, initrd, command line
    and what runs later are in the RTMRs, the TDX module that isolates the TD is MRSEAM, and MRCONFIGID,
    MROWNER and MROWNERCONFIG are set by the host at launch for the guest to read. All must be written out."""

    name: ClassVar[str] = "tdx"
    explicit: ClassVar[dict[str, Any]] = {
        "rtmrs": {str(i): ANY for i in range(4)},
        "mr_seams": [ANY],
        "mr_config_id": ANY,
        "mr_owner": ANY,
        "mr_owner_config": ANY,
    }

    rtmrs: dict[int, str]  # index 0..3 -> expected 48-byte value or "any"; every index present
    mr_seams: list[str]  # accepted TDX module measurements, or ["any"]
    mr_config_id: str
    mr_owner: str
    mr_owner_config: str
    min_tee_tcb_svn: str | None = None  # 16 bytes, compared byte by byte

    @field_validator("rtmrs")
    @classmethod
    def _rtmrs(cls, v: dict[int, str]) -> dict[int, str]:
        if any(i not in range(4) for i in v):
            raise ValueError("tdx.rtmrs keys must be 0..3")
        missing = [f"RTMR{i}" for i in range(4) if i not in v]
        if missing:
            raise PolicyError(
                f"tdx.rtmrs lacks {', '.join(missing)}: pin each of RTMR0..3 to its 48-byte value, "
                'or write "any" for a register whose every value is accepted'
            )
        return {i: _pinned(v[i], f"tdx.rtmrs[{i}]", 48) for i in range(4)}

    @field_validator("mr_config_id", "mr_owner", "mr_owner_config")
    @classmethod
    def _48(cls, v: str, info: ValidationInfo) -> str:
        return _pinned(v, f"tdx.{info.field_name}", 48)

    @field_validator("min_tee_tcb_svn")
    @classmethod
    def _16(cls, v: str | None) -> str | None:
        return _hex_field(v, "tdx.min_tee_tcb_svn", 16)

    @field_validator("mr_seams")
    @classmethod
    def _seams(cls, v: list[str]) -> list[str]:
        return _pinned_list(v, "tdx.mr_seams", 48)


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
    the REPORTED_TCB that the VCEK certifies. MEASUREMENT covers the launch image; HOST_DATA is set by the host
    at launch outside it, for the guest to read, so it must be written out. The ID key, like SGX's MRSIGNER,
    may be left open, except that GUEST_SVN is whatever its ID block says, so judging it needs a pinned key.
    """

    name: ClassVar[str] = "sev-snp"
    explicit: ClassVar[dict[str, Any]] = {"host_data": ANY}

    min_tcb: SnpTcb = Field(default_factory=SnpTcb)
    min_guest_svn: int = Field(default=0, ge=0)
    vmpls: list[int] = Field(default_factory=lambda: [0])  # accepted VMPLs; 0 is the guest kernel's own level
    host_data: str  # 32 bytes, or "any"
    id_key_digests: list[str] = Field(default_factory=list)  # accepted ID-block signers; empty: any
    chip_ids: list[str] = Field(default_factory=list)  # accepted chips; empty: any
    allow_vlek: bool = True  # VLEK: key issued by AMD to a cloud provider rather than per chip

    @field_validator("host_data")
    @classmethod
    def _host_data(cls, v: str) -> str:
        return _pinned(v, "sev-snp.host_data", 32)

    @field_validator("id_key_digests", "chip_ids")
    @classmethod
    def _hexes(cls, v: list[str]) -> list[str]:
        return _hex_list(v, "sev-snp field")

    @model_validator(mode="after")
    def _id_key_vouches_for_svn(self) -> Self:
        if not self.id_key_digests and self.min_guest_svn > 0:
            raise PolicyError(
                "sev-snp.min_guest_svn is whatever the ID block's signer wrote: pin sev-snp.id_key_digests too, "
                "or anyone can launch the same image with an ID block of any GUEST_SVN"
            )
        return self


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
    # Real platforms: TDX and SNP need their section (it names the workload's registers); SGX's has defaults.
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

    @model_validator(mode="after")
    def _accepted_platforms_have_sections(self) -> Self:
        for section, value in ((TdxPolicy, self.tdx), (SnpPolicy, self.sev_snp)):
            if section.name in self.platforms and value is None:
                _no_section(section)
        return self

    def sgx_section(self) -> SgxPolicy:
        return self.sgx_dcap or SgxPolicy()

    def tdx_section(self) -> TdxPolicy:
        return self.tdx or _no_section(TdxPolicy)

    def snp_section(self) -> SnpPolicy:
        return self.sev_snp or _no_section(SnpPolicy)


def _no_section(section: type[HardwarePolicy]) -> NoReturn:
    raise PolicyError(
        f'the policy has no "{section.name}" section, so it accepts no {section.name} evidence: the section must '
        f"name {', '.join(section.explicit)} (write {json.dumps(section.explicit)} to accept any workload)"
    )
