"""CalTrain's trusted half: data order, augmentation, FrontNet forward/backward/update, sealed checkpoints.

Runs inside the enclave process. Only IRs, their gradients and labels cross to the host (labels: the loss
runs outside, DESIGN.md §2); weights leave only sealed, or encrypted to a recipient key.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from caltrain.crypto.errors import CryptoError
from caltrain.crypto.hashing import tagged_hash
from caltrain.crypto.hpke import seal_to
from caltrain.enclave.datastore import IngestedDataset
from caltrain.enclave.errors import SealedStateError
from caltrain.enclave.ingest import datasets
from caltrain.enclave.protocol import export_info
from caltrain.enclave.runtime import EnclaveContext, ecall
from caltrain.enclave.shm import SharedTensor
from caltrain.enclave.wire import (
    BackwardOut,
    Exported,
    ExportFrontNet,
    ForwardOut,
    FrontBackward,
    FrontForward,
    TrainEnd,
    TrainReady,
    TrainResult,
    TrainStart,
)
from caltrain.errors import DataError, TrainingError
from caltrain.models import Partition
from caltrain.training.config import TrainConfig
from caltrain.training.core import (
    build_split,
    check_data,
    dropout_seed,
    ir_shape,
    is_checkpoint_step,
    make_optimizer,
    seed_dropout,
    state_digest,
    steps_per_epoch,
    training_batch,
)
from caltrain.training.errors import CheckpointRollback, NoActiveJob, StepOutOfOrder

JOB = "training-job"
EVAL_BATCH = 512


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
    ir: SharedTensor
    grad: SharedTensor
    labels: SharedTensor
    next_step: int = 0
    pending: torch.Tensor | None = None  # the last train IR, with its graph, awaiting its gradient

    @property
    def spe(self) -> int:
        return steps_per_epoch(len(self.y), self.config.batch_size)

    @property
    def total_steps(self) -> int:
        return self.spe * self.config.epochs

    @property
    def counter_name(self) -> str:
        return "ckpt-" + tagged_hash("caltrain/job", self.job_id.encode()).hex()[:16]


def finished_job(ctx: EnclaveContext, job_id: str) -> Job:
    """A job whose training ended: the enclave holds its whole model (FrontNet + the host's final BackNet)."""
    job = ctx.extensions.get("models", {}).get(job_id)
    if not isinstance(job, Job):
        raise NoActiveJob(f"no finished job {job_id!r}")
    return job


def _job(ctx: EnclaveContext, job_id: str | None = None) -> Job:
    job = ctx.extensions.get(JOB)
    if not isinstance(job, Job) or (job_id is not None and job.job_id != job_id):
        raise NoActiveJob(f"no active training job {job_id or ''}".strip())
    return job


def _checkpoint_label(job: Job) -> str:
    return f"checkpoint/{job.job_id}"


def _checkpoint_path(ctx: EnclaveContext, job: Job) -> Any:
    directory = ctx.state_dir / "jobs" / job.counter_name
    directory.mkdir(parents=True, exist_ok=True)
    return directory / "checkpoint.sealed"


def save_checkpoint(ctx: EnclaveContext, job: Job) -> None:
    """Seal weights, optimizer, RNG and data position, bound to the next counter value, then bump it."""
    version = ctx.counters.counter_read(job.counter_name) + 1
    state = {
        "version": version,
        "job_id": job.job_id,
        "config": job.config.to_dict(),
        "next_step": job.next_step,
        "front": job.part.front.state_dict(),
        "optimizer": job.optimizer.state_dict(),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    ctx.sealer.seal_file(_checkpoint_path(ctx, job), buf.getvalue(), label=_checkpoint_label(job))
    ctx.counters.counter_increment(job.counter_name)


def load_checkpoint(ctx: EnclaveContext, job: Job) -> None:
    """Resume from the newest sealed checkpoint; a tampered or older one is refused."""
    path = _checkpoint_path(ctx, job)
    expected = ctx.counters.counter_read(job.counter_name)
    if not path.exists():
        if expected:
            raise CheckpointRollback(f"job {job.job_id}: checkpoint #{expected} is missing")
        return
    try:
        raw = ctx.sealer.unseal_file(path, label=_checkpoint_label(job))
    except CryptoError as exc:
        raise SealedStateError(f"job {job.job_id}: checkpoint does not unseal: {exc}") from None
    state = torch.load(io.BytesIO(raw), weights_only=True)
    # A crash between sealing and bumping the counter leaves the newest checkpoint one ahead: accept it.
    if state["version"] == expected + 1:
        ctx.counters.counter_increment(job.counter_name)
    elif state["version"] != expected:
        raise CheckpointRollback(
            f"job {job.job_id}: checkpoint #{state['version']} presented, but the newest sealed was #{expected}"
        )
    if state["job_id"] != job.job_id or state["config"] != job.config.to_dict():
        raise SealedStateError(f"checkpoint belongs to another job or configuration than {job.job_id}")
    job.part.front.load_state_dict(state["front"])
    job.optimizer.load_state_dict(state["optimizer"])
    job.next_step = int(state["next_step"])


@ecall(TrainStart)
def start(ctx: EnclaveContext, req: TrainStart) -> TrainReady:
    config = TrainConfig.from_dict(req.config)
    store = datasets(ctx)
    eval_ids = list(config.eval_datasets)
    train_ids = list(config.datasets) or [i for i in store.datasets if i not in eval_ids]
    if not train_ids:
        raise DataError("no training datasets have been ingested")
    sources = [store.get(i) for i in train_ids]
    x, y = stack_datasets(sources)
    if eval_ids:
        eval_x, eval_y = stack_datasets([store.get(i) for i in eval_ids])
    else:
        eval_x, eval_y = x[:0], y[:0]
    check_data(config, x, y)
    check_data(config, eval_x, eval_y)
    model, part = build_split(config)
    model.train()
    job = Job(
        job_id=req.job_id,
        config=config,
        sources=sources,
        x=x,
        y=y,
        eval_x=eval_x,
        eval_y=eval_y,
        part=part,
        model=model,
        optimizer=make_optimizer(list(part.front.parameters()), config),
        ir=SharedTensor(req.ir_path, req.slot_capacity, "float32"),
        grad=SharedTensor(req.grad_path, req.slot_capacity, "float32"),
        labels=SharedTensor(req.label_path, max(config.batch_size, EVAL_BATCH), "int64"),
    )
    if req.resume:
        load_checkpoint(ctx, job)
    else:
        ctx.counters.counter_increment(job.counter_name)  # a fresh run supersedes any earlier checkpoint
        save_checkpoint(ctx, job)
    ctx.extensions[JOB] = job
    return TrainReady(
        train_records=len(y),
        eval_records=len(eval_y),
        steps_per_epoch=job.spe,
        total_steps=job.total_steps,
        next_step=job.next_step,
        ir_shape=list(ir_shape(config)),
    )


def _train_forward(job: Job, step: int) -> tuple[int, str]:
    if step != job.next_step or job.pending is not None or step >= job.total_steps:
        raise StepOutOfOrder(f"forward of step {step} requested; the next step is {job.next_step}")
    xb, yb = training_batch(job.x, job.y, job.config, step)
    seed_dropout(job.part.front, dropout_seed(job.config.seed, "front"), step)
    ir = job.part.front(xb)
    job.pending = ir
    layout = job.ir.put(ir)
    job.labels.view(yb.shape).copy_(yb)
    return len(yb), layout


@ecall(FrontForward)
def forward(ctx: EnclaveContext, req: FrontForward) -> ForwardOut:
    job = _job(ctx)
    if req.phase == "train":
        batch, layout = _train_forward(job, req.index)
        return ForwardOut(batch=batch, layout=layout)
    if req.phase != "eval":
        raise StepOutOfOrder(f"unknown phase {req.phase!r}")
    start_at = req.index * EVAL_BATCH
    if not 0 <= start_at < len(job.eval_y):
        raise StepOutOfOrder(f"eval batch {req.index} is out of range")
    xb, yb = job.eval_x[start_at : start_at + EVAL_BATCH], job.eval_y[start_at : start_at + EVAL_BATCH]
    job.part.front.eval()
    with torch.no_grad():
        ir = job.part.front(xb)
    job.part.front.train()
    layout = job.ir.put(ir)
    job.labels.view(yb.shape).copy_(yb)
    return ForwardOut(batch=len(yb), layout=layout)


@ecall(FrontBackward)
def backward(ctx: EnclaveContext, req: FrontBackward) -> BackwardOut:
    job = _job(ctx)
    if job.pending is None or req.step != job.next_step:
        raise StepOutOfOrder(f"backward of step {req.step} requested; awaiting step {job.next_step}")
    grad = job.grad.view(tuple(job.pending.shape), req.grad_layout).clone(memory_format=torch.preserve_format)
    if not torch.isfinite(grad).all():
        raise StepOutOfOrder(f"gradient for step {req.step} holds NaN or infinity; step not applied")
    job.optimizer.zero_grad(set_to_none=True)
    job.pending.backward(grad)
    job.optimizer.step()
    job.pending = None
    job.next_step += 1
    checkpoint = is_checkpoint_step(job.next_step, job.spe, job.config)
    if checkpoint:
        save_checkpoint(ctx, job)
    next_batch, layout = _train_forward(job, job.next_step) if req.forward_next else (0, "contiguous")
    return BackwardOut(checkpointed=checkpoint, next_batch=next_batch, next_layout=layout)


@ecall(TrainEnd)
def end(ctx: EnclaveContext, req: TrainEnd) -> TrainResult:
    job = _job(ctx, req.job_id)
    if job.next_step != job.total_steps:
        raise StepOutOfOrder(f"job {job.job_id} ran {job.next_step} of {job.total_steps} steps")
    try:
        job.part.back.load_state_dict(torch.load(io.BytesIO(req.backnet), weights_only=True), strict=True)
    except (RuntimeError, ValueError, KeyError, EOFError, OSError) as exc:
        raise TrainingError(f"the BackNet sent for job {job.job_id} does not fit the model: {exc}") from None
    job.model.eval()
    models = ctx.extensions.setdefault("models", {})
    models[job.job_id] = job
    return TrainResult(job_id=job.job_id, steps=job.next_step, front_digest=state_digest(job.part.front))


@ecall(ExportFrontNet)
def export(ctx: EnclaveContext, req: ExportFrontNet) -> Exported:
    job = finished_job(ctx, req.job_id)
    buf = io.BytesIO()
    torch.save(job.part.front.state_dict(), buf)
    ciphertext = seal_to(req.recipient_key, buf.getvalue(), export_info(req.job_id))
    return Exported(ciphertext=ciphertext, front_digest=state_digest(job.part.front))
