"""A relying party's attestation policy: small, typed, serialisable to JSON, strict on load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from caltrain.attestation.errors import PolicyError


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


class Policy(BaseModel):
    """What evidence a participant accepts before releasing a key. Everything unlisted is denied."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    version: int = 1
    platforms: list[str]
    measurements: list[str]
    allow_simulated: bool = False
    allow_debug: bool = False
    max_evidence_age_s: float = Field(default=300.0, gt=0)
    simulated: SimulatedPolicy | None = None

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

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(f"invalid policy: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PolicyError(f"cannot read policy {path}: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
