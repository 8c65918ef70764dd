"""Enclave-layer errors."""

from __future__ import annotations

from caltrain.errors import AttestationError, AuthError, DataError, EnclaveError


class DuplicateDataset(EnclaveError):
    """A dataset with this id was already ingested (a replayed upload): nothing is ingested twice."""


class UnknownDataset(EnclaveError):
    """No dataset with this id has been ingested."""


class SealedStateError(EnclaveError):
    """Sealed state on disk is missing, tampered with, or older than the enclave's own record of it."""


class StateRolledBack(SealedStateError):
    """Sealed state is older than the monotonic counter says the newest is, or missing although written."""


class RequestReplayed(AuthError):
    """A member request's single-use id was already accepted by this enclave instance."""


class ReplyInvalid(EnclaveError):
    """An answer claimed to come from the enclave does not verify (signature, binding or type): raised by clients."""


class ConsentRefused(AuthError):
    """A dataset's signed data-use policy does not admit what was asked; the message names dataset and clause."""


class SchemaViolation(DataError):
    """A dataset's records fall outside the consortium's declared schema (shape, labels, values): nothing is
    ingested; the message names participant, dataset and the first offending record."""

class GrantRefused(AttestationError):
    """A peer grant does not open for this enclave, or is not signed by the enclave it came from."""
