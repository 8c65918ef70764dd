"""CalTrain's trusted half: job admission, data order, augmentation, FrontNet forward/backward/update, sealed
checkpoints, the sealed job registry.

Runs inside the enclave process. A job exists only once an owner's signed spec was admitted against every
dataset's data-use policy; its id and seed come from enclave randomness and the registry (sealed, pinned by a
monotonic counter) never lets an id train twice. In partitioned mode only IRs, their gradients and labels cross
to the host (the loss runs outside); in full-enclave mode nothing but timing does. Weights leave only sealed, or
encrypted to a member the datasets' policies name.
"""

from __future__ import annotations

import dataclasses
import io
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from caltrain.crypto.errors import CryptoError
from caltrain.crypto.hashing import tagged_hash
from caltrain.enclave.consent import DataUsePolicy, check_grant, check_job_use
from caltrain.enclave.consortium import Member
from caltrain.enclave.datastore import IngestedDataset
from caltrain.enclave.errors import SealedStateError
from caltrain.enclave.ingest import datasets
from caltrain.enclave.protocol import job_result_digest
from caltrain.enclave.runtime import EnclaveContext, ecall, on_boot
from caltrain.enclave.sealed_state import CountedState, SealedTable
from caltrain.enclave.shm import SharedTensor
from caltrain.enclave.wire import (
    BackwardOut,
    CreateJob,
    Exported,
    ExportModel,
    ForwardOut,
    FrontBackward,
    FrontForward,
    GetJobState,
    JobCreated,
    JobState,
    StepsDone,
    TrainEnd,
    TrainReady,
    TrainResult,
    TrainStart,
    TrainSteps,
)
from caltrain.errors import DataError, TrainingError
from caltrain.models import Partition
from caltrain.training.config import TrainConfig
from caltrain.training.core import (
    build_split,
    check_data,
    check_spec,
    dropout_seed,
    ir_shape,
    is_checkpoint_step,
    loss_fn,
    make_optimizer,
    seed_dropout,
    state_digest,
    steps_per_epoch,
    training_batch,
)
from caltrain.training.errors import JobRefused, NoActiveJob, StepOutOfOrder

JOB = "training-job"
REGISTRY = "job-registry"
MODELS = "models"
EVAL_BATCH = 512
MAX_STEPS_PER_CALL = 1 << 16


