"""Training-layer errors."""

from __future__ import annotations

from caltrain.errors import TrainingError


class StepOutOfOrder(TrainingError):
    """The host asked for a step other than the next one: the enclave runs steps strictly in order."""


class NoActiveJob(TrainingError):
    """No training job is running in the enclave, or it is another job."""


class JobRefused(TrainingError):
    """The enclave refuses to admit a job spec (a seed named, datasets overlap, cut out of range, shape misfit)."""
