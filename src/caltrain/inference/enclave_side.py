"""DeepEnclave's trusted half: deployed FrontNets, request decryption with replay protection, and answers.

Only IRs leave (to the host's part of the model); in normal mode the host's logits come back in for
softmax and top-k, in ternary mode its penultimate features come back and the last layer runs here too.
Every answer is encrypted here, to the key its requester put inside the request.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import torch

from caltrain.crypto.signing import verify_signature
from caltrain.enclave.protocol import deploy_digest, weights_info
from caltrain.enclave.runtime import EnclaveContext, ecall
from caltrain.enclave.shm import SharedTensor
from caltrain.enclave.wire import Answers, DeployModel, FrontDone, InferFinish, InferFront, ModelDeployed
from caltrain.errors import CaltrainError, InferenceError
from caltrain.inference.errors import BadRequest, DuplicateModel, ReplayedRequest, UnknownModel
from caltrain.inference.requests import open_request, request_size, seal_answer
from caltrain.inference.split import InferenceSplit, load_exact, split_model
from caltrain.training.core import state_digest
from caltrain.training.enclave_side import Job

REGISTRY = "inference-models"
REPLAY = "inference-replay"
REPLAY_WINDOW_S = 300.0
MAX_BATCH = 1024


class ReplayGuard:
    """Accepts each request id once within a window around the issue time the client sealed in.

    The enclave's clock is the host's, so it only moves forward here: rewinding it cannot revive a request
    whose id was already forgotten (an id is forgotten only once its issue time fell out of the window).
    """

    def __init__(self, window_s: float = REPLAY_WINDOW_S) -> None:
        self.window_ms = int(window_s * 1000)
        self.now_ms = 0
        self.seen: dict[str, int] = {}

    def check(self, request_id: str, issued_at_ms: int) -> None:
        self.now_ms = max(self.now_ms, int(time.time() * 1000))
        if abs(self.now_ms - issued_at_ms) > self.window_ms:
            raise BadRequest(f"request issued {(self.now_ms - issued_at_ms) / 1000:.0f} s away from now; "
                             f"the window is {self.window_ms // 1000} s (check the client's clock)")
        if request_id in self.seen:
            raise ReplayedRequest(f"request {request_id} was already answered")
        if len(self.seen) > 100_000:
            self.seen = {r: t for r, t in self.seen.items() if t >= self.now_ms - self.window_ms}
        self.seen[request_id] = issued_at_ms


@dataclass
class Deployed:
    model_id: str
    owner: str
    split: InferenceSplit
    front_digest: str
    ir_slots: list[SharedTensor]
    out_slots: list[SharedTensor]
    out_shape: tuple[int, ...]
    max_batch: int
    pending: dict[int, list[tuple[str, bytes, int]]] = field(default_factory=dict)  # slot -> (id, key, k)


def _registry(ctx: EnclaveContext) -> dict[str, Deployed]:
    registry: dict[str, Deployed] = ctx.extensions.setdefault(REGISTRY, {})
    return registry


def _deployed(ctx: EnclaveContext, model_id: str) -> Deployed:
    try:
        return _registry(ctx)[model_id]
    except KeyError:
        raise UnknownModel(f"no model {model_id!r} is deployed") from None


def _weights(ctx: EnclaveContext, req: DeployModel, split: InferenceSplit) -> None:
    """Load the enclave's weights: from a finished job (never left the enclave) or opened from the owner."""
    if req.job_id:
        job = ctx.extensions.get("models", {}).get(req.job_id)
        if not isinstance(job, Job):
            raise UnknownModel(f"no finished training job {req.job_id!r} in the enclave")
        if (job.config.model, job.config.frontnet_layers) != (req.architecture, req.m):
            raise InferenceError(f"job {req.job_id} trained {job.config.model} cut at m={job.config.frontnet_layers}")
        if req.ternary or req.sealed_weights:
            raise InferenceError(
                "a trained job deploys in normal mode only: the host trained its last layer and holds it in the "
                "clear, so ternary mode would hide nothing; register the model with its last layer sealed instead"
            )
        load_exact([split.front], job.part.front.state_dict(), f"job {req.job_id}")
        return
    raw = ctx.hpke.open(req.sealed_weights, weights_info(req.model_id, req.architecture, req.m, req.ternary))
    try:
        state = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as exc:  # torch.load of bytes the owner sent: any parse failure is the request's fault
        raise BadRequest(f"sealed weights are not a torch state_dict: {type(exc).__name__}") from None
    load_exact(split.enclave_parts, state, f"model {req.model_id}")


