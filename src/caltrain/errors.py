"""One typed exception hierarchy, rooted at `CaltrainError` and split by layer, and its one HTTP catalog.

Every error a caller may want to tell apart has its own class; the message names what was wrong.
Layers add their specific errors beside their code, as subclasses of the roots defined here, in one of
`ERROR_MODULES`, so that a peer (the host reading an enclave failure, a client reading an HTTP answer) can
re-raise every class by name. `HTTP_STATUS` maps classes to HTTP statuses in one place: the client's fault is
4xx, the server's 5xx, a temporary outage 503 with Retry-After.
"""

from __future__ import annotations

import importlib
from functools import cache


class CaltrainError(Exception):
    """Root of every error caltrain raises on purpose."""


class CryptoError(CaltrainError):
    """Encryption, decryption, signing or container format failed."""


class AttestationError(CaltrainError):
    """Evidence did not verify under the policy: no key is released."""


class EnclaveError(CaltrainError):
    """The enclave runtime refused a call or failed."""


class DataError(CaltrainError):
    """A dataset could not be loaded or has the wrong shape."""


class ModelError(CaltrainError):
    """A model could not be built, loaded or partitioned."""


class TrainingError(CaltrainError):
    """Partitioned or plain training failed."""


class InferenceError(CaltrainError):
    """Partitioned inference failed."""


class AccountabilityError(CaltrainError):
    """Linkage log or forensic query failed (including tamper detection)."""


class ExposureError(CaltrainError):
    """Information-exposure assessment failed."""


class ServiceError(CaltrainError):
    """The HTTP service or its client failed."""


class AuthError(CaltrainError):
    """A request's sender is unknown, or not allowed to do this (HTTP 403)."""


class Unauthenticated(AuthError):
    """A request carries no valid signature of a consortium member (HTTP 401)."""


class EnclaveUnavailable(EnclaveError):
    """The enclave process is down or restarting: retry after `retry_after_s` (HTTP 503 with Retry-After)."""

    retry_after_s = 2


class RequestTooLarge(ServiceError):
    """A request body exceeds its route's size limit; refused while it streams in, before it is buffered (413)."""


class TooManyUploads(ServiceError):
    """The server already receives as many uploads as it allows at once: retry later (HTTP 429, Retry-After)."""

    retry_after_s = 5


# Every module that defines caltrain error classes: what `error_class` imports to know every name.
ERROR_MODULES = (
    "caltrain.errors",
    "caltrain.crypto.errors",
    "caltrain.attestation.errors",
    "caltrain.enclave.errors",
    "caltrain.enclave.wire",
    "caltrain.enclave.channel",
    "caltrain.enclave.consent",
    "caltrain.enclave.consortium",
    "caltrain.data.datasets",
    "caltrain.models.partition",
    "caltrain.models.spec",
    "caltrain.training.errors",
    "caltrain.inference.errors",
    "caltrain.accountability.errors",
    "caltrain.service.errors",
)

# HTTP status by error class name; a class not listed has its nearest listed ancestor's status.
HTTP_STATUS: dict[str, int] = {
    "CaltrainError": 500,
    # client mistakes
    "ServiceError": 400,
    "DataError": 400,
    "ModelError": 400,
    "TrainingError": 400,
    "InferenceError": 400,
    "AccountabilityError": 400,
    "ExposureError": 400,
    "AttestationError": 400,
    "CryptoError": 400,
    "WireError": 400,
    "ConsortiumError": 400,
    "AuthError": 403,
    "Unauthenticated": 401,
    "UnknownDataset": 404,
    "UnknownJob": 404,
    "NoActiveJob": 404,
    "UnknownModel": 404,
    "UnknownSession": 404,
    "UnknownMethod": 404,
    "SessionExpired": 410,
    "DuplicateDataset": 409,
    "DuplicateModel": 409,
    "RequestReplayed": 409,
    "ReplayedRequest": 409,
    "StepOutOfOrder": 409,
    "JobNotFinished": 409,
    "RequestTooLarge": 413,
    "TooManyUploads": 429,
    # the server's own failures
    "EnclaveError": 500,
    "StoreError": 500,
    "SealedStateError": 500,
    "SealingError": 500,
    "LinkageTampered": 500,
    "MethodAlreadyRegistered": 500,
    "NoTeeAvailable": 500,
    "EvidenceCollectionError": 500,
    "ReplyInvalid": 502,
    "EnclaveUnavailable": 503,
    "ServerUnreachable": 503,
    "ChannelClosed": 503,
}


def http_status(cls: type[CaltrainError]) -> int:
    """The HTTP status of an error class: its own entry in `HTTP_STATUS`, or its nearest ancestor's."""
    for ancestor in cls.__mro__:
        if ancestor.__name__ in HTTP_STATUS:
            return HTTP_STATUS[ancestor.__name__]
    return 500


def error_class(name: str) -> type[CaltrainError]:
    """The caltrain error class called `name` among those imported, for re-raising across a boundary.

    Unknown names map to `CaltrainError`, so a peer cannot make us raise anything outside the hierarchy.
    """
    return _classes().get(name, CaltrainError)


@cache
def _classes() -> dict[str, type[CaltrainError]]:
    for module in ERROR_MODULES:
        importlib.import_module(module)
    found: dict[str, type[CaltrainError]] = {}
    stack: list[type[CaltrainError]] = [CaltrainError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.__name__, cls)
        stack.extend(cls.__subclasses__())
    return found
