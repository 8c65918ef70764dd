"""The wire schema: every message that crosses the enclave boundary, who may send it, and what it answers.

This module is the one table of the enclave's attack surface. Each request declares its sender (`HOST` for
data-plane steps whose authority comes from an earlier authorized call; `members(...)` for a call that must carry
a consortium member's signature) and its reply; `sealed` requests travel HPKE-encrypted to the enclave and are
answered encrypted to the member who signed them. The dispatcher (`caltrain.enclave.runtime.dispatch`) enforces
the declarations in one place; no handler checks who asks on its own.

A frame is `u32 header length | JSON header | u32 blob count | (u64 length | bytes)*`. The header holds
the message type, the schema version and every non-bytes field; `bytes` fields travel as blobs, never as
base64 in JSON. Decoding checks the type is listed here, the field set is exact and every value has its
declared type, so a handler only ever sees a well-formed message. Tensors do not travel here: they cross
through preallocated shared memory (`caltrain.enclave.shm`), and messages only name the slot.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import struct
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, dataclass_transform, get_type_hints

from caltrain.crypto.hashing import tagged_hash
from caltrain.enclave.consortium import Role
from caltrain.errors import EnclaveError

WIRE_VERSION = 2
MAX_FRAME_BYTES = 1 << 32


class WireError(EnclaveError):
    """A frame is malformed or a message does not match its schema."""


class Message:
    """Base of every boundary message; subclasses are frozen dataclasses registered by `request` or `reply`."""

    type_name: ClassVar[str]


@dataclass(frozen=True)
class Authorization:
    """A member's signature over a request's content, bound to the attested enclave keys and a single-use id
    (`caltrain.enclave.authority`). Travels as the `auth` field of every member-sent request."""

    member: str
    request_id: str  # hex, 16-64 bytes, chosen fresh by the member; the enclave accepts each once
    signature: str  # hex Ed25519 signature


@dataclass(frozen=True)
class Host:
    """The untrusted host may send it: a data-plane step whose authority was granted by an earlier call."""

    def describe(self) -> str:
        return "host"


@dataclass(frozen=True)
class Members:
    """A consortium member holding one of `roles` must sign it."""

    roles: frozenset[Role]

    def describe(self) -> str:
        return "member: " + " or ".join(sorted(r.value for r in self.roles))


@dataclass(frozen=True)
class Enveloped:
    """The envelope of a sealed request: whoever the sealed request inside declares (checked after opening)."""

    def describe(self) -> str:
        return "member (per the sealed request inside)"


Sender = Host | Members | Enveloped
HOST = Host()
ANY_MEMBER = Members(frozenset(Role))


def members(*roles: Role) -> Members:
    return Members(frozenset(roles))


@dataclass(frozen=True)
class Route:
    """One request's declaration: who may send it, what it answers, whether it travels sealed, and which fields
    the host fills in (shared-memory plumbing) and the member therefore does not sign."""

    request: type[Message]
    sender: Sender
    reply: type[Message]
    sealed: bool = False
    host_fields: tuple[str, ...] = ()

    @property
    def signed(self) -> bool:
        return isinstance(self.sender, Members)


M = TypeVar("M", bound=type[Message])
MsgT = TypeVar("MsgT", bound=Message)
MESSAGES: dict[str, type[Message]] = {}
ROUTES: dict[type[Message], Route] = {}
REPLIES: set[type[Message]] = set()


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def _message(cls: M) -> M:
    """Register a message class under its class name and make it a frozen dataclass."""
    dc = dataclass(frozen=True)(cls)
    dc.type_name = cls.__name__
    if dc.type_name in MESSAGES:
        raise TypeError(f"message {dc.type_name} registered twice")
    MESSAGES[dc.type_name] = dc
    return cls


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def reply(cls: M) -> M:
    """Declare a message the enclave sends (an answer, or a lifecycle frame)."""
    _message(cls)
    REPLIES.add(cls)
    return cls


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def request(
    *, sender: Sender, answer: type[Message], sealed: bool = False, host_fields: tuple[str, ...] = ()
) -> typing.Callable[[M], M]:
    """Declare a message the enclave receives: who may send it and what it answers."""

    def declare(cls: M) -> M:
        _message(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if isinstance(sender, Members) != ("auth" in names):
            raise TypeError(f"{cls.__name__}: a member-sent request has an `auth` field, a host-sent one has none")
        if sealed and not isinstance(sender, Members):
            raise TypeError(f"{cls.__name__}: only member-sent requests travel sealed")
        if not set(host_fields) <= names - {"auth"}:
            raise TypeError(f"{cls.__name__}: host fields {host_fields} are not all fields")
        ROUTES[cls] = Route(cls, sender, answer, sealed, host_fields)
        return cls

    return declare


# --- lifecycle -------------------------------------------------------------------------------------------


@reply
class Ready(Message):
    """First frame from a started enclave: what it is and the keys it generated inside."""

    platform: str
    measurement: str
    hpke_public_key: bytes
    signing_public_key: bytes
    simulated: bool


@reply
class Ok(Message):
    pass


@reply
class Failure(Message):
    """A call failed inside the enclave; `error` names a caltrain error class the proxy re-raises."""

    error: str
    detail: str


@request(sender=HOST, answer=Ok)
class Shutdown(Message):
    pass


# --- envelopes: member requests the host may not read, answers only the member can ------------------------


@reply
class SignedReply(Message):
    """The answer to a member's request, signed by the enclave and bound to that request's digest."""

    frame: bytes  # the encoded reply message
    request_digest: bytes
    signature: bytes


@reply
class SealedReply(Message):
    """A `SignedReply` HPKE-encrypted to the requesting member's consortium encryption key."""

    ciphertext: bytes


