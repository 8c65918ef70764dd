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


class MalformedQuote(MalformedEvidence):
    """A quote, report, certificate or collateral is truncated, mis-sized or has impossible field values."""


class UnsupportedEvidenceVersion(MalformedEvidence):
    """The quote/report version, key type or body type is not one this verifier implements."""


class BadQuoteSignature(BadEvidenceSignature):
    """The quote (or SNP report) signature does not verify under its attestation key (VCEK/VLEK for SNP)."""


class QeBindingMismatch(BadEvidenceSignature):
    """DCAP: the QE report does not bind the attestation key (SHA-256(key || auth data) differs)."""


class BadQeReportSignature(BadEvidenceSignature):
    """DCAP: the QE report is not signed by the PCK certificate's key."""


class CertificateChainError(AttestationError):
    """A certificate chain is broken: a signature does not verify or a certificate is not a CA."""


class UntrustedRoot(CertificateChainError):
    """The chain ends at a root that is not one of the pinned vendor roots (e.g. Intel pre-production)."""


class CertificateExpired(CertificateChainError):
    """A certificate in the chain is not valid at the verification time."""


class CertificateRevoked(CertificateChainError):
    """A certificate in the chain is listed in a CRL."""


class KeyCertificateMismatch(CertificateChainError):
    """SNP: the VCEK/VLEK does not belong to this report (TCB or chip id differ, or wrong key type)."""


class CollateralMissing(AttestationError):
    """The policy requires collateral (TCB info, QE identity, CRLs) and the evidence came without it."""


class CollateralInvalid(AttestationError):
    """Collateral is badly signed, does not match the quote (FMSPC, QE), or is not valid at the verification time."""


class QeIdentityMismatch(AttestationError):
    """DCAP: the quoting enclave is not the one Intel's QE identity describes."""


class TcbLevelNotFound(AttestationError):
    """DCAP: no TCB level in the TCB info matches the platform (TCB not supported)."""


class TcbOutOfDate(AttestationError):
    """The platform/QE/TDX module TCB status is not one the policy accepts, or an SVN is below its minimum."""


class SignerMismatch(AttestationError):
    """SGX: MRSIGNER is not among the policy's accepted signers."""


class ReportFieldMismatch(AttestationError):
    """A report field the policy pins (product id, config id, host data, VMPL, chip id...) differs."""


class NoTeeAvailable(AttestationError):
    """No TEE attestation interface (Gramine /dev/attestation or configfs-tsm) is present on this machine."""


class EvidenceCollectionError(AttestationError):
    """The TEE attestation interface is present but did not produce evidence as its protocol says."""


class SvnTooLow(AttestationError):
    """An ISV SVN, TEE TCB SVN or SNP TCB component is below the policy's minimum."""
