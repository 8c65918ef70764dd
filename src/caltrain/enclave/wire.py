"""The wire schema: every message that crosses the enclave boundary, versioned and validated on receipt.

A frame is `u32 header length | JSON header | u32 blob count | (u64 length | bytes)*`. The header holds
the message type, the schema version and every non-bytes field; `bytes` fields travel as blobs, never as
base64 in JSON. Decoding checks the type is listed here, the field set is exact and every value has its
declared type, so a handler only ever sees a well-formed message. Tensors do not travel here: they cross
through preallocated shared memory (`caltrain.enclave.shm`), and messages only name the slot.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, dataclass_transform, get_type_hints

from caltrain.errors import EnclaveError

WIRE_VERSION = 1
MAX_FRAME_BYTES = 1 << 32


class WireError(EnclaveError):
    """A frame is malformed or a message does not match its schema."""


class Message:
    """Base of every boundary message; subclasses are frozen dataclasses registered by `message`."""

    type_name: ClassVar[str]


M = TypeVar("M", bound=type[Message])
MESSAGES: dict[str, type[Message]] = {}


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def message(cls: M) -> M:
    """Register a message class under its class name and make it a frozen dataclass."""
    dc = dataclass(frozen=True)(cls)
    dc.type_name = cls.__name__
    if dc.type_name in MESSAGES:
        raise TypeError(f"message {dc.type_name} registered twice")
    MESSAGES[dc.type_name] = dc
    return cls


# --- lifecycle -------------------------------------------------------------------------------------------


@message
class Ready(Message):
    """First frame from a started enclave: what it is and the keys it generated inside."""

    platform: str
    measurement: str
    hpke_public_key: bytes
    signing_public_key: bytes
    simulated: bool


@message
class Shutdown(Message):
    pass


@message
class Ok(Message):
    pass


@message
class Failure(Message):
    """A call failed inside the enclave; `error` names a caltrain error class the proxy re-raises."""

    error: str
    detail: str


# --- attestation -----------------------------------------------------------------------------------------


@message
class GetEvidence(Message):
    nonce: bytes


@message
class EvidenceReply(Message):
    platform: str
    quote: bytes
    supporting: dict[str, str]  # name -> base64


# --- ingestion -------------------------------------------------------------------------------------------


@message
class IngestDataset(Message):
    """A participant's upload, exactly as received: the enclave checks every part itself."""

    participant: str
    container: bytes
    wrapped_key: bytes
    signature: bytes


@message
class DatasetInfo(Message):
    """An ingested dataset; the timings, taken inside the enclave, let benchmarks split an ingest call's cost."""

    dataset_id: str
    participant: str
    record_count: int
    merkle_root: str
    schema: dict[str, Any]
    open_seconds: float  # verifying and decrypting the container
    store_seconds: float  # persisting the ciphertext container (fsync) and the sealed index


@message
class ListDatasets(Message):
    pass


@message
class DatasetList(Message):
    datasets: list[dict[str, Any]] = field(default_factory=list)


# --- partitioned training (CalTrain) --------------------------------------------------------------------


@message
class TrainStart(Message):
    """Start (or resume from the newest sealed checkpoint) a job over ingested datasets."""

    job_id: str
    config: dict[str, Any]
    ir_path: str
    grad_path: str
    label_path: str
    slot_capacity: int
    resume: bool


@message
class TrainReady(Message):
    train_records: int
    eval_records: int
    steps_per_epoch: int
    total_steps: int
    next_step: int
    ir_shape: list[int]


@message
class FrontForward(Message):
    """Run the FrontNet on batch `index` of `phase` ("train": global step; "eval": eval batch); IR to shm."""

    phase: str
    index: int


@message
class ForwardOut(Message):
    batch: int
    layout: str  # of the IR in shared memory (caltrain.enclave.shm.LAYOUTS)


@message
class FrontBackward(Message):
    """dL/dIR for train step `step` is in shared memory: backpropagate and update the FrontNet; with
    `forward_next`, also run the next step's forward (one hand-off per step instead of two)."""

    step: int
    forward_next: bool
    grad_layout: str


