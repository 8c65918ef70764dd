"""Scale-out, host half: one worker's share of a job, its BackNet replica kept in step by DistributedDataParallel.

Each worker host drives its own enclave through the job's global steps. For every micro-batch it owns (micro-batch
j of a step belongs to rank j mod N) the enclave writes the IR and labels to shared memory, the host runs the
BackNet and the loss (scaled by the micro-batch's share of the global batch) under `no_sync`, hands dL/dIR back
and keeps the BackNet's gradient in fixed point (`FixedPointSync`). Then one backward through DDP on an empty
batch makes DDP all-reduce every bucket with that fixed-point sum (a DDP communication hook over an int64
all-reduce), and the host all-reduces the enclave's masked FrontNet contribution with the same process group. Both
sums are integer sums, exact in any order, so N workers train the weights one worker does, bit for bit.

What the hosts see per step: the IRs, labels and dL/dIR of their own micro-batches (as in one-enclave partitioned
mode), the BackNet's summed gradient (the BackNet is the hosts' anyway), and uniformly random int64 vectors where
the FrontNet gradient travels. In full-enclave mode only the masked vectors and timing.
"""

# No `from __future__ import annotations` here: DDP checks the hook's `bucket` annotation is `dist.GradBucket` itself.
import io
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.shm import SharedTensor
from caltrain.enclave.wire import (
    Aggregate,
    ForwardOut,
    Ok,
    ShardAggregate,
    ShardApply,
    ShardBackward,
    ShardEnd,
    ShardEval,
    ShardForward,
    ShardReady,
    ShardResult,
    ShardStart,
    StepsDone,
)
from caltrain.training.aggregation import TAGS, dequantize, quantize
from caltrain.training.config import TrainConfig
from caltrain.training.core import (
    build_split,
    dropout_seed,
    is_checkpoint_step,
    loss_fn,
    make_optimizer,
    seed_dropout,
    steps_per_epoch,
    training_batch,
)
from caltrain.training.partitioned import PartitionedTrainer
from caltrain.training.plain import EpochStats, Progress, TrainingReport

log = logging.getLogger("caltrain.distributed")


class FixedPointSync:
    """DDP communication hook state: the BackNet gradients of the micro-batches run under `no_sync`, in fixed
    point, added to each bucket's (empty-batch) gradients and summed exactly by an int64 all-reduce."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group
        self.pending: dict[torch.Tensor, torch.Tensor] = {}
        self.payload_bytes = 0  # int64 bytes handed to all-reduce since `take_payload` last read them

    def take_payload(self) -> int:
        taken, self.payload_bytes = self.payload_bytes, 0
        return taken

    def accumulate(self, params: list[torch.nn.Parameter]) -> None:
        """Move the micro-batch gradient now in `.grad` into the fixed-point sum."""
        for p in params:
            if p.grad is not None:
                q = quantize(p.grad)
                self.pending[p] = self.pending[p] + q if p in self.pending else q
                p.grad = None


def _written_bytes() -> int:
    """Bytes this process has passed to write-like system calls (sockets included); 0 where Linux's /proc is not."""
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))
    except (OSError, StopIteration):
        return 0


