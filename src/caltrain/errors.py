"""One typed exception hierarchy, rooted at `CaltrainError` and split by layer.

Every error a caller may want to tell apart has its own class; the message names what was wrong.
Layers add their specific errors beside their code, as subclasses of the roots defined here.
"""

from __future__ import annotations


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


def error_class(name: str) -> type[CaltrainError]:
    """The caltrain error class called `name` among those imported, for re-raising across a boundary.

    Unknown names map to `CaltrainError`, so a peer cannot make us raise anything outside the hierarchy.
    """
    stack: list[type[CaltrainError]] = [CaltrainError]
    while stack:
        cls = stack.pop()
        if cls.__name__ == name:
            return cls
        stack.extend(cls.__subclasses__())
    return CaltrainError