@message
class BackwardOut(Message):
    checkpointed: bool
    next_batch: int  # size of the next step's batch now in shared memory; 0 when not asked to forward
    next_layout: str


@message
class TrainEnd(Message):
    """Training is over: the host hands the enclave the final BackNet (public to the host anyway), so the
    enclave holds the whole model for fingerprints, forensic queries and deployment."""

    job_id: str
    backnet: bytes


@message
class TrainResult(Message):
    job_id: str
    steps: int
    front_digest: str


@message
class ExportFrontNet(Message):
    """Release the trained FrontNet encrypted (HPKE) to a recipient key; the enclave never sends it in clear."""

    job_id: str
    recipient_key: bytes


@message
class Exported(Message):
    ciphertext: bytes
    front_digest: str


# --- accountability ------------------------------------------------------------------------------------


@message
class BuildLinkage(Message):
    """Fingerprint every training instance of a finished job and commit the linkage log (signed, sealed)."""

    job_id: str


@message
class LinkageBuilt(Message):
    statement: dict[str, Any]
    records: int
    seconds: float


@message
class TraceQuery(Message):
    """Forensic query: `ciphertext` is HPKE to the enclave key of an .npz with `x` (and optional `predicted`)."""

    job_id: str
    ciphertext: bytes
    k: int
    method: str


@message
class SuspicionQuery(Message):
    """Dataset-level detection: every training instance's suspicion score (no misprediction needed)."""

    job_id: str
    method: str


@message
class ForensicReply(Message):
    report: dict[str, Any]


# --- partitioned inference (DeepEnclave) ----------------------------------------------------------------


@message
class DeployModel(Message):
    """Deploy a model for inference: a finished job's FrontNet (`job_id`), or an owner's, HPKE-sealed.

    The owner signs `deploy_digest`, so the host cannot deploy a FrontNet of its own under a model id
    (an identity FrontNet would copy inputs into the IR). `slot_paths` are the shared slots,
    `3 * pipeline depth` of them: request ciphertexts (bytes), then IRs, then the host's outputs.
    """

    model_id: str
    job_id: str
    architecture: str
    m: int
    ternary: bool
    sealed_weights: bytes
    owner: str
    signature: bytes
    slot_paths: list[str]
    max_batch: int


@message
class ModelDeployed(Message):
    model_id: str
    architecture: str
    m: int
    ternary: bool
    owner: str
    front_digest: str


@message
class OpenSession(Message):
    """A client's session key, HPKE-sealed to the enclave key with `info` binding `session_id`."""

    session_id: str
    ciphertext: bytes


@message
class SessionOpened(Message):
    session_id: str
    expires_in_s: float
    max_requests: int


@message
class InferFront(Message):
    """Open a batch of request ciphertexts (each `request_size` bytes, back to back, in request slot `slot`),
    run the FrontNet on the accepted ones and write their IRs, in order, to IR slot `slot`. Request `i` is
    counter `counters[i]` of session `session_ids[i]`, asking for `top_ks[i]` answers."""

    model_id: str
    slot: int
    session_ids: list[str]
    counters: list[int]
    top_ks: list[int]


@message
class FrontDone(Message):
    accepted: int
    rejected: dict[str, list[str]]  # batch position -> [error class, detail]
    timings: dict[str, float]
    layout: str  # of the IRs in shared memory (caltrain.enclave.shm.LAYOUTS)


@message
class InferFinish(Message):
    """The host's output for the `count` accepted requests of slot `slot` is in its output slot: finish
    (ternary: the last layer), softmax, top-k, and encrypt each answer to its requester."""

    model_id: str
    slot: int
    count: int


@message
class Answers(Message):
    ciphertexts: bytes
    lengths: list[int]
    timings: dict[str, float]