def stack_datasets(parts: list[IngestedDataset]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ingested payloads (float32 images of one shape) into one tensor, in the given order."""
    shapes = {tuple(d.header.schema.get("shape", ())) for d in parts}
    if len(shapes) != 1 or any(d.header.schema.get("dtype") != "float32" for d in parts):
        raise DataError(f"datasets must all hold float32 records of one shape, got {sorted(shapes)}")
    (shape,) = shapes
    # concatenate gathers the strided payload rows into one fresh, writable array: the only copy made
    x = np.concatenate([d.payloads for d in parts]).view(np.float32).reshape(-1, *shape)
    y = np.concatenate([d.labels for d in parts])
    return torch.from_numpy(x), torch.from_numpy(y)


# --- the job registry ------------------------------------------------------------------------------------


@dataclass
class JobEntry:
    """What the enclave remembers of an admitted job across restarts (sealed; the seed never leaves sealed)."""

    job_id: str
    spec: dict[str, Any]  # the admitted TrainConfig, seed included
    created_by: str
    architecture: str
    state: str = "admitted"  # admitted (-> distributed, on workers) -> trained -> linked
    front_digest: str = ""
    back_digest: str = ""
    log_id: str = ""  # drawn (and sealed here) before the log is built, so a rebuild after a crash reuses it
    steps: int = 0
    statement: dict[str, Any] = field(default_factory=dict)  # the signed linkage statement: what a reloaded log
    # must match, so a rolled-back log file is caught

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.spec)

    @property
    def dataset_ids(self) -> list[str]:
        return list(self.config.datasets)


class JobRegistry(SealedTable[JobEntry]):
    """Every job this enclave admitted, sealed and counter-pinned: an id is never admitted or trained twice."""

    @classmethod
    def load(cls, ctx: EnclaveContext) -> JobRegistry:
        state = CountedState(
            ctx.state_dir / "jobs.sealed",
            label="job-registry/v1",
            counter="job-registry",
            sealer=ctx.sealer,
            counters=ctx.counters,
        )
        return cls(state, JobEntry)

    def get(self, job_id: str) -> JobEntry:
        try:
            return self.entries[job_id]
        except KeyError:
            raise NoActiveJob(f"the enclave admitted no job {job_id!r}") from None



@on_boot
def restore_jobs(ctx: EnclaveContext) -> None:
    ctx.extensions[REGISTRY] = JobRegistry.load(ctx)


def jobs(ctx: EnclaveContext) -> JobRegistry:
    return ctx.extension(REGISTRY, JobRegistry)


def policies(ctx: EnclaveContext, dataset_ids: list[str]) -> dict[str, DataUsePolicy]:
    store = datasets(ctx)
    return {i: store.get(i).policy for i in dataset_ids}


@ecall(CreateJob)
def create_job(ctx: EnclaveContext, req: CreateJob, member: Member) -> JobCreated:
    """Admit an owner's job spec if every dataset's policy allows it; the enclave picks its id and seed."""
    config = TrainConfig.from_dict(req.spec)
    if config.seed is not None:
        raise JobRefused("a job spec names no seed: initial weights and data order come from enclave randomness")
    schema = ctx.config.consortium.schema
    spec = check_spec(config, tuple(schema.shape) if schema is not None else None)
    store = datasets(ctx)
    eval_ids = list(config.eval_datasets)
    train_ids = list(config.datasets) or [i for i in store.datasets if i not in eval_ids]
    if not train_ids:
        raise JobRefused("no training datasets have been ingested")
    architecture, blocks = spec.hash, len(spec.blocks)
    uses: tuple[tuple[list[str], Literal["training", "evaluation"]], ...] = (
        (train_ids, "training"), (eval_ids, "evaluation")
    )
    for ids, use in uses:  # every named dataset exists, and its policy admits this use
        check_job_use(policies(ctx, ids), use=use, model=spec.name, architecture=architecture,
                      frontnet_blocks=config.frontnet_layers, total_blocks=blocks)
    admitted = config.model_copy(update={"datasets": train_ids, "seed": secrets.randbits(63)})
    entry = JobEntry(
        job_id=f"job-{secrets.token_hex(16)}",
        spec=admitted.to_dict(),
        created_by=member.name,
        architecture=architecture,
    )
    jobs(ctx).put(entry)
    public = {k: v for k, v in entry.spec.items() if k != "seed"}
    return JobCreated(
        job_id=entry.job_id, spec=public, architecture=architecture, created_by=member.name,
        full_enclave=config.frontnet_layers == blocks,
    )


# --- a running job ---------------------------------------------------------------------------------------


@dataclass
class Job:
    job_id: str
    config: TrainConfig
    sources: list[IngestedDataset]  # training datasets in data order: where every record came from
    x: torch.Tensor
    y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    part: Partition
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    full_enclave: bool
    ir: SharedTensor | None
    grad: SharedTensor | None
    labels: SharedTensor | None
    checkpoints: CountedState
    next_step: int = 0
    pending: torch.Tensor | None = None  # the last train IR, with its graph, awaiting its gradient

    @property
    def spe(self) -> int:
        return steps_per_epoch(len(self.y), self.config.batch_size)

    @property
    def total_steps(self) -> int:
        return self.spe * self.config.epochs

    def slots(self) -> tuple[SharedTensor, SharedTensor, SharedTensor]:
        if self.ir is None or self.grad is None or self.labels is None:
            raise StepOutOfOrder(f"job {self.job_id} runs wholly in the enclave: nothing crosses per step")
        return self.ir, self.grad, self.labels


def finished_job(ctx: EnclaveContext, job_id: str) -> Job:
    """A job whose training ended: the enclave holds its whole model (FrontNet + the host's final BackNet),
    reloaded from its sealed final model on first use after a restart."""
    models = ctx.extensions.setdefault(MODELS, {})
    job = models.get(job_id)
    if isinstance(job, Job):
        return job
    entry = jobs(ctx).entries.get(job_id)
    if entry is None or entry.state == "admitted":
        raise NoActiveJob(f"no finished job {job_id!r} in the enclave")
    models[job_id] = job = restore_finished(ctx, entry)
    return job


def _job(ctx: EnclaveContext, job_id: str | None = None) -> Job:
    job = ctx.extensions.get(JOB)
    if not isinstance(job, Job) or (job_id is not None and job.job_id != job_id):
        raise NoActiveJob(f"no active training job {job_id or ''}".strip())
    return job


def _checkpoints(ctx: EnclaveContext, job_id: str) -> CountedState:
    name = "ckpt-" + tagged_hash("caltrain/job", job_id.encode()).hex()[:16]
    return CountedState(
        ctx.state_dir / "jobs" / name / "checkpoint.sealed",
        label=f"checkpoint/{job_id}",
        counter=name,
        sealer=ctx.sealer,
        counters=ctx.counters,
    )


def save_checkpoint(job: Job) -> None:
    """Seal weights, optimizer, RNG and data position; the counter pins this as the newest."""
    state = {
        "job_id": job.job_id,
        "config": job.config.to_dict(),
        "next_step": job.next_step,
        "model": job.model.state_dict(),
        "optimizer": job.optimizer.state_dict(),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    job.checkpoints.save(buf.getvalue())


def load_checkpoint(job: Job) -> None:
    """Resume from the newest sealed checkpoint; a tampered, older or missing one is refused."""
    raw = job.checkpoints.load()
    if raw is None:
        return
    state = torch.load(io.BytesIO(raw), weights_only=True)
    if state["job_id"] != job.job_id or state["config"] != job.config.to_dict():
        raise TrainingError(f"checkpoint belongs to another job or configuration than {job.job_id}")
    if job.full_enclave:
        job.model.load_state_dict(state["model"])
    else:
        job.part.front.load_state_dict({k: v for k, v in state["model"].items() if k in job.part.front.state_dict()})
    job.optimizer.load_state_dict(state["optimizer"])
    job.next_step = int(state["next_step"])


def _state_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


@dataclass(frozen=True)
class SlotPaths:
    """The host's shared slots for a partitioned job: IRs, their gradients (`capacity` floats each), labels."""

    ir: str
    grad: str
    labels: str
    capacity: int
    label_capacity: int


def build_job(
    job_id: str,
    config: TrainConfig,
    sources: list[IngestedDataset],
    eval_sources: list[IngestedDataset],
    checkpoints: CountedState,
    slots: SlotPaths | None,
) -> tuple[Job, list[int]]:
    """A job at its seeded initial weights over its datasets (in data order), with the host's shared slots when it
    is partitioned and has any; and the shape of what leaves the enclave per record."""
    x, y = stack_datasets(sources)
    eval_x, eval_y = stack_datasets(eval_sources) if eval_sources else (x[:0], y[:0])
    check_data(config, x, y)
    check_data(config, eval_x, eval_y)
    model, part = build_split(config)
    model.train()
    full = part.full_enclave
    opened: tuple[SharedTensor | None, ...] = (None, None, None)
    if not full and slots is not None:
        opened = (
            SharedTensor(slots.ir, slots.capacity, "float32"),
            SharedTensor(slots.grad, slots.capacity, "float32"),
            SharedTensor(slots.labels, slots.label_capacity, "int64"),
        )
    job = Job(
        job_id=job_id,
        config=config,
        sources=sources,
        x=x,
        y=y,
        eval_x=eval_x,
        eval_y=eval_y,
        part=part,
        model=model,
        optimizer=make_optimizer(list((model if full else part.front).parameters()), config),
        full_enclave=full,
        ir=opened[0],
        grad=opened[1],
        labels=opened[2],
        checkpoints=checkpoints,
    )
    return job, list(ir_shape(config))


@ecall(TrainStart)
def start(ctx: EnclaveContext, req: TrainStart) -> TrainReady:
    entry = jobs(ctx).get(req.job_id)
    if entry.state != "admitted":
        raise StepOutOfOrder(f"job {entry.job_id} already finished training ({entry.state}); a job trains once")
    config = entry.config
    store = datasets(ctx)
    slots = SlotPaths(req.ir_path, req.grad_path, req.label_path, req.slot_capacity, max(config.batch_size, EVAL_BATCH))
    job, shape = build_job(
        entry.job_id, config, [store.get(i) for i in config.datasets], [store.get(i) for i in config.eval_datasets],
        _checkpoints(ctx, entry.job_id), slots,
    )
    full = job.full_enclave
    backnet = b"" if full else _state_bytes(job.part.back)  # initial weights, before any checkpoint is applied
    if req.resume:
        load_checkpoint(job)
    elif job.checkpoints.load() is not None:
        # Starting over would let the host replay the same batches against gradients of its choosing.
        raise StepOutOfOrder(f"job {job.job_id} has started: it resumes from its sealed checkpoint, never restarts")
    else:
        save_checkpoint(job)
    ctx.extensions[JOB] = job
    return TrainReady(
        train_records=len(job.y),
        eval_records=len(job.eval_y) if not full else 0,
        steps_per_epoch=job.spe,
        total_steps=job.total_steps,
        next_step=job.next_step,
        ir_shape=shape,
        full_enclave=full,
        backnet=backnet,
        back_dropout_seed=dropout_seed(config, "back"),
    )


def hand_over(job: Job, ir: torch.Tensor, labels: torch.Tensor) -> ForwardOut:
    """An IR and its labels into the host's shared slots (partitioned mode only)."""
    ir_slot, _, label_slot = job.slots()
    layout = ir_slot.put(ir)
    label_slot.view(labels.shape).copy_(labels)
    return ForwardOut(batch=len(labels), layout=layout)


def _train_forward(job: Job, step: int) -> tuple[int, str]:
    job.slots()
    if step != job.next_step or job.pending is not None or step >= job.total_steps:
        raise StepOutOfOrder(f"forward of step {step} requested; the next step is {job.next_step}")
    xb, yb = training_batch(job.x, job.y, job.config, step)
    seed_dropout(job.part.front, dropout_seed(job.config, "front"), step)
    job.pending = job.part.front(xb)
    out = hand_over(job, job.pending, yb)
    return out.batch, out.layout


def eval_forward(job: Job, index: int) -> ForwardOut:
    """Eval batch `index` through the FrontNet; only datasets whose policies allow evaluation were admitted."""
    job.slots()
    start_at = index * EVAL_BATCH
    if not 0 <= start_at < len(job.eval_y):
        raise StepOutOfOrder(f"eval batch {index} is out of range")
    xb, yb = job.eval_x[start_at : start_at + EVAL_BATCH], job.eval_y[start_at : start_at + EVAL_BATCH]
    job.part.front.eval()
    with torch.no_grad():
        ir = job.part.front(xb)
    job.part.front.train()
    return hand_over(job, ir, yb)


@ecall(FrontForward)
def forward(ctx: EnclaveContext, req: FrontForward) -> ForwardOut:
    job = _job(ctx)
    if req.phase == "train":
        batch, layout = _train_forward(job, req.index)
        return ForwardOut(batch=batch, layout=layout)
    if req.phase != "eval":
        raise StepOutOfOrder(f"unknown phase {req.phase!r}")
    return eval_forward(job, req.index)


@ecall(FrontBackward)
def backward(ctx: EnclaveContext, req: FrontBackward) -> BackwardOut:
    job = _job(ctx)
    _, grad_slot, _ = job.slots()
    if job.pending is None or req.step != job.next_step:
        raise StepOutOfOrder(f"backward of step {req.step} requested; awaiting step {job.next_step}")
    grad = grad_slot.view(tuple(job.pending.shape), req.grad_layout).clone(memory_format=torch.preserve_format)
    if not torch.isfinite(grad).all():
        raise StepOutOfOrder(f"gradient for step {req.step} holds NaN or infinity; step not applied")
    job.optimizer.zero_grad(set_to_none=True)
    job.pending.backward(grad)
    job.optimizer.step()
    job.pending = None
    job.next_step += 1
    checkpoint = is_checkpoint_step(job.next_step, job.spe, job.config)
    if checkpoint:
        save_checkpoint(job)
    next_batch, layout = _train_forward(job, job.next_step) if req.forward_next else (0, "contiguous")
    return BackwardOut(checkpointed=checkpoint, next_batch=next_batch, next_layout=layout)


@ecall(TrainSteps)
def train_steps(ctx: EnclaveContext, req: TrainSteps) -> StepsDone:
    """Full-enclave mode: the whole step (forward, loss, backward, update) runs here; labels never leave."""
    job = _job(ctx, req.job_id)
    if not job.full_enclave:
        raise StepOutOfOrder(f"job {job.job_id} is partitioned: the host runs the BackNet step by step")
    if not 1 <= req.steps <= MAX_STEPS_PER_CALL:
        raise StepOutOfOrder(f"steps must be 1..{MAX_STEPS_PER_CALL}")
    checkpointed = False
    for _ in range(min(req.steps, job.total_steps - job.next_step)):
        xb, yb = training_batch(job.x, job.y, job.config, job.next_step)
        seed_dropout(job.model, dropout_seed(job.config, "front"), job.next_step)  # the whole model is front
        loss = loss_fn(job.model(xb), yb)
        job.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        job.optimizer.step()
        job.next_step += 1
        if is_checkpoint_step(job.next_step, job.spe, job.config):
            save_checkpoint(job)
            checkpointed = True
    return StepsDone(next_step=job.next_step, checkpointed=checkpointed)


def load_backnet(job: Job, backnet: bytes) -> None:
    """The host's final BackNet into the job's model (it comes back exactly when the job was partitioned)."""
    if job.full_enclave != (not backnet):
        raise TrainingError(f"job {job.job_id}: a BackNet comes back exactly when the job was partitioned")
    if backnet:
        try:
            job.part.back.load_state_dict(torch.load(io.BytesIO(backnet), weights_only=True), strict=True)
        except Exception as exc:  # whatever bytes the host sent: anything unloadable is refused, typed
            raise TrainingError(f"the BackNet sent for job {job.job_id} does not fit the model: {exc}") from None


@ecall(TrainEnd)
def end(ctx: EnclaveContext, req: TrainEnd) -> TrainResult:
    job = _job(ctx, req.job_id)
    if job.next_step != job.total_steps or job.pending is not None:
        raise StepOutOfOrder(f"job {job.job_id} ran {job.next_step} of {job.total_steps} steps")
    load_backnet(job, req.backnet)
    job.model.eval()
    seal_final_model(ctx, job)  # before the registry says "trained": a trained job's model is always on disk
    entry = dataclasses.replace(
        jobs(ctx).get(job.job_id), state="trained", front_digest=state_digest(job.part.front),
        back_digest=state_digest(job.part.back), steps=job.next_step,
    )
    jobs(ctx).put(entry)
    ctx.extensions.setdefault(MODELS, {})[job.job_id] = job
    ctx.extensions.pop(JOB, None)
    return TrainResult(
        job_id=job.job_id,
        steps=entry.steps,
        front_digest=entry.front_digest,
        back_digest=entry.back_digest,
        signature=_result_signature(ctx, entry),
    )


def _result_signature(ctx: EnclaveContext, entry: JobEntry) -> bytes:
    return ctx.identity.sign(job_result_digest(entry.job_id, entry.steps, entry.front_digest, entry.back_digest))


# --- finished jobs across restarts -------------------------------------------------------------------------


def _final_model(ctx: EnclaveContext, job_id: str) -> CountedState:
    """Where a finished job's whole model (FrontNet + the host's final BackNet) is sealed. Written once, when the
    job trains; the registry's digests, pinned by its counter, say which weights it must hold."""
    path = _checkpoints(ctx, job_id).path.with_name("final.sealed")
    return CountedState(path, label=f"final-model/{job_id}", counter=path.parent.name + "-final",
                        sealer=ctx.sealer, counters=ctx.counters)


def seal_final_model(ctx: EnclaveContext, job: Job) -> None:
    buf = io.BytesIO()
    torch.save({"front": job.part.front.state_dict(), "back": job.part.back.state_dict()}, buf)
    _final_model(ctx, job.job_id).save(buf.getvalue())


def restore_finished(ctx: EnclaveContext, entry: JobEntry) -> Job:
    """A finished job as TrainEnd left it, rebuilt after a restart from its datasets and sealed final model; the
    weights must have the digests the registry recorded when it trained."""
    config = entry.config
    store = datasets(ctx)
    sources = [store.get(i) for i in config.datasets]
    x, y = stack_datasets(sources)
    model, part = build_split(config)
    try:
        raw = _final_model(ctx, entry.job_id).load()
        if raw is None:
            raise SealedStateError(f"job {entry.job_id} finished but its sealed final model is missing")
        state = torch.load(io.BytesIO(raw), weights_only=True)
        part.front.load_state_dict(state["front"], strict=True)
        part.back.load_state_dict(state["back"], strict=True)
    except (CryptoError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise SealedStateError(f"the sealed final model of job {entry.job_id} does not load: {exc}") from None
    if (state_digest(part.front), state_digest(part.back)) != (entry.front_digest, entry.back_digest):
        raise SealedStateError(f"the sealed final model of job {entry.job_id} is not the one it trained")
    model.eval()
    return Job(
        job_id=entry.job_id, config=config, sources=sources, x=x, y=y, eval_x=x[:0], eval_y=y[:0], part=part,
        model=model, optimizer=make_optimizer(list(model.parameters()), config), full_enclave=part.full_enclave,
        ir=None, grad=None, labels=None, checkpoints=_checkpoints(ctx, entry.job_id), next_step=entry.steps,
    )


@ecall(GetJobState)
def job_state(ctx: EnclaveContext, req: GetJobState) -> JobState:
    """What the host was already answered about this job (digests, signed result, signed statement)."""
    entry = jobs(ctx).get(req.job_id)
    trained = entry.state != "admitted"
    return JobState(
        job_id=entry.job_id, state=entry.state, steps=entry.steps, front_digest=entry.front_digest,
        back_digest=entry.back_digest, signature=_result_signature(ctx, entry) if trained else b"",
        statement=entry.statement,
    )


@ecall(ExportModel)
def export(ctx: EnclaveContext, req: ExportModel, member: Member) -> Exported:
    """The trained FrontNet and the job's seed, to a member every training dataset's policy names as a recipient
    (encrypted to that member's consortium key by the dispatcher)."""
    job = finished_job(ctx, req.job_id)
    check_grant(policies(ctx, job.config.datasets).items(), "frontnet_recipients", member)
    assert job.config.seed is not None
    return Exported(
        job_id=job.job_id,
        front_state=_state_bytes(job.part.front),
        front_digest=state_digest(job.part.front),
        seed=job.config.seed,
    )
