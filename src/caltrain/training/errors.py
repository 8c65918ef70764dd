"""Training-layer errors."""

from __future__ import annotations

from caltrain.errors import AttestationError, TrainingError


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


class WorkersRestarted(TrainingError):
    """A worker died and the elastic agent restarts the workers: the attempt is lost, the job resumes."""

    def __init__(self, message: str, generation: str = "") -> None:
        super().__init__(message)
        self.generation = generation  # the generation that is gone


class WorkerFailed(TrainingError):
    """A worker reported an error for a command."""


class WorkerNotAdmitted(AttestationError):
    """The job's first enclave refused a worker's evidence: the worker got nothing, the job fails."""
