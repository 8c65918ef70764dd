"""DeepEnclave's trusted half: deployed FrontNets, sessions, request decryption with replay protection, answers.

Only IRs leave (to the host's part of the model); in normal mode the host's logits come back in for
softmax and top-k, in ternary mode its penultimate features come back and the last layer runs here too.
Requests are decrypted straight into a preallocated batch; every answer is encrypted here, under a key only
its requester's session derives.

What owners authorized survives restarts: a sealed, counter-pinned deployment registry (and, for an owner's own
model, its weights sealed beside it) lets the host re-open each deployment after the enclave restarts, through
fresh shared slots (`ReopenDeployment`), without the owner signing again: a signed request is bound to one
enclave instance and single-use, so it could not be replayed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from caltrain.crypto import aead
from caltrain.crypto.errors import CryptoError
from caltrain.crypto.hashing import tagged_hash
from caltrain.enclave.consent import check_grant
from caltrain.enclave.consortium import Member
from caltrain.enclave.errors import SealedStateError
from caltrain.enclave.protocol import request_aad, weights_info
from caltrain.enclave.runtime import EnclaveContext, ecall, on_boot
from caltrain.enclave.sealed_state import CountedState
from caltrain.enclave.shm import SharedTensor
from caltrain.enclave.wire import (
    Answers,
    DeployModel,
    FrontDone,
    InferFinish,
    InferFront,
    ModelDeployed,
    OpenSession,
    ReopenDeployment,
    SessionOpened,
)
from caltrain.errors import CaltrainError, InferenceError
from caltrain.inference.errors import BadRequest, DuplicateModel, UnknownModel
from caltrain.inference.requests import check_request, request_size, seal_answer
from caltrain.inference.sessions import SessionTable
from caltrain.inference.split import InferenceSplit, load_exact, split_model
from caltrain.models import resolve_model
from caltrain.training.core import state_digest
from caltrain.training.enclave_side import finished_job, policies

REGISTRY = "inference-models"
SESSIONS = "inference-sessions"
DEPLOYMENTS = "inference-deployments"
MAX_BATCH = 1024


@dataclass(frozen=True)
class DeploymentEntry:
    """What an owner authorized, as the enclave keeps it across restarts (sealed): never the host's slots."""

    model_id: str
    owner: str
    job_id: str  # a finished job's FrontNet, or "" for the owner's own weights (sealed beside the registry)
    front_digest: str  # the job's FrontNet digest the owner signed; "" for own weights
    architecture: str | dict[str, Any]  # a zoo name or a model spec, as the owner signed it
    m: int
    ternary: bool
    weights_digest: str  # SHA-256 of the owner's sealed weights as deployed; "" for a job


class DeploymentRegistry:
    """Every deployment this enclave accepted, sealed and pinned by a monotonic counter; an owner's own weights
    are sealed in a file of their own whose digest the registry holds."""

    def __init__(self, ctx: EnclaveContext) -> None:
        self._ctx = ctx
        self._state = CountedState(ctx.state_dir / "deployments.sealed", label="deployment-registry/v1",
                                   counter="deployment-registry", sealer=ctx.sealer, counters=ctx.counters)
        raw = self._state.load()
        self.entries = {e["model_id"]: DeploymentEntry(**e) for e in json.loads(raw)} if raw is not None else {}

    def _weights_path(self, model_id: str) -> tuple[Path, str]:
        name = tagged_hash("caltrain/deployment", model_id.encode()).hex()[:32]
        return self._ctx.state_dir / "deployments" / f"{name}.sealed", f"deployment-weights/{model_id}"

    def put(self, entry: DeploymentEntry, weights: bytes) -> None:
        if weights:
            path, label = self._weights_path(entry.model_id)
            self._ctx.sealer.seal_file(path, weights, label=label)
        entries = {**self.entries, entry.model_id: entry}
        self._state.save(json.dumps([asdict(e) for e in entries.values()]).encode())
        self.entries = entries

    def weights(self, entry: DeploymentEntry) -> bytes:
        path, label = self._weights_path(entry.model_id)
        try:
            raw = self._ctx.sealer.unseal_file(path, label=label)
        except (CryptoError, OSError) as exc:
            raise SealedStateError(f"the sealed weights of deployment {entry.model_id!r} do not unseal: {exc}") \
                from None
        if hashlib.sha256(raw).hexdigest() != entry.weights_digest:
            raise SealedStateError(f"the sealed weights of deployment {entry.model_id!r} are not the deployed ones")
        return raw


