"""CalTrain's host half: drives an admitted job in the enclave and trains the BackNet (on a GPU when asked).

Per step: the enclave writes the FrontNet's IR and the labels to shared memory; the host runs the BackNet,
the loss and its backward, writes dL/dIR back and lets the enclave update the FrontNet. In full-enclave mode
the host only asks for the next epoch's steps and learns how long they took.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import torch

from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.shm import SharedTensor
from caltrain.enclave.wire import (
    BackwardOut,
    ForwardOut,
    FrontBackward,
    FrontForward,
    StepsDone,
    TrainEnd,
    TrainReady,
    TrainResult,
    TrainStart,
    TrainSteps,
)
from caltrain.errors import TrainingError
from caltrain.training.config import TrainConfig
from caltrain.training.core import (
    build_split,
    ir_shape,
    is_checkpoint_step,
    loss_fn,
    make_optimizer,
    seed_dropout,
    state_digest,
)
from caltrain.training.plain import EpochStats, Progress, TrainingReport

log = logging.getLogger("caltrain.training")
EVAL_BATCH = 512


class PartitionedTrainer:
    """One admitted job across the enclave boundary. The host never holds data, FrontNet weights, keys or the
    seed: `config` is the job's public spec, and the BackNet's initial weights come from the enclave."""

    def __init__(
        self,
        enclave: EnclaveHost,
        config: TrainConfig,
        *,
        job_id: str,
        workdir: Path,
        device: str = "cpu",
        progress: Progress | None = None,
    ) -> None:
        self.enclave, self.config, self.job_id = enclave, config, job_id
        self.workdir = Path(workdir)
        self.device = torch.device(device)
        self.progress = progress
        # The host builds the model's structure and keeps only the BackNet; its initial weights come from the
        # enclave (TrainReady), the FrontNet's never leave it.
        _, part = build_split(config)
        self.back = part.back.to(self.device)
        # Full-enclave mode leaves the host nothing to train.
        self.optimizer = make_optimizer(list(self.back.parameters()), config) if not part.full_enclave else None
        self.back_stream = 0  # the BackNet's dropout stream: the enclave derives it from the secret seed (TrainReady)
        self.ir_shape = ir_shape(config)
        capacity = max(config.batch_size, EVAL_BATCH) * int(torch.Size(self.ir_shape).numel())
        self.ir = SharedTensor.create(capacity, "float32")
        self.grad = SharedTensor.create(capacity, "float32")
        self.labels = SharedTensor.create(max(config.batch_size, EVAL_BATCH), "int64")
        self.boundary_seconds = 0.0
        self.result: TrainResult | None = None
        self._ready: tuple[int, str] | None = None  # a train IR already in shared memory: batch size, layout
        self._steps_per_epoch = 0

    def _back_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise TrainingError(f"job {self.job_id} runs wholly in the enclave: the host has no BackNet to train")
        return self.optimizer

    def close(self) -> None:
        for slot in (self.ir, self.grad, self.labels):
            slot.unlink()

    def _call(self, msg, expect):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        reply = self.enclave.call(msg, expect)
        self.boundary_seconds += time.perf_counter() - started
        return reply

    def _back_checkpoint(self, step: int) -> Path:
        return self.workdir / f"backnet-{step:08d}.pt"

    def _save_back(self, step: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self._back_checkpoint(step).with_suffix(".tmp")
        torch.save({"back": self.back.state_dict(), "optimizer": self._back_optimizer().state_dict()}, tmp)
        tmp.replace(self._back_checkpoint(step))
        for old in sorted(self.workdir.glob("backnet-*.pt"))[:-3]:
            old.unlink()

    def _load_back(self, step: int) -> None:
        path = self._back_checkpoint(step)
        if not path.exists():
            raise TrainingError(f"the enclave resumes at step {step}, but the host has no BackNet checkpoint there")
        state = torch.load(path, weights_only=True, map_location=self.device)
        self.back.load_state_dict(state["back"])
        self._back_optimizer().load_state_dict(state["optimizer"])

    def _check_schedule(self, step: int, *, sealed: bool, expected: bool) -> None:
        """The host saves its BackNet at the steps it expects the enclave to seal, before the enclave does."""
        if sealed != expected:
            said = "sealed" if sealed else "did not seal"
            raise TrainingError(f"job {self.job_id}: the enclave {said} a checkpoint at step {step}, unlike the "
                                "schedule both follow")

    def start(self, *, resume: bool = False) -> TrainReady:
        ready = self._call(
            TrainStart(
                job_id=self.job_id,
                ir_path=str(self.ir.path),
                grad_path=str(self.grad.path),
                label_path=str(self.labels.path),
                slot_capacity=self.ir.capacity,
                resume=resume,
            ),
            TrainReady,
        )
        self._steps_per_epoch = ready.steps_per_epoch
        if ready.full_enclave:
            return ready
        self.back_stream = ready.back_dropout_seed
        if tuple(ready.ir_shape) != self.ir_shape:
            raise TrainingError(f"enclave IR shape {ready.ir_shape} differs from the host's {self.ir_shape}")
        if ready.next_step:
            self._load_back(ready.next_step)
        else:
            initial = torch.load(io.BytesIO(ready.backnet), weights_only=True, map_location=self.device)
            self.back.load_state_dict(initial, strict=True)
            self._save_back(0)
        return ready

    def step(self, step: int, *, forward_next: bool = False) -> tuple[float, int, int]:
        """One training step; returns (loss, correct, batch size). With `forward_next` the enclave computes the
        next step's IR in the same call as this step's update, so each step costs one hand-off, not two."""
        if self._ready is None:
            out = self._call(FrontForward(phase="train", index=step), ForwardOut)
            self._ready = (out.batch, out.layout)
        (n, layout), self._ready = self._ready, None
        ir = self.ir.view((n, *self.ir_shape), layout).to(self.device).requires_grad_()
        labels = self.labels.view((n,)).to(self.device)
        seed_dropout(self.back, self.back_stream, step, self.device)
        logits = self.back(ir)
        loss = loss_fn(logits, labels)
        self._back_optimizer().zero_grad(set_to_none=True)
        loss.backward()
        assert ir.grad is not None
        grad_layout = self.grad.put(ir.grad)
        # Read everything that lives in shared memory now: the enclave's next forward overwrites IR and labels.
        stats = loss.item(), int((logits.argmax(1) == labels).sum()), n
        msg = FrontBackward(step=step, forward_next=forward_next, grad_layout=grad_layout)
        checkpoint = is_checkpoint_step(step + 1, self._steps_per_epoch, self.config)
        if checkpoint:  # saved before the enclave seals its own: whatever step it resumes at, the host has too
            self._back_optimizer().step()
            self._save_back(step + 1)
        started = time.perf_counter()
        with self.enclave.calling(msg, BackwardOut) as reply:
            if not checkpoint:
                self._back_optimizer().step()  # the BackNet update overlaps the FrontNet's (and the next forward)
            done = reply()
        self.boundary_seconds += time.perf_counter() - started
        self._check_schedule(step + 1, sealed=done.checkpointed, expected=checkpoint)
        self._ready = (done.next_batch, done.next_layout) if done.next_batch else None
        return stats

    def _eval_forward(self, index: int) -> ForwardOut:
        return self._call(FrontForward(phase="eval", index=index), ForwardOut)

    def evaluate(self, records: int) -> float | None:
        if not records:
            return None
        correct = 0
        self.back.eval()
        with torch.no_grad():
            for index in range((records + EVAL_BATCH - 1) // EVAL_BATCH):
                out = self._eval_forward(index)
                n = out.batch
                logits = self.back(self.ir.view((n, *self.ir_shape), out.layout).to(self.device))
                correct += int((logits.argmax(1).cpu() == self.labels.view((n,))).sum())
        self.back.train()
        return correct / records

    def _run_inside(self, ready: TrainReady, report: TrainingReport, stop_after: int | None) -> bool:
        """Full-enclave mode: one call per epoch; the host reports only steps and time. False when stopped early."""
        spe, step = ready.steps_per_epoch, ready.next_step
        last = ready.total_steps if stop_after is None else min(stop_after, ready.total_steps)
        while step < last:
            started = time.perf_counter()
            steps = min(spe - step % spe, last - step)
            step = self._call(TrainSteps(job_id=self.job_id, steps=steps), StepsDone).next_step
            if step % spe == 0:
                seconds = time.perf_counter() - started
                stats = EpochStats(step // spe, None, None, None, seconds, ready.train_records / seconds)
                report.epochs.append(stats)
                log.info("job %s epoch %d (inside): %.0f samples/s", self.job_id, stats.epoch, stats.samples_per_s)
                if self.progress:
                    self.progress({"trainer": "full-enclave", "job_id": self.job_id, **stats.to_dict()})
        return step == ready.total_steps

    def run(self, *, resume: bool = False, stop_after: int | None = None) -> TrainingReport:
        """Train to the end (or `stop_after` steps, for crash tests) and return the per-epoch report."""
        ready = self.start(resume=resume)
        report = TrainingReport(self.config)
        if ready.full_enclave:
            if self._run_inside(ready, report, stop_after):
                self._finish(report, b"")
            return report
        spe, step = ready.steps_per_epoch, ready.next_step
        epoch_started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        while step < ready.total_steps:
            if stop_after is not None and step >= stop_after:
                return report
            last = min(ready.total_steps, stop_after if stop_after is not None else ready.total_steps)
            # Not across an epoch end (evaluation reuses the IR slot) nor past where this run stops.
            loss, ok, n = self.step(step, forward_next=(step + 1) % spe != 0 and step + 1 < last)
            loss_sum, correct, seen, step = loss_sum + loss * n, correct + ok, seen + n, step + 1
            if step % spe == 0:
                seconds = time.perf_counter() - epoch_started
                stats = EpochStats(
                    step // spe,
                    loss_sum / seen,
                    correct / seen,
                    self.evaluate(ready.eval_records),
                    seconds,
                    seen / seconds,
                )
                report.epochs.append(stats)
                log.info(
                    "job %s epoch %d: loss %.4f train acc %.3f eval acc %s %.0f samples/s",
                    self.job_id,
                    stats.epoch,
                    stats.loss,
                    stats.train_accuracy,
                    stats.eval_accuracy,
                    stats.samples_per_s,
                )
                if self.progress:
                    self.progress({"trainer": "partitioned", "job_id": self.job_id, **stats.to_dict()})
                epoch_started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        backnet = io.BytesIO()
        torch.save({k: v.cpu() for k, v in self.back.state_dict().items()}, backnet)
        self._finish(report, backnet.getvalue())
        return report

    def _finish(self, report: TrainingReport, backnet: bytes) -> None:
        self.result = self._call(TrainEnd(job_id=self.job_id, backnet=backnet), TrainResult)
        if backnet and self.result.back_digest != state_digest(self.back):
            raise TrainingError(f"job {self.job_id}: the enclave signed another BackNet than the host trained")
        report.front_digest = self.result.front_digest
        report.model_digest = ""  # the whole model exists only where FrontNet and BackNet meet: the enclave
