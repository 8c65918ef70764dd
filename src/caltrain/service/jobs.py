"""Training jobs on the server: the enclave admits each (a member's signed request), then one worker thread runs
them in order, driving the partitioned trainer, and builds each job's linkage log."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.wire import BuildLinkage, CreateJob, JobCreated, LinkageBuilt, SignedReply
from caltrain.errors import CaltrainError, ServiceError
from caltrain.training.cluster import Cluster
from caltrain.training.config import TrainConfig
from caltrain.training.partitioned import PartitionedTrainer

log = logging.getLogger("caltrain.jobs")


class UnknownJob(ServiceError):
    """No training job has this id (HTTP 404)."""


@dataclass
class JobRecord:
    """The host's view of an admitted job: its public spec (the seed stays in the enclave), progress, results."""

    job_id: str
    config: TrainConfig
    requested_by: str
    architecture: str
    full_enclave: bool
    state: str = "queued"  # queued | running | done | failed
    progress: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    result: dict[str, Any] | None = None  # the enclave-signed TrainResult (digests, steps, signature)
    linkage: dict[str, Any] | None = None  # the enclave-signed statement over the linkage log
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "requested_by": self.requested_by,
            "config": self.config.to_dict(),
            "architecture": self.architecture,
            "full_enclave": self.full_enclave,
            "progress": self.progress,
            "error": self.error,
            "result": self.result,
            "front_digest": self.result["front_digest"] if self.result else None,
            "linkage": self.linkage,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }


class JobManager:
    """Admits jobs through the enclave and runs them one at a time, first come first served (the enclave is one
    process); keeps every job's record."""

    def __init__(
        self, enclave: EnclaveHost, state_dir: Path, device: str = "cpu", cluster: Cluster | None = None
    ) -> None:
        self._enclave = enclave
        self._dir = state_dir / "jobs"
        self._device = device
        self._cluster = cluster  # with workers, every job trains on them (caltrain.training.cluster)
        self.jobs: dict[str, JobRecord] = {}
        self._queue: queue.Queue[JobRecord | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="caltrain-jobs", daemon=True)
        self._worker.start()

    def submit(self, request: CreateJob) -> tuple[SignedReply, JobRecord]:
        """Ask the enclave to admit the member's job; queue it when admitted."""
        signed, created = self._enclave.call_member(request, JobCreated)
        job = JobRecord(
            created.job_id, TrainConfig.from_dict(created.spec), created.created_by, created.architecture,
            created.full_enclave,
        )
        self.jobs[job.job_id] = job
        self._queue.put(job)
        return signed, job

    def get(self, job_id: str) -> JobRecord:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(f"no job {job_id!r}") from None

    def backnet_path(self, job_id: str) -> Path:
        return self._dir / job_id / "backnet.pt"

    def close(self) -> None:
        self._queue.put(None)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            self._run(job)

    def _run_on_workers(self, job: JobRecord, cluster: Cluster) -> None:
        run = cluster.train(job.job_id, job.config, progress=job.progress.append)
        self.backnet_path(job.job_id).parent.mkdir(parents=True, exist_ok=True)
        self.backnet_path(job.job_id).write_bytes(run.backnet)
        (self._dir / job.job_id / "report.json").write_text(json.dumps(run.report.to_dict(), indent=2))
        r = run.result
        job.result = {"steps": r.steps, "front_digest": r.front_digest, "back_digest": r.back_digest,
                      "signature": r.signature.hex(), "workers": cluster.config.world, "attempts": run.attempts}
        job.linkage = {"records": run.linkage.records, "seconds": run.linkage.seconds,
                       "statement": run.linkage.statement}
        job.state = "done"
        log.info("job %s done on %d workers: final eval accuracy %s", job.job_id, cluster.config.world,
                 run.report.final_accuracy)

    def _run(self, job: JobRecord) -> None:
        job.state = "running"
        log.info("job %s started (admitted for %s): %s", job.job_id, job.requested_by, job.config.to_dict())
        workdir = self._dir / job.job_id
        trainer = None
        try:
            if self._cluster is not None:
                self._run_on_workers(job, self._cluster)
                return
            trainer = PartitionedTrainer(
                self._enclave,
                job.config,
                job_id=job.job_id,
                workdir=workdir,
                device=self._device,
                progress=job.progress.append,
            )
            report = trainer.run()
            assert trainer.result is not None
            torch.save(trainer.back.state_dict(), self.backnet_path(job.job_id))
            (workdir / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
            r = trainer.result
            job.result = {"steps": r.steps, "front_digest": r.front_digest, "back_digest": r.back_digest,
                          "signature": r.signature.hex()}
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
