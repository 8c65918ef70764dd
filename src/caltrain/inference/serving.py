"""DeepEnclave's host half: the registry of deployed models and the batching pipeline.

Concurrent requests are gathered into batches (up to `max_batch`, waiting at most `max_wait_ms` after the
first). Each batch takes a triple of shared slots and flows: its ciphertexts → request slot → enclave (open,
FrontNet → IR slot) → host (its part → output slot) → enclave (ternary: last layer; softmax, top-k, encrypt).
With `depth` slot triples, the enclave opens batch k+1 while the host runs batch k. Each request keeps its own
future, so answers are never mixed up; one bad request is rejected alone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from caltrain.enclave.host import EnclaveHost, raise_failure
from caltrain.enclave.shm import SharedTensor
from caltrain.enclave.wire import (
    Answers,
    DeployModel,
    Failure,
    FrontDone,
    InferFinish,
    InferFront,
    ModelDeployed,
    OpenSession,
    ReopenDeployment,
    SessionOpened,
    SignedReply,
)
from caltrain.errors import CaltrainError, EnclaveUnavailable, InferenceError
from caltrain.inference.errors import BadRequest, DuplicateModel, UnknownModel
from caltrain.inference.requests import SESSION_SIZE, check_request, request_size
from caltrain.inference.split import InferenceSplit, load_exact, split_model

log = logging.getLogger("caltrain.inference")


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = 64
    max_wait_ms: float = 2.0
    depth: int = 2  # batches in flight between enclave and host

    def __post_init__(self) -> None:
        if not (1 <= self.max_batch <= 1024 and self.max_wait_ms >= 0 and 1 <= self.depth <= 8):
            raise InferenceError("batching: max_batch 1..1024, max_wait_ms ≥ 0, depth 1..8")


@dataclass(frozen=True)
class ModelInfo:
    """What the host knows of a deployed model (the registry entry)."""

    model_id: str
    architecture: str
    m: int
    ternary: bool
    owner: str
    source: str  # "job:<id>" or "external"
    front_digest: str
    input_shape: list[int]
    num_classes: int
    request_size: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Pending:
    session_id: str
    counter: int
    top_k: int
    ciphertext: bytes
    future: Future[bytes] = field(default_factory=Future)


def _fail(items: list[_Pending], exc: Exception) -> None:
    if not isinstance(exc, CaltrainError):
        log.exception("inference batch crashed", exc_info=exc)
        exc = InferenceError(f"internal error {type(exc).__name__}")
    for p in items:
        p.future.set_exception(exc)


def _typed(error: str, detail: str) -> CaltrainError:
    """The typed error an enclave rejection names (as `EnclaveHost.call` would raise it)."""
    try:
        raise_failure(Failure(error=error, detail=detail))
    except CaltrainError as exc:
        return exc
    raise AssertionError("unreachable")


class ModelServer:
    """One deployed model on the host: its part of the network, its shared slots and its batching threads."""

    def __init__(
        self,
        enclave: EnclaveHost,
        info: ModelInfo,
        split: InferenceSplit,
        slots: tuple[list[SharedTensor], list[SharedTensor], list[SharedTensor]],
        config: BatchingConfig,
    ) -> None:
        self.enclave, self.info, self.config = enclave, info, config
        self._host = split.host
        self._ir_shape, _ = split.shapes()
        self.slots = slots  # request ciphertexts, IRs, outputs: all the host ever shares with the enclave
        self._requests, self._ir, self._out = slots
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._stage: queue.Queue[tuple[list[_Pending], int, dict[str, float], str] | None] = queue.Queue()
        self._free: queue.Queue[int] = queue.Queue()
        for slot in range(len(self._ir)):
            self._free.put(slot)
        self.timings: deque[dict[str, float]] = deque(maxlen=100_000)  # per batch, for the load benchmark
        self._closed = False
        self._threads = [
            threading.Thread(target=self._front_loop, name=f"infer-front-{info.model_id}", daemon=True),
            threading.Thread(target=self._back_loop, name=f"infer-back-{info.model_id}", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def submit(self, session_id: str, counter: int, top_k: int, ciphertext: bytes) -> Future[bytes]:
        """Queue one request; the future holds its encrypted answer or its typed error."""
        if self._closed:
            raise InferenceError(f"model {self.info.model_id} is shutting down")
        check_request(session_id, counter, top_k)
        if len(ciphertext) != self.info.request_size:
            raise BadRequest(
                f"request is {len(ciphertext)} bytes; model {self.info.model_id} takes {self.info.request_size} "
                f"(one float32 input of shape {self.info.input_shape})"
            )
        pending = _Pending(session_id, counter, top_k, ciphertext)
        self._queue.put(pending)
        return pending.future

    def _gather(self) -> list[_Pending] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while len(batch) < self.config.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _front_loop(self) -> None:
        while (batch := self._gather()) is not None:
            slot = self._free.get()
            try:
                started = time.perf_counter()
                joined = b"".join(p.ciphertext for p in batch)
                self._requests[slot].view((len(joined),)).numpy()[:] = memoryview(joined)
                msg = InferFront(
                    model_id=self.info.model_id,
                    slot=slot,
                    session_ids=[p.session_id for p in batch],
                    counters=[p.counter for p in batch],
                    top_ks=[p.top_k for p in batch],
                )
                done = self.enclave.call(msg, FrontDone)
                timings = {**done.timings, "front_call_s": time.perf_counter() - started, "batch": len(batch)}
            except Exception as exc:
                _fail(batch, exc)
                self._free.put(slot)
                continue
            accepted = []
            for i, p in enumerate(batch):
                if str(i) in done.rejected:
                    p.future.set_exception(_typed(*done.rejected[str(i)]))
                else:
                    accepted.append(p)
            if accepted:
                self._stage.put((accepted, slot, timings, done.layout))
            else:
                self._free.put(slot)
        self._stage.put(None)

    def _back_loop(self) -> None:
        while (item := self._stage.get()) is not None:
            accepted, slot, timings, layout = item
            n = len(accepted)
            try:
                started = time.perf_counter()
                with torch.inference_mode():
                    out = self._host(self._ir[slot].view((n, *self._ir_shape), layout))
                self._out[slot].view(out.shape).copy_(out)
                host_done = time.perf_counter()
                answers = self.enclave.call(InferFinish(model_id=self.info.model_id, slot=slot, count=n), Answers)
                timings.update(answers.timings, host_s=host_done - started,
                               finish_call_s=time.perf_counter() - host_done)
            except Exception as exc:
                _fail(accepted, exc)
                continue
            finally:
                self._free.put(slot)
            view, offset = memoryview(answers.ciphertexts), 0
            for p, length in zip(accepted, answers.lengths, strict=True):
                p.future.set_result(bytes(view[offset : offset + length]))
                offset += length
            self.timings.append(timings)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=30)
        _unlink(self.slots)


def _unlink(slots: tuple[list[SharedTensor], ...]) -> None:
    for part in slots:
        for s in part:
            s.unlink()


class InferenceService:
    """The host's registry of deployed models (id → architecture, cut, mode, owner, digest)."""

    def __init__(self, enclave: EnclaveHost, config: BatchingConfig | None = None) -> None:
        self.enclave = enclave
        self.config = config or BatchingConfig()
        self.models: dict[str, ModelServer] = {}
        self.unavailable: set[str] = set()  # deployed, but not served until the enclave re-opens them
        self._lock = threading.Lock()

    def _slots(self, split: InferenceSplit) -> tuple[list[SharedTensor], list[SharedTensor], list[SharedTensor]]:
        ir_shape, out_shape = split.shapes()
        cap, depth = self.config.max_batch, self.config.depth

        def group(per_request: int, dtype: str) -> list[SharedTensor]:
            return [SharedTensor.create(cap * per_request, dtype) for _ in range(depth)]

        return (group(request_size(split.input_shape), "uint8"), group(math.prod(ir_shape), "float32"),
                group(math.prod(out_shape), "float32"))

    def deploy(self, request: DeployModel, host_state: object) -> tuple[SignedReply, ModelInfo]:
        """Deploy a model an owner signed for: the host part's weights load here, the enclave's (sealed or
        trained) there. The host fills in only its shared-memory slots, which the owner's signature leaves out."""
        model_id, architecture, m, ternary = request.model_id, request.architecture, request.m, request.ternary
        with self._lock:
            if model_id in self.models:
                raise DuplicateModel(f"model {model_id!r} is already deployed")
            split = split_model(architecture, m, ternary)
            load_exact([split.host], host_state, "host part")
            slots = self._slots(split)
            msg = dataclasses.replace(request, slot_paths=[str(s.path) for part in slots for s in part],
                                      max_batch=self.config.max_batch)
            try:
                signed, deployed = self.enclave.call_member(msg, ModelDeployed)
            except CaltrainError:
                _unlink(slots)
                raise
            spec = split.spec
            info = ModelInfo(
                model_id=model_id,
                architecture=spec.name,
                m=m,
                ternary=ternary,
                owner=deployed.owner,
                source=f"job:{request.job_id}" if request.job_id else "external",
                front_digest=deployed.front_digest,
                input_shape=list(spec.input_shape),
                num_classes=spec.num_classes,
                request_size=request_size(spec.input_shape),
            )
            self.models[model_id] = ModelServer(self.enclave, info, split, slots, self.config)
        log.info("deployed %s: %s cut m=%d ternary=%s by %s", model_id, spec.name, m, ternary, info.owner)
        return signed, info

    def suspend(self, model_ids: list[str]) -> None:
        """Stop serving these models until `reopen`: their old slots mean nothing to a restarted enclave.
        Meanwhile their requests get `EnclaveUnavailable` (503, retry), not `UnknownModel`."""
        with self._lock:
            stale = [s for s in (self.models.pop(i, None) for i in model_ids) if s is not None]
            self.unavailable.update(model_ids)
        for server in stale:
            server.close()

    def reopen(self, info: ModelInfo, host_state: object) -> None:
        """Serve again, after a restart, a model deployed before: the enclave re-opens it from its sealed
        deployment registry through fresh slots."""
        split = split_model(info.architecture, info.m, info.ternary)
        load_exact([split.host], host_state, "host part")
        slots = self._slots(split)
        msg = ReopenDeployment(model_id=info.model_id, slot_paths=[str(s.path) for part in slots for s in part],
                               max_batch=self.config.max_batch)
        try:
            reopened = self.enclave.call(msg, ModelDeployed)
            if reopened.front_digest != info.front_digest:
                raise InferenceError(f"model {info.model_id} re-opened with other weights than it was deployed with")
        except CaltrainError:
            _unlink(slots)
            raise
        with self._lock:
            self.models[info.model_id] = ModelServer(self.enclave, info, split, slots, self.config)
            self.unavailable.discard(info.model_id)
        log.info("re-opened %s (%s, owner %s)", info.model_id, info.architecture, info.owner)

    def open_session(self, session_id: str, ciphertext: bytes) -> SessionOpened:
        """Hand a client's sealed session key to the enclave (one HPKE open, then AES-GCM per request)."""
        if len(ciphertext) != SESSION_SIZE:
            raise BadRequest(f"a session key ciphertext is {SESSION_SIZE} bytes, got {len(ciphertext)}")
        return self.enclave.call(OpenSession(session_id=session_id, ciphertext=ciphertext), SessionOpened)

    def get(self, model_id: str) -> ModelServer:
        try:
            return self.models[model_id]
        except KeyError:
            if model_id in self.unavailable:
                raise EnclaveUnavailable(f"model {model_id!r} is being re-opened after a restart; retry shortly") \
                    from None
            raise UnknownModel(f"no model {model_id!r} is deployed") from None

    def close(self) -> None:
        for server in self.models.values():
            server.close()