@on_boot
def restore_deployments(ctx: EnclaveContext) -> None:
    """Load the deployment registry at start: an older or missing one stops the enclave, typed."""
    ctx.extensions[DEPLOYMENTS] = DeploymentRegistry(ctx)


def deployments(ctx: EnclaveContext) -> DeploymentRegistry:
    return ctx.extension(DEPLOYMENTS, DeploymentRegistry)


@dataclass
class Deployed:
    model_id: str
    owner: str
    split: InferenceSplit
    front_digest: str
    request_slots: list[SharedTensor]
    ir_slots: list[SharedTensor]
    out_slots: list[SharedTensor]
    out_shape: tuple[int, ...]
    max_batch: int
    batch: torch.Tensor = field(init=False)  # decrypted inputs land here, row by row
    pending: dict[int, list[tuple[bytes, str, int, int]]] = field(default_factory=dict)  # slot -> requests

    def __post_init__(self) -> None:
        self.batch = torch.empty((self.max_batch, *self.split.input_shape))


def _registry(ctx: EnclaveContext) -> dict[str, Deployed]:
    registry: dict[str, Deployed] = ctx.extensions.setdefault(REGISTRY, {})
    return registry


def _sessions(ctx: EnclaveContext) -> SessionTable:
    table: SessionTable = ctx.extensions.setdefault(SESSIONS, SessionTable())
    return table


def _deployed(ctx: EnclaveContext, model_id: str) -> Deployed:
    try:
        return _registry(ctx)[model_id]
    except KeyError:
        raise UnknownModel(f"no model {model_id!r} is deployed") from None


def _weights(ctx: EnclaveContext, req: DeployModel, split: InferenceSplit, member: Member) -> bytes:
    """Load the enclave's weights: from a finished job (never left the enclave; every training dataset's policy
    must name the owner a deployer, and the owner's signature must cover that job's FrontNet digest) or opened
    from the owner's own sealed weights, which are returned to be sealed for restarts."""
    if req.job_id:
        job = finished_job(ctx, req.job_id)
        check_grant(policies(ctx, job.config.datasets).items(), "deployers", member)
        if req.front_digest != state_digest(job.part.front):
            raise InferenceError(f"the deployment is signed for FrontNet {req.front_digest[:16]}…, not job "
                                 f"{req.job_id}'s")
        trained = (resolve_model(job.config.model).hash, job.config.frontnet_layers)
        if trained != (split.spec.hash, req.m):
            raise InferenceError(f"job {req.job_id} trained {job.config.model} cut at m={job.config.frontnet_layers}")
        if req.ternary or req.sealed_weights:
            raise InferenceError(
                "a trained job deploys in normal mode only: the host trained its last layer and holds it in the "
                "clear, so ternary mode would hide nothing; register the model with its last layer sealed instead"
            )
        load_exact([split.front], job.part.front.state_dict(), f"job {req.job_id}")
        return b""
    raw = ctx.hpke.open(req.sealed_weights, weights_info(req.model_id, split.spec.hash, req.m, req.ternary))
    _load_own(split, raw, req.model_id)
    return raw


def _load_own(split: InferenceSplit, raw: bytes, model_id: str) -> None:
    try:
        state = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as exc:  # torch.load of bytes the owner sent: any parse failure is the request's fault
        raise BadRequest(f"sealed weights are not a torch state_dict: {type(exc).__name__}") from None
    load_exact(split.enclave_parts, state, f"model {model_id}")


def _check_slots(slot_paths: list[str], max_batch: int) -> None:
    if not 1 <= max_batch <= MAX_BATCH or not slot_paths or len(slot_paths) % 3:
        raise BadRequest(f"max batch must be 1..{MAX_BATCH} and slots must come in request/IR/output triples")


