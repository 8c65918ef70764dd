"""Scale-out, trusted half: one admitted job trained by N attested worker enclaves, data-parallel.

The job's first enclave (the one that admitted it and that participants attested) opens the job for N workers
(`OpenCluster`): it draws a job key once and records the plan sealed. Each worker enclave attests to it and it
to the worker (`JoinCluster`, `AdmitWorker`, `AcceptGrant`); only then does the first enclave seal to the
worker's attested key the grant: the job's spec and seed, the job key and the data keys of the job's containers.
A worker that does not verify gets a typed attestation error and nothing else.

Per global step the batch is the one-enclave run's (`training_batch`: same order, same augmentation), cut into
micro-batches of `micro_batch` records; micro-batch j belongs to worker j mod N. The gradient of each micro-batch
is turned into fixed point alone and the workers' sums are added as integers (`aggregation`), so the update,
and every weight after it, is the same bit for bit whatever N is. The hosts' all-reduce carries only masked
values; the enclave checks the sum it gets back (range and MAC) before it updates the FrontNet.

Every worker seals its FrontNet, optimizer and position at the job's checkpoint steps, alternating between two
counter-pinned slots, so that after a crash all workers can resume from the newest step every one of them holds.
"""

from __future__ import annotations

import dataclasses
import io
import secrets
from dataclasses import dataclass, field
from typing import Any

import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from caltrain.attestation.evidence import Evidence
from caltrain.crypto import aead
from caltrain.crypto.errors import CryptoError
from caltrain.crypto.hashing import tagged_hash
from caltrain.enclave.datastore import IngestedDataset, open_entry
from caltrain.enclave.ingest import datasets
from caltrain.enclave.peers import (
    PeerVerifier,
    decode_supporting,
    evidence_fields,
    grant_context,
    open_grant,
    own_evidence,
    seal_grant,
)
from caltrain.enclave.protocol import EnclaveKeys, job_result_digest
from caltrain.enclave.runtime import EnclaveContext, ecall, on_boot
from caltrain.enclave.sealed_state import CountedState, SealedTable
from caltrain.enclave.shm import SharedTensor
from caltrain.enclave.wire import (
    AcceptGrant,
    AdmitWorker,
    Aggregate,
    ClusterOpened,
    FinishCluster,
    ForwardOut,
    JoinCluster,
    Joined,
    Ok,
    OpenCluster,
    PeerEvidence,
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
    TrainResult,
    WorkerGrant,
)
from caltrain.models import build_model
from caltrain.training.aggregation import MAX_WORLD, SecureSum, dequantize, quantize
from caltrain.training.config import TrainConfig
from caltrain.training.core import (
    build_split,
    dropout_seed,
    is_checkpoint_step,
    loss_fn,
    seed_dropout,
    state_digest,
    training_batch,
)
from caltrain.training.enclave_side import (
    EVAL_BATCH,
    MODELS,
    Job,
    SlotPaths,
    _checkpoints,
    _state_bytes,
    build_job,
    eval_forward,
    hand_over,
    jobs,
    load_backnet,
    load_checkpoint,
    save_checkpoint,
    seal_final_model,
)
from caltrain.training.errors import JobRefused, NoActiveJob, StepOutOfOrder, WorkerRefused

CLUSTERS = "cluster-plans"  # first enclave: the sealed plans
SESSIONS = "cluster-sessions"  # first enclave: this instance's admissions
JOINS = "cluster-joins"  # worker: joins awaiting their grant
SHARDS = "cluster-shards"  # worker: joined jobs
ACTIVE = "cluster-active"  # worker: the job whose steps it runs now
DISTRIBUTED = "distributed"  # a job's registry state while its workers train it




# --- the first enclave: plans, admissions ---------------------------------------------------------------


@dataclass
class ClusterPlan:
    """How a job is spread: fixed when it is first opened, sealed, the same on every resume."""

    job_id: str
    world: int
    micro_batch: int
    job_key: str  # hex; leaves the enclave only sealed to an attested worker
    log: dict[str, Any] = field(default_factory=dict)  # the merged linkage log (accountability.sharded)

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.job_key)


