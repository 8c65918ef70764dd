"""Inference-layer errors: each is the client's fault (4xx) and names what was wrong."""

from __future__ import annotations

from caltrain.errors import InferenceError


class UnknownModel(InferenceError):
    """No model is deployed under this id (HTTP 404)."""


class DuplicateModel(InferenceError):
    """A model is already deployed under this id: ids are never reused for other weights (HTTP 409)."""


class BadRequest(InferenceError):
    """A request is malformed: wrong size or shape, bad id, non-finite input, stale timestamp (HTTP 400)."""


class ReplayedRequest(InferenceError):
    """This session id or request counter was already used: the enclave opens each once (HTTP 409)."""


class UnknownSession(InferenceError):
    """No live session under this id (never opened, or evicted to bound memory): open a new one (HTTP 404)."""


class SessionExpired(UnknownSession):
    """The session reached its lifetime or request limit: open a new one (HTTP 410)."""