def _open(ctx: EnclaveContext, entry: DeploymentEntry, split: InferenceSplit, slot_paths: list[str],
          max_batch: int) -> ModelDeployed:
    """Serve `entry` (weights loaded into `split`) through the host's shared slots."""
    ir_shape, out_shape = split.shapes()
    depth = len(slot_paths) // 3
    sizes = (
        (max_batch * request_size(split.input_shape), "uint8"),
        (max_batch * math.prod(ir_shape), "float32"),
        (max_batch * math.prod(out_shape), "float32"),
    )
    try:
        requests, irs, outs = (
            [SharedTensor(path, n, dtype) for path in slot_paths[i * depth : (i + 1) * depth]]
            for i, (n, dtype) in enumerate(sizes)
        )
    except RuntimeError as exc:
        raise BadRequest(f"shared slots do not map: {exc}") from None
    digest_hex = state_digest(torch.nn.Sequential(split.front, split.tail))
    _registry(ctx)[entry.model_id] = Deployed(
        entry.model_id, entry.owner, split, digest_hex, requests, irs, outs, out_shape, max_batch
    )
    return ModelDeployed(
        model_id=entry.model_id,
        architecture=split.spec.name,
        architecture_hash=split.spec.hash,
        m=entry.m,
        ternary=entry.ternary,
        owner=entry.owner,
        front_digest=digest_hex,
    )


@ecall(DeployModel)
def deploy(ctx: EnclaveContext, req: DeployModel, member: Member) -> ModelDeployed:
    if req.model_id in _registry(ctx) or req.model_id in deployments(ctx).entries:
        raise DuplicateModel(f"model {req.model_id!r} is already deployed")
    _check_slots(req.slot_paths, req.max_batch)
    split = split_model(req.architecture, req.m, req.ternary)
    weights = _weights(ctx, req, split, member)
    entry = DeploymentEntry(
        model_id=req.model_id, owner=member.name, job_id=req.job_id, front_digest=req.front_digest,
        architecture=req.architecture, m=req.m, ternary=req.ternary,
        weights_digest=hashlib.sha256(weights).hexdigest() if weights else "",
    )
    deployed = _open(ctx, entry, split, req.slot_paths, req.max_batch)
    try:
        deployments(ctx).put(entry, weights)
    except BaseException:
        del _registry(ctx)[entry.model_id]
        raise
    return deployed


@ecall(ReopenDeployment)
def reopen(ctx: EnclaveContext, req: ReopenDeployment) -> ModelDeployed:
    """Serve again, after a restart, a deployment an owner authorized: model, weights and owner come from the
    sealed registry; the host supplies only its slots."""
    entry = deployments(ctx).entries.get(req.model_id)
    if entry is None:
        raise UnknownModel(f"no model {req.model_id!r} was ever deployed in this enclave")
    if req.model_id in _registry(ctx):
        raise DuplicateModel(f"model {req.model_id!r} is already being served")
    _check_slots(req.slot_paths, req.max_batch)
    split = split_model(entry.architecture, entry.m, entry.ternary)
    if entry.job_id:
        job = finished_job(ctx, entry.job_id)
        if state_digest(job.part.front) != entry.front_digest:
            raise SealedStateError(f"job {entry.job_id}'s FrontNet is not the one deployed as {entry.model_id!r}")
        load_exact([split.front], job.part.front.state_dict(), f"job {entry.job_id}")
    else:
        _load_own(split, deployments(ctx).weights(entry), entry.model_id)
    return _open(ctx, entry, split, req.slot_paths, req.max_batch)


@ecall(OpenSession)
def open_session(ctx: EnclaveContext, req: OpenSession) -> SessionOpened:
    """One HPKE open per client session; its requests then cost an AES-GCM open each."""
    table = _sessions(ctx)
    table.open(ctx.hpke, req.session_id, req.ciphertext)
    return SessionOpened(session_id=req.session_id, expires_in_s=table.ttl_ms / 1000, max_requests=table.max_requests)