# --- codec -----------------------------------------------------------------------------------------------

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _check(value: Any, hint: Any, where: str) -> None:
    origin = typing.get_origin(hint)
    if hint is Any:
        return
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                _check(value, option, where)
                return
            except WireError:
                continue
        raise WireError(f"{where}: {value!r} matches none of {hint}")
    if hint is type(None):
        if value is not None:
            raise WireError(f"{where}: expected null")
        return
    if origin is list:
        if not isinstance(value, list):
            raise WireError(f"{where}: expected a list")
        (item,) = typing.get_args(hint)
        if item in (str, int) and all(type(v) is item for v in value):  # the common case, without recursion
            return
        for i, v in enumerate(value):
            _check(v, item, f"{where}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise WireError(f"{where}: expected an object")
        _, val = typing.get_args(hint)
        for k, v in value.items():
            if not isinstance(k, str):
                raise WireError(f"{where}: keys must be strings")
            _check(v, val, f"{where}.{k}")
        return
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WireError(f"{where}: expected a number")
        return
    if hint is int and isinstance(value, bool):
        raise WireError(f"{where}: expected an integer, got a boolean")
    if not isinstance(value, hint):
        raise WireError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")


_HINTS: dict[str, dict[str, Any]] = {}


def _hints(cls: type[Message]) -> dict[str, Any]:
    """Field types, resolved once per class: `get_type_hints` evaluates every annotation string on each call
    (it was ~1 ms of every inference call's encode and decode)."""
    if cls.type_name not in _HINTS:
        hints = get_type_hints(cls)
        _HINTS[cls.type_name] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return _HINTS[cls.type_name]


def encode(msg: Message) -> bytes:
    header: dict[str, Any] = {"v": WIRE_VERSION, "type": msg.type_name}
    blobs: list[bytes] = []
    for name in _hints(type(msg)):
        value = getattr(msg, name)
        if isinstance(value, (bytes, bytearray, memoryview)):
            header[name] = {"$blob": len(blobs)}
            blobs.append(bytes(value))
        else:
            header[name] = value
    head = json.dumps(header, separators=(",", ":")).encode()
    parts = [_U32.pack(len(head)), head, _U32.pack(len(blobs))]
    for blob in blobs:
        parts += [_U64.pack(len(blob)), blob]
    return b"".join(parts)


def decode(frame: bytes | memoryview) -> Message:
    """Parse and validate one frame; anything off raises `WireError` naming what was wrong."""
    view = memoryview(frame)
    try:
        (head_len,) = _U32.unpack_from(view, 0)
        header = json.loads(bytes(view[4 : 4 + head_len]))
        pos = 4 + head_len
        (count,) = _U32.unpack_from(view, pos)
        pos += 4
        blobs = []
        for _ in range(count):
            (n,) = _U64.unpack_from(view, pos)
            pos += 8
            if pos + n > len(view):
                raise WireError("blob runs past the end of the frame")
            blobs.append(bytes(view[pos : pos + n]))
            pos += n
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WireError(f"malformed frame: {exc}") from None
    if pos != len(view):
        raise WireError(f"{len(view) - pos} trailing bytes after the frame")
    if not isinstance(header, dict) or header.get("v") != WIRE_VERSION:
        raise WireError(f"unsupported wire version {header.get('v') if isinstance(header, dict) else None!r}")
    cls = MESSAGES.get(str(header.get("type")))
    if cls is None:
        raise WireError(f"unknown message type {header.get('type')!r}")
    hints = _hints(cls)
    fields = {k: v for k, v in header.items() if k not in ("v", "type")}
    if set(fields) != set(hints):
        raise WireError(f"{cls.type_name}: fields {sorted(fields)} != schema {sorted(hints)}")
    used: set[int] = set()
    for name, hint in hints.items():
        value = fields[name]
        if hint is bytes:
            if not (isinstance(value, dict) and set(value) == {"$blob"} and isinstance(value["$blob"], int)):
                raise WireError(f"{cls.type_name}.{name}: expected a blob reference")
            index = value["$blob"]
            if not 0 <= index < len(blobs) or index in used:
                raise WireError(f"{cls.type_name}.{name}: bad blob index {index}")
            used.add(index)
            fields[name] = blobs[index]
        else:
            _check(value, hint, f"{cls.type_name}.{name}")
    if len(used) != len(blobs):
        raise WireError(f"{cls.type_name}: {len(blobs) - len(used)} unreferenced blobs")
    return cls(**fields)
