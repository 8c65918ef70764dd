"""Who may do what: the consortium file (members' names, roles and keys) and the dataset schema they agreed on.

The enclave is configured with it and it is part of the measurement, so a participant who checks the
measurement also checks the membership, every member's keys and the schema: the operator cannot quietly add a
member, swap a key or widen what counts as a valid record.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from caltrain.errors import AuthError, CaltrainError

FORMAT_VERSION = 2
KEY_BYTES = 32


class ConsortiumError(CaltrainError):
    """The consortium file is malformed or inconsistent."""


class Role(StrEnum):
    """What a member may ask the enclave for (the wire schema declares which roles each call needs)."""

    PARTICIPANT = "participant"  # contributes data
    OWNER = "owner"  # starts training jobs, deploys models
    AUDITOR = "auditor"  # asks forensic questions about trained models


@dataclass(frozen=True)
class Member:
    """A consortium member: Ed25519 key to sign requests, X25519 key the enclave encrypts answers to."""

    name: str
    roles: frozenset[Role]
    public_key: bytes
    encryption_key: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": sorted(r.value for r in self.roles),
            "public_key": self.public_key.hex(),
            "encryption_key": self.encryption_key.hex(),
        }


@dataclass(frozen=True)
class DatasetSchema:
    """What every ingested record must be: a float32 array of `shape`, values in `value_range`, and an integer
    label in [0, num_classes). The enclave refuses a dataset with any record outside it."""

    shape: tuple[int, ...]
    num_classes: int
    value_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not 1 <= len(self.shape) <= 4 or any(not isinstance(d, int) or d < 1 for d in self.shape):
            raise ConsortiumError(f"dataset schema shape {list(self.shape)} must be 1-4 positive integers")
        if not isinstance(self.num_classes, int) or not 2 <= self.num_classes <= 1 << 20:
            raise ConsortiumError(f"dataset schema num_classes {self.num_classes!r} must be an integer >= 2")
        low, high = self.value_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConsortiumError(f"dataset schema value_range {list(self.value_range)} must be finite, low < high")

    @property
    def payload_size(self) -> int:
        return 4 * math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "num_classes": self.num_classes, "value_range": list(self.value_range)}

    @classmethod
    def from_json(cls, data: Any) -> DatasetSchema:
        try:
            if set(data) != {"shape", "num_classes", "value_range"}:
                raise ValueError("fields must be exactly shape, num_classes, value_range")
            low, high = data["value_range"]
            return cls(tuple(data["shape"]), data["num_classes"], (float(low), float(high)))
        except (TypeError, ValueError) as exc:
            raise ConsortiumError(f"dataset schema: {exc}") from None


@dataclass(frozen=True)
class Consortium:
    members: tuple[Member, ...] = ()
    schema: DatasetSchema | None = None

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        keys = [k for m in self.members for k in (m.public_key, m.encryption_key)]
        if len(set(names)) != len(names):
            raise ConsortiumError("consortium lists a member name twice")
        if len(set(keys)) != len(keys):
            raise ConsortiumError("consortium lists a public key twice")

    def member(self, name: str, *, role: Role | None = None) -> Member:
        """The named member (holding `role`, if given), or `AuthError`: unknown members are denied."""
        for m in self.members:
            if m.name == name:
                if role is not None and role not in m.roles:
                    held = ", ".join(sorted(m.roles)) or "no role"
                    raise AuthError(f"member {name!r} holds {held}, not {role.value}")
                return m
        raise AuthError(f"{name!r} is not a member of the consortium")

    def with_member(self, member: Member) -> Consortium:
        others = tuple(m for m in self.members if m.name != member.name)
        return Consortium((*others, member), self.schema)

    def with_schema(self, schema: DatasetSchema) -> Consortium:
        return Consortium(self.members, schema)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "members": [m.to_json() for m in sorted(self.members, key=lambda m: m.name)],
            "dataset_schema": self.schema.to_json() if self.schema else None,
        }

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: Any) -> Consortium:
        if (
            not isinstance(data, dict)
            or data.get("version") != FORMAT_VERSION
            or not isinstance(data.get("members"), list)
        ):
            raise ConsortiumError(
                f'consortium file must be {{"version": {FORMAT_VERSION}, "members": [...], "dataset_schema": ...}}'
            )
        unknown = sorted(set(data) - {"version", "members", "dataset_schema"})
        if unknown:
            raise ConsortiumError(f"consortium file has unknown fields {unknown}")
        members = []
        for i, raw in enumerate(data["members"]):
            try:
                if not isinstance(raw, dict) or set(raw) != {"name", "roles", "public_key", "encryption_key"}:
                    raise ValueError("fields must be exactly name, roles, public_key, encryption_key")
                keys = bytes.fromhex(raw["public_key"]), bytes.fromhex(raw["encryption_key"])
                if any(len(k) != KEY_BYTES for k in keys) or not isinstance(raw["name"], str) or not raw["name"]:
                    raise ValueError("keys must be 32 bytes hex and the name a non-empty string")
                if not isinstance(raw["roles"], list) or not raw["roles"]:
                    raise ValueError("roles must be a non-empty list")
                members.append(Member(raw["name"], frozenset(Role(r) for r in raw["roles"]), *keys))
            except (TypeError, ValueError, AttributeError) as exc:
                raise ConsortiumError(f"consortium member #{i}: {exc}") from None
        schema = data.get("dataset_schema")
        return cls(tuple(members), None if schema is None else DatasetSchema.from_json(schema))

    @classmethod
    def load(cls, path: Path) -> Consortium:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConsortiumError(f"cannot read consortium file {path}: {exc}") from None

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")