@request(sender=Enveloped(), answer=SealedReply)
class SealedRequest(Message):
    """A member request HPKE-encrypted to the enclave (`caltrain.enclave.authority.seal_request`); the
    dispatcher opens it and authorizes what is inside, whose own route must be `sealed`."""

    ciphertext: bytes


# --- attestation -----------------------------------------------------------------------------------------


@reply
class EvidenceReply(Message):
    platform: str
    quote: bytes
    supporting: dict[str, str]  # name -> base64


@request(sender=HOST, answer=EvidenceReply)
class GetEvidence(Message):
    nonce: bytes


# --- ingestion -------------------------------------------------------------------------------------------


@reply
class DatasetReceipt(Message):
    """An ingested dataset, as the enclave signs it back to its participant. The timings, taken inside the
    enclave, let benchmarks split an ingest call's cost."""

    dataset_id: str  # qualified: "participant/local id"
    participant: str
    record_count: int
    merkle_root: str
    policy_digest: str
    schema: dict[str, Any]
    open_seconds: float  # verifying and decrypting the container
    store_seconds: float  # persisting the ciphertext container (fsync) and the sealed index


@request(sender=members(Role.PARTICIPANT), answer=DatasetReceipt)
class IngestDataset(Message):
    """A participant's upload, exactly as received, with its signed data-use policy (canonical JSON)."""

    container: bytes
    wrapped_key: bytes
    policy: bytes
    auth: Authorization


@reply
class DatasetList(Message):
    datasets: list[dict[str, Any]] = field(default_factory=list)


@request(sender=HOST, answer=DatasetList)
class ListDatasets(Message):
    """What the host already sees in the containers' plaintext headers, plus each dataset's policy digest."""


# --- partitioned training (CalTrain) --------------------------------------------------------------------


@reply
class JobCreated(Message):
    """A job the enclave admitted: its id (enclave randomness) and exactly what was admitted."""

    job_id: str
    spec: dict[str, Any]
    architecture: str  # the model spec's canonical hash
    created_by: str
    full_enclave: bool


@request(sender=members(Role.OWNER), answer=JobCreated)
class CreateJob(Message):
    """Admit a training job over ingested datasets whose data-use policies all allow it. The seed and the job
    id come from enclave randomness; the spec must not name a seed."""

    spec: dict[str, Any]
    auth: Authorization


@reply
class TrainReady(Message):
    train_records: int
    eval_records: int
    steps_per_epoch: int
    total_steps: int
    next_step: int
    ir_shape: list[int]
    full_enclave: bool
    backnet: bytes  # the BackNet's initial weights (torch state_dict); empty in full-enclave mode
    back_dropout_seed: int  # the BackNet's dropout stream, derived one-way from the secret job seed


@request(sender=HOST, answer=TrainReady)
class TrainStart(Message):
    """Start (or resume from the newest sealed checkpoint) an admitted job that has not finished."""

    job_id: str
    ir_path: str
    grad_path: str
    label_path: str
    slot_capacity: int
    resume: bool