@ecall(DeployModel)
def deploy(ctx: EnclaveContext, req: DeployModel) -> ModelDeployed:
    if req.model_id in _registry(ctx):
        raise DuplicateModel(f"model {req.model_id!r} is already deployed")
    member = ctx.config.consortium.member(req.owner)
    digest = deploy_digest(
        req.model_id, req.job_id, req.architecture, req.m, req.ternary, req.sealed_weights, ctx.public_keys
    )
    verify_signature(member.public_key, digest, req.signature, what=f"deployment by {member.name}")
    if not 1 <= req.max_batch <= MAX_BATCH or not req.slot_paths or len(req.slot_paths) % 2:
        raise BadRequest(f"max batch must be 1..{MAX_BATCH} and slots must come in IR/output pairs")
    split = split_model(req.architecture, req.m, req.ternary)
    _weights(ctx, req, split)
    ir_shape, out_shape = split.shapes()
    depth = len(req.slot_paths) // 2
    try:
        ir_slots = [SharedTensor(p, req.max_batch * torch.Size(ir_shape).numel(), "float32")
                    for p in req.slot_paths[:depth]]
        out_slots = [SharedTensor(p, req.max_batch * torch.Size(out_shape).numel(), "float32")
                     for p in req.slot_paths[depth:]]
    except RuntimeError as exc:
        raise BadRequest(f"shared slots do not map: {exc}") from None
    digest_hex = state_digest(torch.nn.Sequential(split.front, split.tail))
    _registry(ctx)[req.model_id] = Deployed(
        req.model_id, member.name, split, digest_hex, ir_slots, out_slots, out_shape, req.max_batch
    )
    return ModelDeployed(
        model_id=req.model_id,
        architecture=req.architecture,
        m=req.m,
        ternary=req.ternary,
        owner=member.name,
        front_digest=digest_hex,
    )


@ecall(InferFront)
def infer_front(ctx: EnclaveContext, req: InferFront) -> FrontDone:
    d = _deployed(ctx, req.model_id)
    n, size = len(req.request_ids), request_size(d.split.input_shape)
    if not 1 <= n <= d.max_batch or len(req.ciphertexts) != n * size or not 0 <= req.slot < len(d.ir_slots):
        raise BadRequest(f"a batch holds 1..{d.max_batch} requests of {size} bytes each, in a valid slot")
    guard: ReplayGuard = ctx.extensions.setdefault(REPLAY, ReplayGuard())
    started = time.perf_counter()
    view = memoryview(req.ciphertexts)
    inputs, pending, rejected = [], [], {}
    for i, request_id in enumerate(req.request_ids):
        try:
            opened = open_request(ctx.hpke, d.model_id, request_id, bytes(view[i * size : (i + 1) * size]),
                                  d.split.input_shape)
            guard.check(request_id, opened.issued_at_ms)
        except CaltrainError as exc:  # one bad request fails alone; the rest of the batch is served
            rejected[str(i)] = [type(exc).__name__, str(exc)]
            continue
        inputs.append(opened.x)
        pending.append((request_id, opened.response_key, opened.top_k))
    opened_at = time.perf_counter()
    if inputs:
        with torch.inference_mode():
            ir = d.split.front(torch.stack(inputs))
        d.ir_slots[req.slot].view(ir.shape).copy_(ir)
    d.pending[req.slot] = pending
    return FrontDone(
        accepted=len(inputs),
        rejected=rejected,
        timings={"decrypt_s": opened_at - started, "front_s": time.perf_counter() - opened_at},
    )


@ecall(InferFinish)
def infer_finish(ctx: EnclaveContext, req: InferFinish) -> Answers:
    d = _deployed(ctx, req.model_id)
    pending = d.pending.pop(req.slot, None)
    if pending is None or len(pending) != req.count or req.count == 0:
        raise BadRequest(f"slot {req.slot} holds no batch of {req.count} requests awaiting answers")
    started = time.perf_counter()
    with torch.inference_mode():
        out = d.out_slots[req.slot].view((req.count, *d.out_shape))
        if not torch.isfinite(out).all():
            raise InferenceError("the host's output holds NaN or infinity; batch not answered")
        probs = torch.softmax(d.split.tail(out), dim=1)
        top_p, top_i = torch.topk(probs, min(max(k for _, _, k in pending), probs.shape[1]), dim=1)
    finished = time.perf_counter()
    blobs = []
    for row, (request_id, key, k) in enumerate(pending):
        answer = {
            "model_id": d.model_id,
            "owner": d.owner,
            "front_digest": d.front_digest,
            "labels": top_i[row, :k].tolist(),
            "probabilities": top_p[row, :k].tolist(),
        }
        blobs.append(seal_answer(key, d.model_id, request_id, answer))
    return Answers(
        ciphertexts=b"".join(blobs),
        lengths=[len(b) for b in blobs],
        timings={"finish_s": finished - started, "encrypt_s": time.perf_counter() - finished},
    )