class ClusterRegistry(SealedTable[ClusterPlan]):
    """Every plan this enclave made, sealed and counter-pinned like the job registry."""

    @classmethod
    def load(cls, ctx: EnclaveContext) -> ClusterRegistry:
        state = CountedState(ctx.state_dir / "clusters.sealed", label="cluster-plans/v1", counter="cluster-plans",
                             sealer=ctx.sealer, counters=ctx.counters)
        return cls(state, ClusterPlan)

    def get(self, job_id: str) -> ClusterPlan:
        if job_id not in self.entries:
            raise NoActiveJob(f"job {job_id!r} was not opened for workers in this enclave")
        return self.entries[job_id]


@on_boot
def restore_plans(ctx: EnclaveContext) -> None:
    ctx.extensions[CLUSTERS] = ClusterRegistry.load(ctx)


def plans(ctx: EnclaveContext) -> ClusterRegistry:
    return ctx.extension(CLUSTERS, ClusterRegistry)


@dataclass
class ClusterSession:
    """This enclave instance's admissions for one job: the nonce it issued per rank and whom it admitted."""

    plan: ClusterPlan
    world: int  # the plan's while the job trains; after training, any number of workers may hold its shards
    verifier: PeerVerifier
    nonces: dict[int, bytes]
    workers: dict[int, EnclaveKeys] = field(default_factory=dict)


def session(ctx: EnclaveContext, job_id: str) -> ClusterSession:
    found = ctx.extensions.get(SESSIONS, {}).get(job_id)
    if not isinstance(found, ClusterSession):
        raise NoActiveJob(f"job {job_id!r} is not open for workers in this enclave instance")
    return found


def derive_key(job_key: bytes, purpose: str) -> bytes:
    """A key for one purpose (`purpose`) from the job key the enclaves share."""
    info = tagged_hash("caltrain/job-key/v1", purpose.encode())
    return HKDF(algorithm=hashes.SHA256(), length=aead.KEY_BYTES, salt=None, info=info).derive(job_key)


def _front_aad(job_id: str) -> bytes:
    return tagged_hash("caltrain/cluster-front/v1", job_id.encode())


@ecall(OpenCluster)
def open_cluster(ctx: EnclaveContext, req: OpenCluster) -> ClusterOpened:
    """Open an admitted job for `world_size` workers (or reopen it, unchanged, to resume or re-admit)."""
    entry = jobs(ctx).get(req.job_id)
    if not 1 <= req.world_size <= MAX_WORLD:
        raise JobRefused(f"a job runs on 1..{MAX_WORLD} workers, not {req.world_size}")
    if not 1 <= req.micro_batch <= entry.config.batch_size:
        raise JobRefused(f"micro_batch must be 1..{entry.config.batch_size} (the job's batch size)")
    if any(True for _ in build_model(entry.config.model).buffers()):
        # Replicas stay identical because only summed gradients change them; a buffer (BatchNorm's running
        # statistics) would follow each worker's own micro-batches and drift apart.
        raise JobRefused(f"{entry.config.model if isinstance(entry.config.model, str) else 'this model'} keeps "
                         "running statistics (e.g. BatchNorm): train it in one enclave, not across workers")
    if entry.state == "admitted":
        if ctx.counters.counter_read(_checkpoints(ctx, req.job_id).counter):
            raise JobRefused(f"job {req.job_id} already trains in this enclave alone; a job trains once")
        plan = ClusterPlan(req.job_id, req.world_size, req.micro_batch, secrets.token_bytes(32).hex())
        plans(ctx).put(plan)
        entry.state = DISTRIBUTED
        jobs(ctx).put(entry)
    elif entry.state == DISTRIBUTED:
        plan = plans(ctx).get(req.job_id)
        if (plan.world, plan.micro_batch) != (req.world_size, req.micro_batch):
            raise JobRefused(
                f"job {req.job_id} runs on {plan.world} workers with micro-batches of {plan.micro_batch}; it "
                "resumes only as it started"
            )
    else:  # trained: reopened only for workers to hold its linkage shards again, on any number of them
        plan = plans(ctx).get(req.job_id)
    world = plan.world if entry.state == DISTRIBUTED else req.world_size
    verifier = PeerVerifier(ctx)
    nonces = {rank: verifier.issue() for rank in range(world)}
    ctx.extensions.setdefault(SESSIONS, {})[req.job_id] = ClusterSession(plan, world, verifier, nonces)
    return ClusterOpened(job_id=req.job_id, world_size=world, micro_batch=plan.micro_batch,
                         nonces=[nonces[r].hex() for r in range(world)])