@reply
class ForwardOut(Message):
    batch: int
    layout: str  # of the IR in shared memory (caltrain.enclave.shm.LAYOUTS)


@request(sender=HOST, answer=ForwardOut)
class FrontForward(Message):
    """Run the FrontNet on batch `index` of `phase` ("train": global step; "eval": eval batch); IR to shm."""

    phase: str
    index: int


@reply
class BackwardOut(Message):
    checkpointed: bool
    next_batch: int  # size of the next step's batch now in shared memory; 0 when not asked to forward
    next_layout: str


@request(sender=HOST, answer=BackwardOut)
class FrontBackward(Message):
    """dL/dIR for train step `step` is in shared memory: backpropagate and update the FrontNet; with
    `forward_next`, also run the next step's forward (one hand-off per step instead of two)."""

    step: int
    forward_next: bool
    grad_layout: str


@reply
class StepsDone(Message):
    next_step: int
    checkpointed: bool


@request(sender=HOST, answer=StepsDone)
class TrainSteps(Message):
    """Full-enclave mode: run the next `steps` steps wholly inside (loss, labels, logits, optimizer never leave;
    the host learns only how long it took)."""

    job_id: str
    steps: int


@reply
class TrainResult(Message):
    """The finished job, with the enclave's signature over (job, FrontNet digest, BackNet digest, steps), which a
    model owner checks before signing a deployment of it."""

    job_id: str
    steps: int
    front_digest: str
    back_digest: str
    signature: bytes


@request(sender=HOST, answer=TrainResult)
class TrainEnd(Message):
    """Training is over: the host hands the enclave the final BackNet (public to the host anyway), so the
    enclave holds the whole model for fingerprints, forensic queries and deployment."""

    job_id: str
    backnet: bytes


@reply
class Exported(Message):
    """The trained FrontNet and the job's seed, for a member every dataset's policy lets receive them."""

    job_id: str
    front_state: bytes  # torch state_dict
    front_digest: str
    seed: int


@request(sender=ANY_MEMBER, answer=Exported, sealed=True)
class ExportModel(Message):
    job_id: str
    auth: Authorization


@reply
class JobState(Message):
    """Where an admitted job stands in the enclave's sealed registry, after any restart: what the host drove
    it to and was answered before (digests, the signed result, the signed linkage statement); never the seed."""

    job_id: str
    state: str  # admitted | trained | linked
    steps: int  # trained steps once trained, else 0
    front_digest: str
    back_digest: str
    signature: bytes  # the enclave's signature over the job result once trained (as in `TrainResult`), else empty
    statement: dict[str, Any]  # the signed linkage statement once linked, else empty


@request(sender=HOST, answer=JobState)
class GetJobState(Message):
    """After a restart: how far an admitted job got (train it, end it, link it, or nothing left to do)."""

    job_id: str


# --- scale-out: a job trained across attested worker enclaves -------------------------------------------


@reply
class ClusterOpened(Message):
    """A job opened for `world_size` worker enclaves; one fresh nonce (hex) per rank for its evidence."""

    job_id: str
    world_size: int
    micro_batch: int
    nonces: list[str]


@request(sender=HOST, answer=ClusterOpened)
class OpenCluster(Message):
    """To the job's first enclave: train an admitted job across `world_size` workers, `micro_batch` records per
    gradient piece. Draws (once per job) the key the workers' enclaves will share; a resumed job keeps both."""

    job_id: str
    world_size: int
    micro_batch: int


@reply
class PeerEvidence(Message):
    """An enclave's evidence binding its public keys (`keys`: HPKE || Ed25519) to a peer's nonce, and the nonce
    it wants the peer's evidence to answer in turn (empty when it asks for none)."""

    platform: str
    quote: bytes
    supporting: dict[str, str]  # name -> base64
    keys: bytes
    nonce: bytes


@request(sender=HOST, answer=PeerEvidence)
class JoinCluster(Message):
    """To a worker enclave: attest yourself to the first enclave (answering its `leader_nonce`) for `rank`."""

    job_id: str
    rank: int
    world_size: int
    leader_nonce: bytes


@reply
class WorkerGrant(Message):
    """The first enclave's evidence (answering the worker's nonce) and the job's grant sealed to that worker."""

    platform: str
    quote: bytes
    supporting: dict[str, str]
    keys: bytes
    grant: bytes


