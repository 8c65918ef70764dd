"""Training jobs on the server: each runs the partitioned trainer in a background thread."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.wire import BuildLinkage, LinkageBuilt
from caltrain.errors import CaltrainError, ServiceError
from caltrain.training.config import TrainConfig
from caltrain.training.partitioned import PartitionedTrainer

log = logging.getLogger("caltrain.jobs")


class UnknownJob(ServiceError):
    """No training job has this id (HTTP 404)."""


class JobBusy(ServiceError):
    """Another training job is still running: the enclave trains one job at a time (HTTP 409)."""


@dataclass
class JobRecord:
    job_id: str
    config: TrainConfig
    requested_by: str
    state: str = "queued"  # queued | running | done | failed
    progress: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    front_digest: str | None = None
    linkage: dict[str, Any] | None = None  # the enclave-signed statement over the linkage log
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "requested_by": self.requested_by,
            "config": self.config.to_dict(),
            "progress": self.progress,
            "error": self.error,
            "front_digest": self.front_digest,
            "linkage": self.linkage,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class JobManager:
    """Runs one training job at a time (the enclave is one process) and keeps every job's record."""

    def __init__(self, enclave: EnclaveHost, state_dir: Path, device: str = "cpu") -> None:
        self._enclave = enclave
        self._dir = state_dir / "jobs"
        self._device = device
        self._lock = threading.Lock()
        self.jobs: dict[str, JobRecord] = {}

    def submit(self, config: TrainConfig, requested_by: str) -> JobRecord:
        with self._lock:
            if any(j.state in ("queued", "running") for j in self.jobs.values()):
                raise JobBusy("a training job is already running; wait for it to finish")
            job = JobRecord(f"job-{uuid.uuid4().hex[:12]}", config, requested_by)
            self.jobs[job.job_id] = job
        threading.Thread(target=self._run, args=(job,), name=job.job_id, daemon=True).start()
        return job

    def get(self, job_id: str) -> JobRecord:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(f"no job {job_id!r}") from None

    def backnet_path(self, job_id: str) -> Path:
        return self._dir / job_id / "backnet.pt"

    def _run(self, job: JobRecord) -> None:
        job.state = "running"
        log.info("job %s started by %s: %s", job.job_id, job.requested_by, job.config.to_dict())
        workdir = self._dir / job.job_id
        trainer = None
        try:
            trainer = PartitionedTrainer(
                self._enclave,
                job.config,
                job_id=job.job_id,
                workdir=workdir,
                device=self._device,
                progress=job.progress.append,
            )
            report = trainer.run()
            torch.save(trainer.back.state_dict(), self.backnet_path(job.job_id))
            (workdir / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
            job.front_digest = report.front_digest
            built = self._enclave.call(BuildLinkage(job_id=job.job_id), LinkageBuilt)
            job.linkage = {"records": built.records, "seconds": built.seconds, "statement": built.statement}
            log.info("job %s: linkage log of %d records signed in %.1f s", job.job_id, built.records, built.seconds)
            job.state = "done"
            log.info("job %s done: final eval accuracy %s", job.job_id, report.final_accuracy)
        except CaltrainError as exc:
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("job %s failed: %s", job.job_id, job.error)
        except Exception as exc:  # a crashed job must be reported, not vanish with its thread
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("job %s crashed", job.job_id)
        finally:
            if trainer is not None:
                trainer.close()
            job.finished_at = time.time()
