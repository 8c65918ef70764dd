"""Enclave-layer errors."""

from __future__ import annotations

from caltrain.errors import EnclaveError


class DuplicateDataset(EnclaveError):
    """A dataset with this id was already ingested (a replayed upload): nothing is ingested twice."""


class UnknownDataset(EnclaveError):
    """No dataset with this id has been ingested."""


class SealedStateError(EnclaveError):
    """Sealed state on disk is missing, tampered with, or older than the enclave's own record of it."""