@request(sender=HOST, answer=WorkerGrant)
class AdmitWorker(Message):
    """To the first enclave: a worker's evidence for `rank`; granted the job only if it verifies."""

    job_id: str
    rank: int
    platform: str
    quote: bytes
    supporting: dict[str, str]
    keys: bytes
    nonce: bytes


@reply
class Joined(Message):
    job_id: str
    rank: int
    world_size: int
    micro_batch: int
    full_enclave: bool
    train_records: int
    checkpoints: list[int]  # the steps this enclave holds sealed checkpoints of


@request(sender=HOST, answer=Joined)
class AcceptGrant(Message):
    """To a worker enclave: the first enclave's evidence and the grant; accepted only from the enclave it attested."""

    job_id: str
    rank: int
    platform: str
    quote: bytes
    supporting: dict[str, str]
    keys: bytes
    grant: bytes


@reply
class ShardReady(Message):
    train_records: int
    eval_records: int
    steps_per_epoch: int
    total_steps: int
    next_step: int
    ir_shape: list[int]
    full_enclave: bool
    backnet: bytes  # the BackNet's initial weights; empty in full-enclave mode
    sum_size: int  # int64 elements the hosts all-reduce per step for the FrontNet
    back_dropout_seed: int  # the BackNet's dropout stream, derived one-way from the secret job seed


@request(sender=HOST, answer=ShardReady)
class ShardStart(Message):
    """Start a joined job in this worker, from scratch (`resume_step` 0, no checkpoint yet) or from one of its
    sealed checkpoints."""

    job_id: str
    ir_path: str
    grad_path: str
    label_path: str
    sum_path: str
    slot_capacity: int
    resume_step: int


@request(sender=HOST, answer=ForwardOut)
class ShardForward(Message):
    """FrontNet forward of micro-batch `micro` of global step `step`, one this worker owns; IR and labels to shm."""

    step: int
    micro: int


@request(sender=HOST, answer=Ok)
class ShardBackward(Message):
    """dL/dIR of micro-batch `micro` is in shared memory: backpropagate and add its fixed-point gradient."""

    step: int
    micro: int
    grad_layout: str


@reply
class Aggregate(Message):
    size: int  # int64 elements of the masked contribution now in the sum slot


@request(sender=HOST, answer=Aggregate)
class ShardAggregate(Message):
    """Every micro-batch this worker owns in `step` is done (full-enclave mode: run them now, inside): write the
    masked fixed-point contribution to the sum slot for the hosts' all-reduce."""

    step: int


@request(sender=HOST, answer=StepsDone)
class ShardApply(Message):
    """The hosts' all-reduced sum is in the sum slot: check it, unmask it and update the FrontNet."""

    step: int


@request(sender=HOST, answer=ForwardOut)
class ShardEval(Message):
    """FrontNet forward of eval batch `index` (datasets admitted for evaluation only); IR and labels to shm."""

    index: int


@reply
class ShardResult(Message):
    """A worker's signed result, and the trained FrontNet sealed under the job key for the first enclave."""

    job_id: str
    steps: int
    front_digest: str
    back_digest: str
    signature: bytes
    sealed_front: bytes


@request(sender=HOST, answer=ShardResult)
class ShardEnd(Message):
    job_id: str
    backnet: bytes


@request(sender=HOST, answer=TrainResult)
class FinishCluster(Message):
    """To the first enclave: the workers' trained FrontNet (sealed under the job key) and the final BackNet."""

    job_id: str
    backnet: bytes
    sealed_front: bytes


# --- accountability ------------------------------------------------------------------------------------


@reply
class LinkageBuilt(Message):
    statement: dict[str, Any]
    records: int
    seconds: float


@request(sender=HOST, answer=LinkageBuilt)
class BuildLinkage(Message):
    """Fingerprint every training instance of a finished job and commit the linkage log (signed, sealed);
    once per job: a log never gets a second root."""

    job_id: str


@reply
class ForensicReply(Message):
    report: dict[str, Any]


@request(sender=members(Role.AUDITOR), answer=ForensicReply, sealed=True)
class TraceQuery(Message):
    """Forensic query: `inputs` is an .npz with `x` (and optional `predicted`)."""

    job_id: str
    inputs: bytes
    k: int
    method: str
    auth: Authorization