def _evidence(platform: str, quote: bytes, supporting: dict[str, str], keys: bytes, nonce: bytes) -> Evidence:
    return Evidence(platform, quote, keys, nonce, decode_supporting(supporting))


@ecall(AdmitWorker)
def admit_worker(ctx: EnclaveContext, req: AdmitWorker) -> WorkerGrant:
    """Verify a worker's evidence for `rank` (this platform, this measurement, the nonce issued for that rank);
    only then seal it the grant, and answer the worker's own nonce with this enclave's evidence."""
    found = session(ctx, req.job_id)
    plan = found.plan
    if req.rank not in found.nonces:
        raise WorkerRefused(f"job {req.job_id} has ranks 0..{found.world - 1}, not {req.rank}")
    keys = found.verifier.verify(_evidence(req.platform, req.quote, req.supporting, req.keys, found.nonces[req.rank]))
    found.workers[req.rank] = keys
    entry, store = jobs(ctx).get(req.job_id), datasets(ctx)
    config = entry.config
    payload = {
        "job_id": req.job_id, "rank": req.rank, "world": found.world, "micro_batch": plan.micro_batch,
        "job_key": plan.job_key, "spec": entry.spec,
        "datasets": [store.entry(i) for i in config.datasets],
        "eval_datasets": [store.entry(i) for i in config.eval_datasets],
    }
    grant = seal_grant(ctx, payload, recipient=keys, context=grant_context(req.job_id, req.rank, found.world))
    return WorkerGrant(**evidence_fields(own_evidence(ctx, req.nonce)), grant=grant)


# --- a worker enclave ------------------------------------------------------------------------------------


@dataclass
class PendingJoin:
    rank: int
    world: int
    nonce: bytes
    verifier: PeerVerifier


@ecall(JoinCluster)
def join_cluster(ctx: EnclaveContext, req: JoinCluster) -> PeerEvidence:
    """Attest this enclave to a job's first enclave (its `leader_nonce`), and ask its evidence in turn."""
    if not 1 <= req.world_size <= MAX_WORLD or not 0 <= req.rank < req.world_size:
        raise WorkerRefused(f"rank {req.rank} of {req.world_size} workers is out of range")
    verifier = PeerVerifier(ctx)
    nonce = verifier.issue()
    ctx.extensions.setdefault(JOINS, {})[req.job_id] = PendingJoin(req.rank, req.world_size, nonce, verifier)
    return PeerEvidence(**evidence_fields(own_evidence(ctx, req.leader_nonce)), nonce=nonce)


