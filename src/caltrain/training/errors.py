"""Training-layer errors."""

from __future__ import annotations

from caltrain.errors import TrainingError


class CheckpointRollback(TrainingError):
    """A sealed checkpoint is older than the platform counter says the newest is (rolled back)."""


class StepOutOfOrder(TrainingError):
    """The host asked for a step other than the next one: the enclave runs steps strictly in order."""


class NoActiveJob(TrainingError):
    """No training job is running in the enclave, or it is another job."""


class JobRefused(TrainingError):
    """The enclave refuses to admit a job spec (a seed named, datasets overlap, cut out of range, shape misfit)."""

class FixedPointRange(TrainingError):
    """A gradient element is NaN, infinite or too large for the fixed-point range: the step is refused."""

class AggregateTampered(TrainingError):
    """The all-reduced sum fails its range or MAC check: a host altered it, or handed over another step's."""

class WorkerRefused(TrainingError):
    """A worker, or a grant, is not part of this job as the first enclave opened it."""
