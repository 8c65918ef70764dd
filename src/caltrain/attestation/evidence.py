"""Evidence as it travels, and the verified facts a relying party may act on."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from caltrain.attestation.errors import MalformedEvidence


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedEvidence(f"evidence field {what!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise MalformedEvidence(f"evidence field {what!r} is not valid base64") from None


@dataclass(frozen=True)
class Evidence:
    """What an enclave presents: platform, the platform-signed quote, the key it binds, the nonce it answers.

    `quote` is the platform's own signed structure (simulated report, SGX/TDX quote, SNP report).
    `supporting` carries what a verifier needs beside it (certificate chains, collateral), keyed by name.
    """

    platform: str
    quote: bytes
    enclave_public_key: bytes
    nonce: bytes
    supporting: Mapping[str, bytes] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "quote": _b64(self.quote),
            "enclave_public_key": _b64(self.enclave_public_key),
            "nonce": _b64(self.nonce),
            "supporting": {k: _b64(v) for k, v in sorted(self.supporting.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> Evidence:
        if not isinstance(data, dict):
            raise MalformedEvidence("evidence must be a JSON object")
        unknown = set(data) - {"platform", "quote", "enclave_public_key", "nonce", "supporting"}
        if unknown:
            raise MalformedEvidence(f"evidence has unknown fields {sorted(unknown)}")
        platform = data.get("platform")
        if not isinstance(platform, str) or not platform:
            raise MalformedEvidence("evidence field 'platform' must be a non-empty string")
        supporting = data.get("supporting", {})
        if not isinstance(supporting, dict):
            raise MalformedEvidence("evidence field 'supporting' must be an object")
        return cls(
            platform=platform,
            quote=_unb64(data.get("quote"), "quote"),
            enclave_public_key=_unb64(data.get("enclave_public_key"), "enclave_public_key"),
            nonce=_unb64(data.get("nonce"), "nonce"),
            supporting={str(k): _unb64(v, f"supporting.{k}") for k, v in supporting.items()},
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


@dataclass(frozen=True)
class QuoteClaims:
    """What a backend read out of a quote whose signature (and chain) it verified."""

    measurement: str
    report_data: bytes
    debug: bool
    simulated: bool
    issued_at: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    caveats: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerifiedEnclave:
    """An enclave whose evidence verified under a policy: its key may receive secrets."""

    platform: str
    measurement: str
    public_key: bytes
    simulated: bool
    claims: QuoteClaims
