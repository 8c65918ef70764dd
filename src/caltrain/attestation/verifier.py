"""The relying party's decision: does this evidence come from an enclave we may give keys to?"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime

from caltrain.attestation.errors import (
    DebugNotAllowed,
    KeyNotBound,
    MeasurementMismatch,
    NonceReused,
    SimulatedNotAllowed,
    StaleEvidence,
    StaleNonce,
    UnknownPlatform,
)
from caltrain.attestation.evidence import Evidence, QuoteClaims, VerifiedEnclave
from caltrain.attestation.policy import Policy
from caltrain.attestation.registry import get_backend
from caltrain.crypto.hashing import report_data_for

NONCE_BYTES = 32


class NonceTracker:
    """Issues fresh nonces and accepts each one once, within its lifetime (replay and staleness guard)."""

    def __init__(self, max_age_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age_s = max_age_s
        self._clock = clock
        self._issued: dict[bytes, float] = {}
        self._used: set[bytes] = set()

    def issue(self) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        self._issued[nonce] = self._clock()
        return nonce

    def consume(self, nonce: bytes) -> None:
        if nonce in self._used:
            raise NonceReused(f"nonce {nonce.hex()[:16]}… was already answered once (replayed evidence)")
        issued = self._issued.pop(nonce, None)
        if issued is None:
            raise StaleNonce(f"nonce {nonce.hex()[:16]}… was not issued by this verifier")
        self._used.add(nonce)
        age = self._clock() - issued
        if age > self._max_age_s:
            raise StaleNonce(f"nonce was issued {age:.0f} s ago; limit {self._max_age_s:.0f} s")


def check_claims(policy: Policy, claims: QuoteClaims, now: datetime) -> None:
    """The platform-independent policy checks on verified claims (also run by `caltrain evidence inspect`)."""
    if claims.debug and not policy.allow_debug:
        raise DebugNotAllowed("enclave runs in DEBUG mode; the policy forbids debug enclaves")
    if claims.measurement.lower() not in policy.measurements:
        raise MeasurementMismatch(
            f"measurement {claims.measurement} is not among the policy's expected {policy.measurements}"
        )
    if claims.issued_at is not None:
        age = now.timestamp() - claims.issued_at
        if age > policy.max_evidence_age_s or age < -60:
            raise StaleEvidence(f"evidence is {age:.0f} s old; limit {policy.max_evidence_age_s:.0f} s")


class Verifier:
    """Verifies evidence under one policy. Every failure raises its own `AttestationError` subclass."""

    def __init__(
        self,
        policy: Policy,
        *,
        nonces: NonceTracker | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.policy = policy
        self.nonces = nonces or NonceTracker(policy.max_evidence_age_s)
        self._now = now

    def new_nonce(self) -> bytes:
        return self.nonces.issue()

    def verify(self, evidence: Evidence) -> VerifiedEnclave:
        policy = self.policy
        backend = get_backend(evidence.platform)
        if evidence.platform not in policy.platforms:
            raise UnknownPlatform(
                f"platform {evidence.platform!r} is not accepted by the policy (accepts {policy.platforms})"
            )
        if backend.simulated and not policy.allow_simulated:
            raise SimulatedNotAllowed(
                "evidence comes from a SIMULATED TEE (no hardware protection); "
                "the policy must say allow_simulated: true to accept it"
            )
        now = self._now()
        claims = backend.verify_quote(evidence, policy, now=now)
        check_claims(policy, claims, now)
        self.nonces.consume(evidence.nonce)
        expected = report_data_for(evidence.enclave_public_key, evidence.nonce)
        if not hmac.compare_digest(claims.report_data[: len(expected)], expected):
            raise KeyNotBound("report_data does not bind the presented enclave key and this verifier's nonce")
        return VerifiedEnclave(
            platform=evidence.platform,
            measurement=claims.measurement.lower(),
            public_key=evidence.enclave_public_key,
            simulated=claims.simulated,
            claims=claims,
        )