@dataclass
class Shard:
    """A worker's part of a job: the grant's contents, the running model, and the step in progress."""

    job_id: str
    rank: int
    world: int
    micro_batch: int
    job_key: bytes
    config: TrainConfig
    sources: list[IngestedDataset]
    eval_sources: list[IngestedDataset]
    slots: tuple[CountedState, CountedState]
    held: dict[int, CountedState]  # the step each written slot holds
    job: Job | None = None
    secure: SecureSum | None = None
    sums: SharedTensor | None = None
    batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the global batch of the step in progress
    done: set[int] = field(default_factory=set)
    total: torch.Tensor | None = None  # this worker's fixed-point sum for the step in progress
    pending_micro: int = -1
    aggregated: bool = False
    finished: bool = False

    def running(self) -> Job:
        if self.job is None:
            raise StepOutOfOrder(f"job {self.job_id} has not started in this worker")
        return self.job

    @property
    def params(self) -> list[torch.nn.Parameter]:
        job = self.running()
        return list((job.model if job.full_enclave else job.part.front).parameters())

    def micros(self) -> list[slice]:
        """The micro-batches of the step in progress, in order."""
        assert self.batch is not None
        n = len(self.batch[1])
        return [slice(i, min(i + self.micro_batch, n)) for i in range(0, n, self.micro_batch)]

    def owned(self) -> list[int]:
        return list(range(self.rank, len(self.micros()), self.world))


def shard(ctx: EnclaveContext, job_id: str | None = None) -> Shard:
    """The joined job `job_id`, or (without one) the job whose steps this worker runs now."""
    shards: dict[str, Shard] = ctx.extensions.get(SHARDS, {})
    key = ctx.extensions.get(ACTIVE) if job_id is None else job_id
    if key not in shards:
        raise NoActiveJob(f"this worker has not joined job {job_id!r}" if job_id else "no job trains in this worker")
    return shards[key]


def _slots(ctx: EnclaveContext, job_id: str) -> tuple[CountedState, CountedState]:
    name = "shard-" + tagged_hash("caltrain/job", job_id.encode()).hex()[:16]
    return tuple(  # type: ignore[return-value]
        CountedState(
            ctx.state_dir / "jobs" / name / f"checkpoint-{slot}.sealed", label=f"shard-checkpoint/{job_id}/{slot}",
            counter=f"{name}-{slot}", sealer=ctx.sealer, counters=ctx.counters,
        )
        for slot in "ab"
    )


def _checkpoint_steps(slots: tuple[CountedState, CountedState]) -> dict[int, CountedState]:
    """The step each slot holds (slots never written are absent)."""
    held = {}
    for slot in slots:
        raw = slot.load()
        if raw is not None:
            held[int(torch.load(io.BytesIO(raw), weights_only=True)["next_step"])] = slot
    return held


def _checkpoint(joined: Shard, job: Job) -> None:
    """Seal the job's state into the slot not holding the newest checkpoint (an empty one first)."""
    steps = {id(slot): step for step, slot in joined.held.items()}
    job.checkpoints = min(joined.slots, key=lambda slot: steps.get(id(slot), -1))
    save_checkpoint(job)
    joined.held = {step: slot for step, slot in joined.held.items() if slot is not job.checkpoints}
    joined.held[job.next_step] = job.checkpoints


