"""The SIMULATED TEE backend: an Ed25519 "platform key" stands in for hardware.

It proves the protocol, not the protection: whoever runs the host can read the enclave's memory and holds
the platform key. Evidence says so in every quote, and policies must opt in with `allow_simulated: true`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from caltrain.attestation.errors import BadEvidenceSignature, MalformedEvidence
from caltrain.attestation.evidence import Evidence, QuoteClaims
from caltrain.attestation.policy import Policy
from caltrain.attestation.registry import register_backend
from caltrain.attestation.trace import Trace
from caltrain.crypto.errors import BadSignature
from caltrain.crypto.signing import SIGNATURE_BYTES, Identity, verify_signature

PLATFORM = "simulated"
QUOTE_FORMAT = "caltrain-simulated-quote/v1"
WARNING = "SIMULATED TEE: no hardware isolation; the host operator can read enclave memory"
_FIELDS = {"format", "platform_key", "measurement", "report_data", "issued_at", "debug", "warning"}


@dataclass(frozen=True)
class SimulatedPlatform:
    """The "hardware" of the simulation: a signing key (its root of trust) and a sealing secret."""

    identity: Identity
    sealing_secret: bytes

    @classmethod
    def load_or_create(cls, directory: Path) -> SimulatedPlatform:
        directory.mkdir(parents=True, exist_ok=True)
        key_path, secret_path = directory / "platform_key.pem", directory / "sealing_secret"
        if not key_path.exists():
            Identity.generate().save(key_path)
        if not secret_path.exists():
            fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32))
        return cls(Identity.load(key_path), secret_path.read_bytes())

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key


class SimulatedCollector:
    """Signs a report over (measurement, report_data) with the platform key, as hardware would."""

    platform = PLATFORM

    def __init__(self, *, platform: SimulatedPlatform, measurement: str, debug: bool = False) -> None:
        self._platform = platform
        self._measurement = measurement
        self._debug = debug

    def collect(self, report_data: bytes) -> tuple[bytes, dict[str, bytes]]:
        body = {
            "format": QUOTE_FORMAT,
            "platform_key": self._platform.public_key.hex(),
            "measurement": self._measurement,
            "report_data": report_data.hex(),
            "issued_at": datetime.now().timestamp(),
            "debug": self._debug,
            "warning": WARNING,
        }
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return raw + self._platform.identity.sign(raw), {}


def parse_quote(quote: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """Split a simulated quote into its checked body, the signed bytes and the signature."""
    if len(quote) <= SIGNATURE_BYTES:
        raise MalformedEvidence(f"simulated quote is {len(quote)} bytes: too short")
    raw, signature = quote[:-SIGNATURE_BYTES], quote[-SIGNATURE_BYTES:]
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MalformedEvidence("simulated quote body is not JSON") from None
    if not isinstance(body, dict) or set(body) != _FIELDS or body.get("format") != QUOTE_FORMAT:
        raise MalformedEvidence(f"simulated quote body must have exactly the fields {sorted(_FIELDS)}")
    try:
        bytes.fromhex(body["platform_key"])
        bytes.fromhex(body["report_data"])
        bytes.fromhex(body["measurement"])
        float(body["issued_at"])
    except (TypeError, ValueError):
        raise MalformedEvidence("simulated quote has a field of the wrong type") from None
    if not isinstance(body["debug"], bool):
        raise MalformedEvidence("simulated quote field 'debug' must be a boolean")
    return body, raw, signature


class SimulatedVerifier:
    platform = PLATFORM
    simulated = True

    def verify_quote(
        self, evidence: Evidence, policy: Policy, *, now: datetime, trace: Trace | None = None
    ) -> QuoteClaims:
        trace = trace or Trace()
        with trace.step("parse"):
            body, raw, signature = parse_quote(evidence.quote)
        with trace.step("platform key trusted"):
            trusted = policy.simulated.platform_keys if policy.simulated else []
            if body["platform_key"] not in trusted:
                raise BadEvidenceSignature(
                    f"simulated platform key {body['platform_key'][:16]}… is not trusted by the policy"
                )
        with trace.step("quote signature"):
            try:
                verify_signature(bytes.fromhex(body["platform_key"]), raw, signature, what="simulated quote")
            except BadSignature as exc:
                raise BadEvidenceSignature(str(exc)) from None
        return QuoteClaims(
            measurement=body["measurement"],
            report_data=bytes.fromhex(body["report_data"]),
            debug=body["debug"],
            simulated=True,
            issued_at=float(body["issued_at"]),
            details={"platform_key": body["platform_key"], "warning": WARNING},
            caveats=(WARNING,),
        )


register_backend(SimulatedVerifier(), SimulatedCollector)
