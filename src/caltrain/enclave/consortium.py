"""Who may do what: the consortium file (members' names, roles and Ed25519 public keys).

The enclave is configured with it and it is part of the measurement, so a participant who checks the
measurement also checks the membership: the operator cannot quietly add a member.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from caltrain.errors import AuthError, CaltrainError


class ConsortiumError(CaltrainError):
    """The consortium file is malformed or inconsistent."""


class Role(StrEnum):
    PARTICIPANT = "participant"
    AUDITOR = "auditor"


@dataclass(frozen=True)
class Member:
    name: str
    role: Role
    public_key: bytes

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role.value, "public_key": self.public_key.hex()}


@dataclass(frozen=True)
class Consortium:
    members: tuple[Member, ...] = ()

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        keys = [m.public_key for m in self.members]
        if len(set(names)) != len(names):
            raise ConsortiumError("consortium lists a member name twice")
        if len(set(keys)) != len(keys):
            raise ConsortiumError("consortium lists a public key twice")

    def member(self, name: str, *, role: Role | None = None) -> Member:
        """The named member, or `AuthError`: unknown members are denied, never assumed valid."""
        for m in self.members:
            if m.name == name:
                if role is not None and m.role != role:
                    raise AuthError(f"member {name!r} is a {m.role.value}, not a {role.value}")
                return m
        raise AuthError(f"{name!r} is not a member of the consortium")

    def with_member(self, member: Member) -> Consortium:
        others = tuple(m for m in self.members if m.name != member.name)
        return Consortium((*others, member))

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "members": [m.to_json() for m in sorted(self.members, key=lambda m: m.name)]}

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: Any) -> Consortium:
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("members"), list):
            raise ConsortiumError('consortium file must be {"version": 1, "members": [...]}')
        members = []
        for i, raw in enumerate(data["members"]):
            try:
                if set(raw) != {"name", "role", "public_key"}:
                    raise ValueError("fields must be exactly name, role, public_key")
                key = bytes.fromhex(raw["public_key"])
                if len(key) != 32 or not raw["name"]:
                    raise ValueError("public_key must be 32 bytes hex and name non-empty")
                members.append(Member(str(raw["name"]), Role(raw["role"]), key))
            except (TypeError, ValueError, AttributeError) as exc:
                raise ConsortiumError(f"consortium member #{i}: {exc}") from None
        return cls(tuple(members))

    @classmethod
    def load(cls, path: Path) -> Consortium:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConsortiumError(f"cannot read consortium file {path}: {exc}") from None

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")
