"""Data-use policies: what a participant consents to, signed with its upload and enforced by the enclave.

A policy travels with each dataset (its canonical JSON is part of what the participant signs at submission) and
the enclave keeps it sealed beside the data. A job runs only over datasets whose policies all admit it; every
later use of a trained model (evaluation, forensic queries, receiving the FrontNet, deploying it) is checked
against the policies of every dataset that trained it. A refusal names the dataset and the clause.

The defaults are the cautious ones a participant should start from (`caltrain pack` writes them for review):
the whole model stays in the enclave (shallow cuts leak their inputs: see `caltrain assess`), no evaluation
use, forensic queries by the consortium's auditors, the FrontNet released to nobody, deployment by owners.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from caltrain.crypto.hashing import tagged_hash
from caltrain.enclave.consortium import Member, Role
from caltrain.enclave.errors import ConsentRefused
from caltrain.errors import CaltrainError, DataError
from caltrain.jsonfile import JsonFileModel

HASH_PATTERN = r"^[0-9a-f]{64}$"


class PolicyInvalid(DataError):
    """A data-use policy is malformed (unknown field, wrong type, not canonical)."""


class Grantees(BaseModel):
    """Who a clause grants something to: named members, or every member holding one of the roles."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    members: list[str] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)

    def admits(self, member: Member) -> bool:
        return member.name in self.members or bool(member.roles & set(self.roles))


class ApprovedModel(BaseModel):
    """An architecture the participant approves, by its canonical spec hash (the name is for people)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    architecture: str = Field(pattern=HASH_PATTERN)


class DataUsePolicy(JsonFileModel):
    """One dataset's consent: which models, how deep a cut at least, which uses, who may do what with results."""

    what: ClassVar[str] = "data-use policy"
    error: ClassVar[type[CaltrainError]] = PolicyInvalid

    version: Literal[1] = 1
    models: list[ApprovedModel] = Field(
        default_factory=list, description="architectures that may train on (or evaluate with) this data"
    )
    min_frontnet_blocks: int | Literal["all"] = Field(
        default="all", description="FrontNet blocks kept in the enclave at least; 'all' = full-enclave mode only"
    )
    training: bool = Field(default=True, description="may train a model")
    evaluation: bool = Field(default=False, description="may serve as held-out evaluation data (its IRs cross)")
    tracers: Grantees = Field(
        default_factory=lambda: Grantees(roles=[Role.AUDITOR]),
        description="who may ask forensic questions about models trained on it",
    )
    frontnet_recipients: Grantees = Field(
        default_factory=Grantees, description="who may receive a trained FrontNet and the job's seed"
    )
    deployers: Grantees = Field(
        default_factory=lambda: Grantees(roles=[Role.OWNER]),
        description="who may deploy a model trained on it for inference",
    )

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return tagged_hash("caltrain/data-use-policy/v1", self.canonical_bytes()).hex()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Self:
        """Parse a signed policy; only its canonical form is accepted, so one policy has one digest."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PolicyInvalid(f"data-use policy is not JSON: {exc}") from None
        policy = cls.from_dict(data)
        if policy.canonical_bytes() != raw:
            raise PolicyInvalid("data-use policy is not in canonical form (sorted keys, no spaces, defaults written)")
        return policy


def _refuse(dataset: str, clause: str, why: str) -> ConsentRefused:
    return ConsentRefused(f"dataset {dataset}: data-use policy clause '{clause}' {why}")


def check_job_use(
    policies: dict[str, DataUsePolicy],
    *,
    use: Literal["training", "evaluation"],
    model: str,
    architecture: str,
    frontnet_blocks: int,
    total_blocks: int,
) -> None:
    """Raise `ConsentRefused` unless every dataset's policy admits this use of this model at this cut."""
    for dataset, policy in policies.items():
        if not getattr(policy, use):
            raise _refuse(dataset, use, "does not allow this use")
        if architecture not in {m.architecture for m in policy.models}:
            raise _refuse(dataset, "models", f"does not approve {model} (architecture {architecture[:16]}…)")
        least = total_blocks if policy.min_frontnet_blocks == "all" else policy.min_frontnet_blocks
        if frontnet_blocks < least:
            raise _refuse(
                dataset, "min_frontnet_blocks", f"needs at least {least} blocks inside, not {frontnet_blocks}"
            )


GrantClause = Literal["tracers", "frontnet_recipients", "deployers"]


def check_grant(policies: Iterable[tuple[str, DataUsePolicy]], clause: GrantClause, member: Member) -> None:
    """Raise `ConsentRefused` unless every policy's `clause` grants it to `member`."""
    for dataset, policy in policies:
        if not getattr(policy, clause).admits(member):
            raise _refuse(dataset, clause, f"does not include {member.name!r}")
