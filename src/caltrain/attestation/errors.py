"""Attestation errors: one class per failure, so a user sees which check denied the key."""

from __future__ import annotations

from caltrain.errors import AttestationError


class UnknownPlatform(AttestationError):
    """The evidence names a platform no backend is registered for, or the policy does not accept."""


class SimulatedNotAllowed(AttestationError):
    """Simulated evidence was presented to a policy without `allow_simulated: true`."""


class DebugNotAllowed(AttestationError):
    """The enclave runs in debug mode (its memory is readable by the host) and the policy forbids it."""


class BadEvidenceSignature(AttestationError):
    """The evidence signature does not verify, or is made by a key the policy does not trust."""


class MeasurementMismatch(AttestationError):
    """The enclave's measurement is not one the policy expects."""


class StaleNonce(AttestationError):
    """The evidence answers a nonce that this verifier did not issue, or issued too long ago."""


class NonceReused(AttestationError):
    """The evidence answers a nonce that was already used once (replay)."""


class StaleEvidence(AttestationError):
    """The evidence is older than the policy's `max_evidence_age_s`, or dated in the future."""


class KeyNotBound(AttestationError):
    """report_data does not bind the presented enclave key and the verifier's nonce."""


class MalformedEvidence(AttestationError):
    """The evidence could not be parsed."""


class PolicyError(AttestationError):
    """A policy file is malformed or inconsistent."""