def fixed_point_hook(state: FixedPointSync, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    extra = torch.cat([state.pending.pop(p, torch.zeros(p.numel(), dtype=torch.int64, device=p.device))
                       for p in bucket.parameters()])
    total = (quantize(buffer) + extra).to(buffer.device)
    state.payload_bytes += total.numel() * total.element_size()
    future = dist.all_reduce(total, group=state.group, async_op=True).get_future()
    return future.then(lambda f: dequantize(f.value()[0].cpu()).to(buffer.device))


class ShardTrainer(PartitionedTrainer):
    """One worker's host side of a job trained across `world` enclaves (its own enclave is `enclave`)."""

    def __init__(
        self,
        enclave: EnclaveHost,
        config: TrainConfig,
        *,
        job_id: str,
        rank: int,
        world: int,
        micro_batch: int,
        workdir: Path,
        group: dist.ProcessGroup | None = None,
        device: str = "cpu",
        progress: Progress | None = None,
    ) -> None:
        super().__init__(enclave, config, job_id=job_id, workdir=workdir, device=device, progress=progress)
        self.rank, self.world, self.micro_batch, self.group = rank, world, micro_batch, group
        model, part = build_split(config)
        trained = model if part.full_enclave else part.front
        self.sums = SharedTensor.create(sum(p.numel() for p in trained.parameters()) + TAGS, "int64")
        self.sync = FixedPointSync(group)
        self.ddp: DistributedDataParallel | None = None
        self.total_records = 0
        self.counters = {"steps": 0, "payload_bytes": 0, "wire_bytes": 0, "allreduce_s": 0.0, "mask_s": 0.0}

    def close(self) -> None:
        super().close()
        self.sums.unlink()

    def _eval_forward(self, index: int) -> ForwardOut:
        return self._call(ShardEval(index=index), ForwardOut)

    def start(self, *, resume: bool = False, resume_step: int = 0) -> ShardReady:  # type: ignore[override]
        ready = self._call(
            ShardStart(
                job_id=self.job_id, ir_path=str(self.ir.path), grad_path=str(self.grad.path),
                label_path=str(self.labels.path), sum_path=str(self.sums.path), slot_capacity=self.ir.capacity,
                resume_step=resume_step,
            ),
            ShardReady,
        )
        self.total_records = ready.train_records
        self._steps_per_epoch = ready.steps_per_epoch
        self.back_stream = ready.back_dropout_seed
        if not ready.full_enclave:
            if ready.next_step:
                self._load_back(ready.next_step)
            else:
                self.back.load_state_dict(torch.load(io.BytesIO(ready.backnet), weights_only=True,
                                                     map_location=self.device), strict=True)
                self._save_back(0)
            self.ddp = DistributedDataParallel(self.back, process_group=self.group)
            self.ddp.register_comm_hook(self.sync, fixed_point_hook)
        return ready

    def batch_records(self, step: int) -> int:
        """How many records global step `step` holds (the last batch of an epoch may be short)."""
        return min(self.config.batch_size, self.total_records - (step % self._steps_per_epoch) * self.config.batch_size)

    def owned(self, step: int) -> range:
        return range(self.rank, math.ceil(self.batch_records(step) / self.micro_batch), self.world)

    def shard_step(self, step: int) -> tuple[float, int, int]:
        """One global step; returns this worker's (summed loss, correct, records) over its micro-batches."""
        loss_sum, correct, seen = 0.0, 0, 0
        if self.ddp is not None:
            share = self.batch_records(step)
            self._back_optimizer().zero_grad(set_to_none=True)
            for micro in self.owned(step):
                out = self._call(ShardForward(step=step, micro=micro), ForwardOut)
                n = out.batch
                ir = self.ir.view((n, *self.ir_shape), out.layout).to(self.device).requires_grad_()
                labels = self.labels.view((n,)).to(self.device)
                seed_dropout(self.back, self.back_stream, step, self.device, micro=micro)
                with self.ddp.no_sync():
                    logits = self.ddp(ir)
                    loss = loss_fn(logits, labels)
                    (loss * (n / share)).backward()
                assert ir.grad is not None
                layout = self.grad.put(ir.grad)
                loss_sum += loss.item() * n
                correct, seen = correct + int((logits.argmax(1) == labels).sum()), seen + n
                self._call(ShardBackward(step=step, micro=micro, grad_layout=layout), Ok)
                self.sync.accumulate(list(self.back.parameters()))
            empty = torch.zeros((0, *self.ir_shape), device=self.device)
            with self._collective(self.sync.take_payload):
                (self.ddp(empty).sum() * 0.0).backward()  # DDP's all-reduce of the summed BackNet gradient
            self._back_optimizer().step()
        started = time.perf_counter()
        agg = self._call(ShardAggregate(step=step), Aggregate)
        contribution = self.sums.view((agg.size,))
        total = contribution.clone().to(self.device)
        aggregated = time.perf_counter()
        with self._collective(lambda: total.numel() * total.element_size()):
            dist.all_reduce(total, group=self.group)
        contribution.copy_(total.cpu())
        # saved before the enclave seals its own: a worker killed in between still has the step it resumes at
        checkpoint = self.ddp is not None and is_checkpoint_step(step + 1, self._steps_per_epoch, self.config)
        if checkpoint:
            self._save_back(step + 1)
        applied = time.perf_counter()
        done = self._call(ShardApply(step=step), StepsDone)
        self.counters["mask_s"] += aggregated - started + time.perf_counter() - applied
        self.counters["steps"] += 1
        if self.ddp is not None:
            self._check_schedule(step + 1, sealed=done.checkpointed, expected=checkpoint)
        return loss_sum, correct, seen

    @contextmanager
    def _collective(self, payload: Callable[[], int]) -> Iterator[None]:
        """Count what one collective hands the all-reduce and what this process wrote to its sockets meanwhile
        (Linux `wchar`: gloo's sends; nothing else runs during it)."""
        written, started = _written_bytes(), time.perf_counter()
        yield
        self.counters["allreduce_s"] += time.perf_counter() - started
        self.counters["wire_bytes"] += _written_bytes() - written
        self.counters["payload_bytes"] += payload()

    def _epoch_totals(self, loss_sum: float, correct: int, seen: int) -> tuple[float, int, int]:
        totals = torch.tensor([loss_sum, float(correct), float(seen)], dtype=torch.float64, device=self.device)
        dist.all_reduce(totals, group=self.group)
        return float(totals[0]), int(totals[1]), int(totals[2])

    def backnet_bytes(self) -> bytes:
        """The BackNet as the enclave takes it (empty in full-enclave mode)."""
        if self.ddp is None:
            return b""
        buf = io.BytesIO()
        torch.save({k: v.cpu() for k, v in self.back.state_dict().items()}, buf)
        return buf.getvalue()

    def run_shard(
        self, *, resume_step: int = 0, on_step: Callable[[int], None] | None = None
    ) -> tuple[TrainingReport, ShardResult]:
        """Train from `resume_step` to the end, then hand the enclave the final BackNet."""
        ready = self.start(resume_step=resume_step)
        report = TrainingReport(self.config)
        spe, step = ready.steps_per_epoch, ready.next_step
        started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        while step < ready.total_steps:
            loss, ok, n = self.shard_step(step)
            loss_sum, correct, seen, step = loss_sum + loss, correct + ok, seen + n, step + 1
            if on_step is not None:
                on_step(step)
            if step % spe == 0:
                seconds = time.perf_counter() - started
                stats = self._epoch_stats(ready, step // spe, seconds, loss_sum, correct, seen)
                report.epochs.append(stats)
                if self.rank == 0:
                    log.info("job %s epoch %d on %d workers: %.0f samples/s", self.job_id, stats.epoch, self.world,
                             stats.samples_per_s)
                    if self.progress:
                        self.progress({"trainer": "distributed", "job_id": self.job_id, "workers": self.world,
                                       **stats.to_dict()})
                started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        result = self._call(ShardEnd(job_id=self.job_id, backnet=self.backnet_bytes()), ShardResult)
        return report, result

    def _epoch_stats(self, ready: ShardReady, epoch: int, seconds: float, loss_sum: float, correct: int,
                     seen: int) -> EpochStats:
        records = ready.train_records
        if ready.full_enclave:
            return EpochStats(epoch, None, None, None, seconds, records / seconds)
        loss_sum, correct, seen = self._epoch_totals(loss_sum, correct, seen)
        accuracy = self.evaluate(ready.eval_records) if self.rank == 0 else None
        return EpochStats(epoch, loss_sum / seen, correct / seen, accuracy, seconds, records / seconds)



def train_reference(config: TrainConfig, x: torch.Tensor, y: torch.Tensor, *, micro_batch: int) -> torch.nn.Module:
    """The plain baseline of scale-out training: one process, the whole model, the same global batches cut into
    the same micro-batches, each micro-batch's gradient in fixed point alone, the sums added as integers. This is
    what N workers compute for every N; an owner who received the seed checks the trained weights against it."""
    model, part = build_split(config)
    params = list(model.parameters())
    optimizer = make_optimizer(params, config)
    model.train()
    streams = [(part.front, dropout_seed(config, "front")), (part.back, dropout_seed(config, "back"))]
    for step in range(steps_per_epoch(len(y), config.batch_size) * config.epochs):
        xb, yb = training_batch(x, y, config, step)
        totals = [torch.zeros(p.numel(), dtype=torch.int64) for p in params]
        for micro, start in enumerate(range(0, len(yb), micro_batch)):
            xm, ym = xb[start : start + micro_batch], yb[start : start + micro_batch]
            for half, stream in streams:  # the same masks as the enclave's front and the host's back draw
                seed_dropout(half, stream, step, micro=micro)
            optimizer.zero_grad(set_to_none=True)
            (loss_fn(model(xm), ym) * (len(ym) / len(yb))).backward()
            for total, p in zip(totals, params, strict=True):
                total += quantize(p.grad if p.grad is not None else torch.zeros_like(p))
        for total, p in zip(totals, params, strict=True):
            p.grad = dequantize(total).view_as(p)
        optimizer.step()
    return model
