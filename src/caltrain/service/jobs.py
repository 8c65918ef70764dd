"""Training jobs on the server: the enclave admits each (a member's signed request); one worker runs them first
come, first served, driving the partitioned trainer, and builds each job's linkage log.

Every job's record lives in the server's store, so a restart finds them all. A job that was running when the
server or the enclave died runs again from where the enclave's sealed state says it is: still training (it
resumes from its last sealed checkpoint, to the weights an uninterrupted run reaches), trained (its signed result
is fetched again and its log built), or linked (nothing is left to do).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from caltrain.enclave.consortium import Member, Role
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.wire import (
    BuildLinkage,
    CreateJob,
    GetJobState,
    JobCreated,
    JobState,
    LinkageBuilt,
    SignedReply,
    to_json,
)
from caltrain.errors import AuthError, CaltrainError, EnclaveUnavailable, TrainingError
from caltrain.service.errors import JobNotFinished, UnknownJob
from caltrain.service.store import ServerStore
from caltrain.training.cluster import Cluster
from caltrain.training.config import TrainConfig
from caltrain.training.core import build_split, state_digest
from caltrain.training.partitioned import PartitionedTrainer

log = logging.getLogger("caltrain.jobs")
STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")


class _Cancelled(Exception):
    """Raised from the progress callback to stop a job whose cancellation was asked for."""


@dataclass
class JobRecord:
    """The host's view of an admitted job: its public spec (the seed stays in the enclave), progress, results."""

    job_id: str
    config: dict[str, Any]  # the admitted public spec (TrainConfig without the seed)
    requested_by: str
    architecture: str
    full_enclave: bool
    admission: dict[str, Any]  # the enclave's signed JobCreated, as the owner received it
    state: str = "queued"  # queued | running | done | failed | cancelled
    phase: str = ""  # while running: training | linking
    progress: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    result: dict[str, Any] | None = None  # the enclave-signed TrainResult (digests, steps, signature)
    linkage: dict[str, Any] | None = None  # the enclave-signed statement over the linkage log
    cancel_requested: bool = False
    attempts: int = 0  # runs started: more than one after a restart or an enclave crash
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "front_digest": self.result["front_digest"] if self.result else None}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JobRecord:
        return cls(**{k: v for k, v in doc.items() if k != "front_digest"})