@request(sender=members(Role.AUDITOR), answer=ForensicReply, sealed=True)
class SuspicionQuery(Message):
    """Dataset-level detection: every training instance's suspicion score (no misprediction needed)."""

    job_id: str
    method: str
    auth: Authorization


# --- scale-out forensics: a job's linkage log sharded over its workers ------------------------------------


@reply
class ShardLinked(Message):
    shard: dict[str, Any]  # the worker-signed shard statement (caltrain.accountability.sharded)


@request(sender=HOST, answer=ShardLinked)
class ShardLinkage(Message):
    """To a worker of a finished job: fingerprint its share of the training records and commit it."""

    job_id: str


@request(sender=HOST, answer=LinkageBuilt)
class MergeLinkage(Message):
    """To the first enclave: every worker's signed shard; it signs the one Merkle root over the whole job."""

    job_id: str
    shards: list[dict[str, Any]]


@reply
class TracePlan(Message):
    job_id: str
    plan: bytes  # the query's fingerprints and labels, sealed under the job key for the workers


@request(sender=HOST, answer=TracePlan)
class FanOutTrace(Message):
    """To the first enclave: an auditor's sealed `TraceQuery` of a sharded job, as received. The enclave checks
    the auditor's signature and the tracer grants, and seals what the workers need to search their shards."""

    ciphertext: bytes


@reply
class ShardHits(Message):
    job_id: str
    hits: bytes  # the worker-signed partial answer, sealed under the job key


@request(sender=HOST, answer=ShardHits)
class TraceShard(Message):
    job_id: str
    plan: bytes


@request(sender=HOST, answer=Ok)
class CollectHits(Message):
    """To the first enclave: one worker's sealed, signed partial answer to a planned trace."""

    job_id: str
    hits: bytes


# --- partitioned inference (DeepEnclave) ----------------------------------------------------------------


@reply
class ModelDeployed(Message):
    model_id: str
    architecture: str  # the spec's name
    architecture_hash: str
    m: int
    ternary: bool
    owner: str
    front_digest: str


@request(sender=members(Role.OWNER), answer=ModelDeployed, host_fields=("slot_paths", "max_batch"))
class DeployModel(Message):
    """Deploy a model for inference: a finished job's FrontNet (`job_id`, bound to its enclave-signed
    `front_digest`), or an owner's own weights, HPKE-sealed (`sealed_weights`).

    `slot_paths` are the host's shared slots, `3 * pipeline depth` of them: request ciphertexts (bytes), then
    IRs, then the host's outputs.
    """

    model_id: str
    job_id: str
    front_digest: str
    architecture: str | dict[str, Any]  # a zoo name or a model spec (caltrain.models.resolve_model)
    m: int
    ternary: bool
    sealed_weights: bytes
    slot_paths: list[str]
    max_batch: int
    auth: Authorization


@request(sender=HOST, answer=ModelDeployed)
class ReopenDeployment(Message):
    """After an enclave restart: serve again a deployment its owner authorized earlier (kept sealed and
    counter-pinned inside), through the host's fresh shared slots. It can only re-open what was deployed: the
    model, its weights and its owner come from the enclave's sealed deployment registry, never from this call."""

    model_id: str
    slot_paths: list[str]
    max_batch: int


@reply
class SessionOpened(Message):
    session_id: str
    expires_in_s: float
    max_requests: int


@request(sender=HOST, answer=SessionOpened)
class OpenSession(Message):
    """A client's session key, HPKE-sealed to the enclave key with `info` binding `session_id`. Inference users
    are anonymous: a deployment (authorized by its owner) is open to any client that attests the enclave."""

    session_id: str
    ciphertext: bytes


@reply
class FrontDone(Message):
    accepted: int
    rejected: dict[str, list[str]]  # batch position -> [error class, detail]
    timings: dict[str, float]
    layout: str  # of the IRs in shared memory (caltrain.enclave.shm.LAYOUTS)


@request(sender=HOST, answer=FrontDone)
class InferFront(Message):
    """Open a batch of request ciphertexts (each `request_size` bytes, back to back, in request slot `slot`),
    run the FrontNet on the accepted ones and write their IRs, in order, to IR slot `slot`. Request `i` is
    counter `counters[i]` of session `session_ids[i]`, asking for `top_ks[i]` answers."""

    model_id: str
    slot: int
    session_ids: list[str]
    counters: list[int]
    top_ks: list[int]


