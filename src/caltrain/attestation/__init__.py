"""Attestation layer: evidence, policies, verifiers and a registry of TEE backends.

Knows nothing of ML. `Verifier.verify` is the one place a relying party (participant, inference client,
auditor) decides whether an enclave may receive keys; it fails closed with a specific typed error.
"""

from caltrain.attestation.evidence import Evidence, VerifiedEnclave
from caltrain.attestation.policy import Policy
from caltrain.attestation.registry import get_backend, register_backend, registered_platforms
from caltrain.attestation.verifier import NonceTracker, Verifier

__all__ = [
    "Evidence",
    "NonceTracker",
    "Policy",
    "VerifiedEnclave",
    "Verifier",
    "get_backend",
    "register_backend",
    "registered_platforms",
]