@ecall(AcceptGrant)
def accept_grant(ctx: EnclaveContext, req: AcceptGrant) -> Joined:
    """Verify the first enclave's evidence (answering this worker's nonce), open the grant it signed and sealed
    to this enclave, and open the job's containers with the granted keys."""
    pending = ctx.extensions.get(JOINS, {}).get(req.job_id)
    if not isinstance(pending, PendingJoin) or pending.rank != req.rank:
        raise WorkerRefused(f"this worker did not ask to join job {req.job_id!r} as rank {req.rank}")
    leader = pending.verifier.verify(_evidence(req.platform, req.quote, req.supporting, req.keys, pending.nonce))
    ctx.extensions[JOINS].pop(req.job_id)
    payload = open_grant(ctx, req.grant, sender=leader, context=grant_context(req.job_id, req.rank, pending.world))
    if (payload.get("job_id"), payload.get("rank"), payload.get("world")) != (req.job_id, req.rank, pending.world):
        raise WorkerRefused("the grant is for another job, rank or number of workers")
    consortium = ctx.config.consortium
    try:
        sources = [open_entry(ctx.state_dir, e, consortium) for e in payload["datasets"]]
        eval_sources = [open_entry(ctx.state_dir, e, consortium) for e in payload["eval_datasets"]]
        config = TrainConfig.from_dict(payload["spec"])
        job_key = bytes.fromhex(str(payload["job_key"]))
        micro_batch = int(payload["micro_batch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkerRefused(f"the grant is malformed: {exc!r}") from None
    slots = _slots(ctx, req.job_id)
    joined = Shard(req.job_id, req.rank, pending.world, micro_batch, job_key, config, sources, eval_sources, slots,
                   _checkpoint_steps(slots))
    ctx.extensions.setdefault(SHARDS, {})[req.job_id] = joined
    _, part = build_split(config.model_copy(update={"seed": 0}))
    return Joined(
        job_id=req.job_id, rank=req.rank, world_size=pending.world, micro_batch=micro_batch,
        full_enclave=part.full_enclave, train_records=sum(len(s.labels) for s in sources),
        checkpoints=sorted(joined.held),
    )


@ecall(ShardStart)
def shard_start(ctx: EnclaveContext, req: ShardStart) -> ShardReady:
    """Build the model at the job's seeded weights, then resume from the named sealed checkpoint (or seal the
    first one)."""
    joined = shard(ctx, req.job_id)
    if joined.finished:
        raise StepOutOfOrder(f"job {req.job_id} finished training in this worker")
    slots = SlotPaths(req.ir_path, req.grad_path, req.label_path, req.slot_capacity,
                      max(joined.micro_batch, EVAL_BATCH))
    job, ir_shape = build_job(req.job_id, joined.config, joined.sources, joined.eval_sources, joined.slots[0], slots)
    full = job.full_enclave
    params = list((job.model if full else job.part.front).parameters())
    backnet = b"" if full else _state_bytes(job.part.back)
    if joined.held:
        if req.resume_step not in joined.held:
            raise StepOutOfOrder(f"job {req.job_id} resumes from one of its sealed steps {sorted(joined.held)}")
        job.checkpoints = joined.held[req.resume_step]
        load_checkpoint(job)
    elif req.resume_step != 0:
        raise StepOutOfOrder(f"job {req.job_id} has no checkpoint in this worker: it starts at step 0")
    else:
        _checkpoint(joined, job)
    secure = SecureSum(joined.job_key, rank=joined.rank, world=joined.world, size=sum(p.numel() for p in params))
    joined.job, joined.secure = job, secure
    ctx.extensions[ACTIVE] = req.job_id
    joined.sums = SharedTensor(req.sum_path, secure.wire_size, "int64")
    _reset_step(joined)
    return ShardReady(
        train_records=len(job.y), eval_records=0 if full else len(job.eval_y), steps_per_epoch=job.spe,
        total_steps=job.total_steps, next_step=job.next_step, ir_shape=ir_shape, full_enclave=full,
        backnet=backnet, sum_size=secure.wire_size, back_dropout_seed=dropout_seed(joined.config, "back"),
    )


def _reset_step(joined: Shard) -> None:
    joined.batch, joined.total, joined.pending_micro, joined.aggregated = None, None, -1, False
    joined.done = set()
    joined.running().pending = None


def _begin_step(joined: Shard, step: int) -> None:
    """Check `step` is the next one, and draw its global batch (the one-enclave run's) on first use."""
    job = joined.running()
    if step != job.next_step or step >= job.total_steps:
        raise StepOutOfOrder(f"step {step} requested; the next step is {job.next_step} of {job.total_steps}")
    if joined.batch is None:
        joined.batch = training_batch(job.x, job.y, job.config, step)  # type: ignore[assignment]
        joined.total = torch.zeros(sum(p.numel() for p in joined.params), dtype=torch.int64)


def _micro(joined: Shard, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    if micro not in joined.owned():
        raise StepOutOfOrder(f"micro-batch {micro} is not one of this worker's {joined.owned()}")
    if micro in joined.done:
        raise StepOutOfOrder(f"micro-batch {micro} was already applied this step")
    assert joined.batch is not None
    piece = joined.micros()[micro]
    return joined.batch[0][piece], joined.batch[1][piece]


def _accumulate(joined: Shard) -> None:
    """Add the micro-batch gradient now in `.grad` to this worker's fixed-point sum."""
    assert joined.total is not None
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in joined.params])
    joined.total += quantize(flat)


def _clear_grads(joined: Shard) -> None:
    for p in joined.params:
        p.grad = None


@ecall(ShardForward)
def shard_forward(ctx: EnclaveContext, req: ShardForward) -> ForwardOut:
    joined = shard(ctx)
    job = joined.running()
    job.slots()  # full-enclave mode: nothing crosses
    _begin_step(joined, req.step)
    if joined.pending_micro >= 0 or joined.aggregated:
        raise StepOutOfOrder(f"micro-batch {joined.pending_micro} awaits its gradient; one at a time")
    xb, yb = _micro(joined, req.micro)
    seed_dropout(job.part.front, dropout_seed(job.config, "front"), req.step, micro=req.micro)
    job.pending, joined.pending_micro = job.part.front(xb), req.micro
    return hand_over(job, job.pending, yb)


@ecall(ShardBackward)
def shard_backward(ctx: EnclaveContext, req: ShardBackward) -> Ok:
    joined = shard(ctx)
    job = joined.running()
    _, grad_slot, _ = job.slots()
    if job.pending is None or (req.step, req.micro) != (job.next_step, joined.pending_micro):
        raise StepOutOfOrder(f"no forward of micro-batch {req.micro} of step {req.step} awaits its gradient")
    grad = grad_slot.view(tuple(job.pending.shape), req.grad_layout).clone(memory_format=torch.preserve_format)
    if not torch.isfinite(grad).all():
        raise StepOutOfOrder(f"gradient for step {req.step} holds NaN or infinity; not applied")
    _clear_grads(joined)
    job.pending.backward(grad)
    _accumulate(joined)
    joined.done.add(req.micro)
    job.pending, joined.pending_micro = None, -1
    return Ok()


@ecall(ShardAggregate)
def shard_aggregate(ctx: EnclaveContext, req: ShardAggregate) -> Aggregate:
    """This worker's masked contribution for the step, once every micro-batch it owns is in (full-enclave mode:
    they run here, loss and labels included)."""
    joined = shard(ctx)
    job = joined.running()
    _begin_step(joined, req.step)
    if joined.aggregated or joined.pending_micro >= 0:
        raise StepOutOfOrder(f"step {req.step} was already aggregated, or a micro-batch awaits its gradient")
    assert joined.batch is not None and joined.secure is not None and joined.sums is not None
    if job.full_enclave:
        for micro in joined.owned():
            xb, yb = _micro(joined, micro)
            _clear_grads(joined)
            seed_dropout(job.model, dropout_seed(job.config, "front"), req.step, micro=micro)  # all of it is front
            (loss_fn(job.model(xb), yb) * (len(yb) / len(joined.batch[1]))).backward()
            _accumulate(joined)
            joined.done.add(micro)
    missing = sorted(set(joined.owned()) - joined.done)
    if missing:
        raise StepOutOfOrder(f"step {req.step}: micro-batches {missing} of this worker are not done")
    assert joined.total is not None
    masked = joined.secure.mask(req.step, joined.total)
    joined.sums.view((joined.secure.wire_size,)).copy_(masked)
    joined.aggregated = True
    return Aggregate(size=joined.secure.wire_size)


@ecall(ShardApply)
def shard_apply(ctx: EnclaveContext, req: ShardApply) -> StepsDone:
    """Unmask and check the hosts' sum, update the FrontNet with it, seal a checkpoint when one is due."""
    joined = shard(ctx)
    job = joined.running()
    if not joined.aggregated or req.step != job.next_step:
        raise StepOutOfOrder(f"step {req.step} has no contribution out yet; the next step is {job.next_step}")
    assert joined.secure is not None and joined.sums is not None
    total = joined.secure.unmask(
        req.step, joined.sums.view((joined.secure.wire_size,)).clone(), micros=len(joined.micros())
    )
    grads = dequantize(total)
    offset = 0
    for p in joined.params:
        p.grad = grads[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    job.optimizer.step()
    job.next_step += 1
    _reset_step(joined)
    checkpoint = is_checkpoint_step(job.next_step, job.spe, job.config)
    if checkpoint:
        _checkpoint(joined, job)
    return StepsDone(next_step=job.next_step, checkpointed=checkpoint)


@ecall(ShardEval)
def shard_eval(ctx: EnclaveContext, req: ShardEval) -> ForwardOut:
    return eval_forward(shard(ctx).running(), req.index)


@ecall(ShardEnd)
def shard_end(ctx: EnclaveContext, req: ShardEnd) -> ShardResult:
    """The worker's trained model: its digests signed, its FrontNet sealed under the job key for the first
    enclave (the only other holder of that key are the job's other workers)."""
    joined = shard(ctx, req.job_id)
    job = joined.running()
    if job.next_step != job.total_steps or joined.batch is not None:
        raise StepOutOfOrder(f"job {job.job_id} ran {job.next_step} of {job.total_steps} steps")
    load_backnet(job, req.backnet)
    job.model.eval()
    joined.finished = True
    ctx.extensions.pop(ACTIVE, None)
    front, back = state_digest(job.part.front), state_digest(job.part.back)
    front_state = _state_bytes(job.model if job.full_enclave else job.part.front)
    sealed = aead.encrypt(derive_key(joined.job_key, "front"), front_state, _front_aad(job.job_id))
    return ShardResult(
        job_id=job.job_id, steps=job.next_step, front_digest=front, back_digest=back,
        signature=ctx.identity.sign(job_result_digest(job.job_id, job.next_step, front, back)), sealed_front=sealed,
    )


@ecall(FinishCluster)
def finish_cluster(ctx: EnclaveContext, req: FinishCluster) -> TrainResult:
    """The first enclave takes the workers' trained FrontNet (sealed under the job key) and the final BackNet,
    and signs the job's result as for a one-enclave job; exports, deployment and forensics then work as usual."""
    entry = jobs(ctx).get(req.job_id)
    if entry.state != DISTRIBUTED:
        raise StepOutOfOrder(f"job {req.job_id} is not training on workers ({entry.state})")
    plan = plans(ctx).get(req.job_id)
    try:
        front_state = aead.decrypt(derive_key(plan.key, "front"), req.sealed_front, _front_aad(req.job_id))
        state = torch.load(io.BytesIO(front_state), weights_only=True)
    except (CryptoError, RuntimeError, ValueError) as exc:
        raise WorkerRefused(f"the FrontNet handed over for job {req.job_id} is not a worker's: {exc}") from None
    config = entry.config
    store = datasets(ctx)
    job, _ = build_job(req.job_id, config, [store.get(i) for i in config.datasets], [],
                       _checkpoints(ctx, req.job_id), None)
    model, part = job.model, job.part
    try:
        (model if part.full_enclave else part.front).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WorkerRefused(f"the FrontNet handed over for job {req.job_id} does not fit the model: {exc}") from None
    load_backnet(job, req.backnet)
    job.next_step = job.total_steps
    model.eval()
    seal_final_model(ctx, job)  # before the registry says "trained": a trained job's model is always on disk
    entry = dataclasses.replace(entry, state="trained", front_digest=state_digest(part.front),
                                back_digest=state_digest(part.back), steps=job.next_step)
    jobs(ctx).put(entry)
    ctx.extensions.setdefault(MODELS, {})[req.job_id] = job
    signature = ctx.identity.sign(job_result_digest(req.job_id, job.next_step, entry.front_digest, entry.back_digest))
    return TrainResult(job_id=req.job_id, steps=job.next_step, front_digest=entry.front_digest,
                       back_digest=entry.back_digest, signature=signature)