class JobManager:
    """Admits jobs through the enclave and runs them one at a time, first come first served (the enclave is one
    process); keeps every job's record in the store."""

    def __init__(
        self, enclave: EnclaveHost, store: ServerStore, state_dir: Path, device: str = "cpu",
        cluster: Cluster | None = None,
    ) -> None:
        self._enclave = enclave
        self._store = store
        self._dir = state_dir / "jobs"
        self._device = device
        self._cv = threading.Condition()
        self._closed = False
        self._cluster = cluster  # with workers, every job trains on them (caltrain.training.cluster)
        self.jobs: dict[str, JobRecord] = {}
        for doc in store.list("jobs"):
            job = JobRecord.from_json(doc)
            if job.state == "running":  # the server stopped under it: it runs again, from the enclave's state
                job.state, job.phase = "queued", ""
                self._save(job)
            self.jobs[job.job_id] = job
        self._worker = threading.Thread(target=self._work, name="caltrain-jobs", daemon=True)
        self._worker.start()

    def _save(self, job: JobRecord) -> None:
        self._store.put("jobs", job.job_id, job.to_json())

    def submit(self, request: CreateJob) -> tuple[SignedReply, JobRecord]:
        """Ask the enclave to admit the member's job; queue it when admitted."""
        signed, created = self._enclave.call_member(request, JobCreated)
        job = JobRecord(
            created.job_id, created.spec, created.created_by, created.architecture, created.full_enclave,
            admission=to_json(signed),
        )
        with self._cv:
            self.jobs[job.job_id] = job
            self._save(job)
            self._cv.notify_all()
        log.info("job %s admitted for %s; %d queued", job.job_id, job.requested_by, len(self.queued()))
        return signed, job

    def get(self, job_id: str) -> JobRecord:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(f"no job {job_id!r}") from None

    def queued(self) -> list[JobRecord]:
        """Queued jobs in the order they were admitted (the order they run)."""
        return [j for j in self.jobs.values() if j.state == "queued"]

    def cancel(self, job_id: str, member: Member) -> JobRecord:
        """Cancel a queued job at once, a running one at its next epoch end; by the owner who asked for it (or
        another owner)."""
        job = self.get(job_id)
        if member.name != job.requested_by and Role.OWNER not in member.roles:
            raise AuthError(f"job {job_id} was requested by {job.requested_by!r}; only it or an owner may cancel it")
        with self._cv:
            if job.state in FINAL:
                raise JobNotFinished(f"job {job_id} is already {job.state}")
            if job.state == "queued":
                job.state, job.finished_at = "cancelled", time.time()
            else:
                job.cancel_requested = True
            self._save(job)
        return job

    def health(self) -> dict[str, int]:
        return {state: sum(j.state == state for j in self.jobs.values()) for state in STATES}

    def backnet_path(self, job_id: str) -> Path:
        return self._dir / job_id / "backnet.pt"

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _next(self) -> JobRecord | None:
        with self._cv:
            while not self._closed:
                queued = self.queued()
                if queued:
                    return queued[0]
                self._cv.wait()
        return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            if not self._enclave.wait_up(timeout_s=60):
                continue
            self._run(job)

    def _run_on_workers(self, job: JobRecord, cluster: Cluster) -> None:
        job.phase = "training"
        self._save(job)
        run = cluster.train(job.job_id, TrainConfig.from_dict(job.config), progress=lambda e: self._progress(job, e))
        self.backnet_path(job.job_id).parent.mkdir(parents=True, exist_ok=True)
        self.backnet_path(job.job_id).write_bytes(run.backnet)
        (self._dir / job.job_id / "report.json").write_text(json.dumps(run.report.to_dict(), indent=2))
        r = run.result
        job.result = {"steps": r.steps, "front_digest": r.front_digest, "back_digest": r.back_digest,
                      "signature": r.signature.hex(), "workers": cluster.config.world, "attempts": run.attempts}
        job.linkage = {"records": run.linkage.records, "seconds": run.linkage.seconds,
                       "statement": run.linkage.statement}
        job.state, job.phase = "done", ""
        log.info("job %s done on %d workers: final eval accuracy %s", job.job_id, cluster.config.world,
                 run.report.final_accuracy)

    def _run(self, job: JobRecord) -> None:
        job.state, job.started_at, job.attempts, job.error = "running", time.time(), job.attempts + 1, None
        self._save(job)
        log.info("job %s running (attempt %d): %s", job.job_id, job.attempts, job.config)
        try:
            if self._cluster is not None:
                self._run_on_workers(job, self._cluster)
                return
            status = self._enclave.call(GetJobState(job_id=job.job_id), JobState)
            if status.state == "admitted":
                self._train(job)
            else:
                self._recover_result(job, status)
            if status.state != "linked":
                job.phase = "linking"
                self._save(job)
                built = self._enclave.call(BuildLinkage(job_id=job.job_id), LinkageBuilt)
                job.linkage = {"records": built.records, "seconds": built.seconds, "statement": built.statement}
                log.info("job %s: linkage log of %d records signed in %.1f s", job.job_id, built.records,
                         built.seconds)
            else:
                job.linkage = {"records": status.statement["count"], "seconds": None, "statement": status.statement}
            job.state, job.phase = "done", ""
            log.info("job %s done", job.job_id)
        except EnclaveUnavailable as exc:  # the enclave died under it: it runs again once a new one is up
            job.state, job.phase, job.error = "queued", "", f"interrupted ({exc}); resumes when the enclave is back"
            log.warning("job %s interrupted: %s", job.job_id, exc)
        except _Cancelled:
            job.state, job.phase = "cancelled", ""
            log.info("job %s cancelled", job.job_id)
        except CaltrainError as exc:
            job.state, job.phase, job.error = "failed", "", f"{type(exc).__name__}: {exc}"
            log.error("job %s failed: %s", job.job_id, job.error)
        except Exception as exc:  # a crashed job must be reported, not vanish with its thread
            job.state, job.phase, job.error = "failed", "", f"{type(exc).__name__}: {exc}"
            log.exception("job %s crashed", job.job_id)
        finally:
            if job.state in FINAL:
                job.finished_at = time.time()
            self._save(job)

    def _progress(self, job: JobRecord, epoch: dict[str, Any]) -> None:
        """Record an epoch (replacing one a resumed run reports again), then stop if cancellation was asked."""
        job.progress = [e for e in job.progress if e.get("epoch") != epoch.get("epoch")] + [epoch]
        self._save(job)
        if job.cancel_requested:
            raise _Cancelled

    def _train(self, job: JobRecord) -> None:
        config = TrainConfig.from_dict(job.config)
        job.phase = "training"
        self._save(job)
        trainer = PartitionedTrainer(
            self._enclave, config, job_id=job.job_id, workdir=self._dir / job.job_id, device=self._device,
            progress=lambda epoch: self._progress(job, epoch),
        )
        try:
            report = trainer.run(resume=True)  # from the newest sealed checkpoint, if any
            assert trainer.result is not None
            _save_atomic(self.backnet_path(job.job_id), trainer.back.state_dict())
            (self._dir / job.job_id / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
            r = trainer.result
            job.result = {"steps": r.steps, "front_digest": r.front_digest, "back_digest": r.back_digest,
                          "signature": r.signature.hex()}
            self._save(job)
        finally:
            trainer.close()

    def _recover_result(self, job: JobRecord, status: JobState) -> None:
        """The enclave finished training this job before the host recorded it: take its signed result again, and
        the host's final BackNet from its last checkpoint (which must be the one the enclave signed)."""
        job.result = {"steps": status.steps, "front_digest": status.front_digest, "back_digest": status.back_digest,
                      "signature": status.signature.hex()}
        if self.backnet_path(job.job_id).exists():
            return
        if job.full_enclave:  # the host holds no BackNet
            _save_atomic(self.backnet_path(job.job_id), {})
            return
        checkpoint = self._dir / job.job_id / f"backnet-{status.steps:08d}.pt"
        try:
            saved = torch.load(checkpoint, weights_only=True)["back"]
        except (OSError, KeyError, RuntimeError) as exc:
            raise TrainingError(f"job {job.job_id}: the host's final BackNet checkpoint is unreadable: {exc}") \
                from None
        _, part = build_split(TrainConfig.from_dict(job.config))
        part.back.load_state_dict(saved)
        if state_digest(part.back) != status.back_digest:
            raise TrainingError(f"job {job.job_id}: the host's last BackNet checkpoint is not the one the enclave "
                                "signed")
        _save_atomic(self.backnet_path(job.job_id), saved)


def _save_atomic(path: Path, state: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.cpu() for k, v in state.items()}, tmp)
    tmp.replace(path)
