"""Errors of the host's service layer (jobs, member homes); their HTTP statuses are in `caltrain.errors`."""

from __future__ import annotations

from caltrain.errors import CaltrainError, ServiceError


class UnknownJob(ServiceError):
    """No training job has this id (HTTP 404)."""


class JobNotFinished(ServiceError):
    """The job has not finished (or failed, or was cancelled): what was asked needs a finished job (HTTP 409)."""


class HomeError(CaltrainError):
    """A member home is missing, incomplete, or would be overwritten."""


class StoreError(ServiceError):
    """The server's state store cannot be opened or written (HTTP 500: the server's fault)."""


class ServerUnreachable(ServiceError):
    """The client cannot reach the server (down, restarting, wrong URL): retry, or check --server."""