@ecall(InferFront)
def infer_front(ctx: EnclaveContext, req: InferFront) -> FrontDone:
    d = _deployed(ctx, req.model_id)
    n = len(req.session_ids)
    if not 1 <= n <= d.max_batch or len(req.counters) != n or len(req.top_ks) != n or not 0 <= req.slot < len(
        d.ir_slots
    ):
        raise BadRequest(f"a batch holds 1..{d.max_batch} requests (session, counter, top-k each) in a valid slot")
    started = time.perf_counter()
    table, size = _sessions(ctx), request_size(d.split.input_shape)
    now_ms = table.opens.now()
    # One copy out of host-writable memory before anything reads it: authenticating bytes the host could still
    # change, then decrypting them again, would be a double fetch.
    ciphertexts = bytes(d.request_slots[req.slot].view((n * size,)).numpy().data)
    view = memoryview(ciphertexts)
    rows = d.batch.numpy().data.cast("B")
    row = rows.nbytes // d.max_batch
    pending: list[tuple[bytes, str, int, int]] = []
    positions: list[int] = []
    rejected: dict[str, list[str]] = {}
    for i, (session_id, counter, top_k) in enumerate(zip(req.session_ids, req.counters, req.top_ks, strict=True)):
        j = len(pending)
        try:
            check_request(session_id, counter, top_k)
            session = table.get(session_id, now_ms)
            session.check(counter)
            aead.decrypt_into(session.requests, view[i * size : (i + 1) * size],
                              request_aad(d.model_id, session_id, counter, top_k), rows[j * row : (j + 1) * row],
                              what="request")
            session.accept(counter)
        except CaltrainError as exc:  # one bad request fails alone; the rest of the batch is served
            rejected[str(i)] = [type(exc).__name__, str(exc)]
            continue
        pending.append((session.key, session_id, counter, top_k))
        positions.append(i)
    x = d.batch[: len(pending)]
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.all()):
        for ok, i in zip(finite.tolist(), positions, strict=True):
            if not ok:
                rejected[str(i)] = [BadRequest.__name__, "input holds NaN or infinity"]
        pending = [p for p, ok in zip(pending, finite.tolist(), strict=True) if ok]
        x = x[finite]
    opened_at = time.perf_counter()
    layout = "contiguous"
    if pending:
        with torch.inference_mode():
            layout = d.ir_slots[req.slot].put(d.split.front(x))
    d.pending[req.slot] = pending
    return FrontDone(
        accepted=len(pending),
        rejected=rejected,
        timings={"decrypt_s": opened_at - started, "front_s": time.perf_counter() - opened_at},
        layout=layout,
    )


@ecall(InferFinish)
def infer_finish(ctx: EnclaveContext, req: InferFinish) -> Answers:
    d = _deployed(ctx, req.model_id)
    pending = d.pending.pop(req.slot, None)
    if pending is None or len(pending) != req.count or req.count == 0:
        raise BadRequest(f"slot {req.slot} holds no batch of {req.count} requests awaiting answers")
    started = time.perf_counter()
    with torch.inference_mode():
        out = d.out_slots[req.slot].view((req.count, *d.out_shape)).clone()  # checked and used: one fetch
        if not torch.isfinite(out).all():
            raise InferenceError("the host's output holds NaN or infinity; batch not answered")
        probs = torch.softmax(d.split.tail(out), dim=1)
        top_p, top_i = torch.topk(probs, min(max(p[3] for p in pending), probs.shape[1]), dim=1)
    labels, probabilities = top_i.tolist(), top_p.tolist()
    finished = time.perf_counter()
    blobs = [
        seal_answer(key, d.model_id, session_id, counter, {
            "model_id": d.model_id,
            "owner": d.owner,
            "front_digest": d.front_digest,
            "labels": labels[row][:k],
            "probabilities": probabilities[row][:k],
        })
        for row, (key, session_id, counter, k) in enumerate(pending)
    ]
    return Answers(
        ciphertexts=b"".join(blobs),
        lengths=[len(b) for b in blobs],
        timings={"finish_s": finished - started, "encrypt_s": time.perf_counter() - finished},
    )