@reply
class Answers(Message):
    ciphertexts: bytes
    lengths: list[int]
    timings: dict[str, float]


@request(sender=HOST, answer=Answers)
class InferFinish(Message):
    """The host's output for the `count` accepted requests of slot `slot` is in its output slot: finish
    (ternary: the last layer), softmax, top-k, and encrypt each answer to its requester."""

    model_id: str
    slot: int
    count: int


# --- codec -----------------------------------------------------------------------------------------------

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _check(value: Any, hint: Any, where: str) -> None:
    origin = typing.get_origin(hint)
    if hint is Any:
        return
    if hint is Authorization:
        names = [f.name for f in dataclasses.fields(Authorization)]
        if not (isinstance(value, dict) and sorted(value) == sorted(names)):
            raise WireError(f"{where}: expected an authorization {{{', '.join(names)}}}")
        for name in names:
            if not isinstance(value[name], str):
                raise WireError(f"{where}.{name}: expected str")
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
        elif isinstance(value, Authorization):
            header[name] = dataclasses.asdict(value)
        else:
            header[name] = value
    try:
        head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:  # NaN, infinity or a non-JSON value: never put on the wire
        raise WireError(f"{msg.type_name} cannot be encoded: {exc}") from None
    parts = [_U32.pack(len(head)), head, _U32.pack(len(blobs))]
    for blob in blobs:
        parts += [_U64.pack(len(blob)), blob]
    return b"".join(parts)


def _reject_constant(name: str) -> None:
    raise json.JSONDecodeError(f"{name} is not allowed", name, 0)


def decode(frame: bytes | memoryview) -> Message:
    """Parse and validate one frame; anything off raises `WireError` naming what was wrong."""
    view = memoryview(frame)
    try:
        (head_len,) = _U32.unpack_from(view, 0)
        header = json.loads(bytes(view[4 : 4 + head_len]), parse_constant=_reject_constant)
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
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
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
            if hint is Authorization:
                fields[name] = Authorization(**value)
    if len(used) != len(blobs):
        raise WireError(f"{cls.type_name}: {len(blobs) - len(used)} unreferenced blobs")
    return cls(**fields)


def content_digest(msg: Message) -> bytes:
    """What a member signs of a request: its type and every field except `auth` and the route's host fields.

    Bytes fields enter as they are, others as canonical JSON, each after its name, so no two requests share a
    digest; a member and the enclave compute it from the same message and must agree bit for bit.
    """
    route = ROUTES[type(msg)]
    parts = [msg.type_name.encode()]
    for name in _hints(type(msg)):
        if name == "auth" or name in route.host_fields:
            continue
        value = getattr(msg, name)
        parts += [name.encode(), bytes(value) if isinstance(value, (bytes, bytearray)) else _canonical_json(value)]
    return tagged_hash("caltrain/request-content/v1", *parts)


def to_json(msg: Message) -> dict[str, Any]:
    """A message as a JSON object (bytes fields base64): how member requests and signed answers travel over HTTP."""
    out: dict[str, Any] = {}
    for name in _hints(type(msg)):
        value = getattr(msg, name)
        if isinstance(value, (bytes, bytearray)):
            out[name] = base64.b64encode(value).decode()
        elif isinstance(value, Authorization):
            out[name] = dataclasses.asdict(value)
        else:
            out[name] = value
    return out


def from_json(cls: type[MsgT], data: Any) -> MsgT:
    """Parse and validate `to_json` output as a `cls`; anything off raises `WireError` naming what was wrong."""
    if not isinstance(data, dict):
        raise WireError(f"{cls.__name__}: expected a JSON object")
    hints = _hints(cls)
    if set(data) != set(hints):
        raise WireError(f"{cls.__name__}: fields {sorted(data)} != schema {sorted(hints)}")
    fields: dict[str, Any] = {}
    for name, hint in hints.items():
        value = data[name]
        if hint is bytes:
            if not isinstance(value, str):
                raise WireError(f"{cls.__name__}.{name}: expected base64 text")
            try:
                fields[name] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise WireError(f"{cls.__name__}.{name}: not valid base64") from None
            continue
        _check(value, hint, f"{cls.__name__}.{name}")
        fields[name] = Authorization(**value) if hint is Authorization else value
    return cls(**fields)
