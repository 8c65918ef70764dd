"""Forensics at scale: a job's linkage log sharded over its workers, one Merkle root over the whole job, and
traces that fan out to every shard and merge to the answer one enclave gives.

The records keep their one-enclave positions (the job's datasets in order, each dataset's records in order) and
are cut into aligned blocks of 2^b records (b from the record count only, never from the number of workers);
worker r commits a contiguous run of blocks (`shard_range`), fingerprinting a block at a time. In an RFC 6962
tree built level by level, the root of an aligned block is the tree's node at height b, so the first enclave
computes the whole job's root from the workers' block roots (`MerkleTree.over_subtrees`) and signs the same
statement a one-enclave log would carry. A record's proof is its path inside its block followed by the block's
path among the block roots: participants check it against that one root exactly as before.

A trace fans out: the first enclave checks the auditor's signature and the tracer grants, computes the queries'
fingerprints and seals them under the job key for the workers (`FanOutTrace`); each worker answers its shard
with its best k records per query, exactly scored (float64 inner products of the committed float32
fingerprints, so a score does not depend on which shard computed it), with their records and in-block paths,
signed by the worker and sealed under the job key (`TraceShard`); the first enclave checks every signature
(`CollectHits`), merges by (score, position), completes and verifies every proof against the signed root, and
answers the auditor's `TraceQuery` itself. The method is the paper's embedding kNN (`caltrain-knn`): methods that
pool over the whole training set do not shard.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from caltrain.accountability.attribution import Attribution, name_contributors
from caltrain.accountability.enclave_side import (
    QueryRejected,
    _provenance,
    check_k,
    query_range,
    read_query,
    trace_ledger,
)
from caltrain.accountability.errors import AccountabilityError, LinkageProofInvalid, LinkageTampered, ShardInvalid
from caltrain.accountability.fingerprints import compute_features, model_hash
from caltrain.accountability.linkage import (
    LinkageProof,
    LinkageRecord,
    LogStatement,
    PublicRecord,
    SignedStatement,
    verify_linkage_proof,
)
from caltrain.accountability.search import FingerprintIndex
from caltrain.accountability.tracing import NamedContributor, QueryAnswer, TracedRecord, TraceReport
from caltrain.crypto import aead
from caltrain.crypto.errors import BadSignature, CryptoError, InvalidKey, ProofError
from caltrain.crypto.hashing import tagged_hash
from caltrain.crypto.merkle import InclusionProof, MerkleTree
from caltrain.crypto.signing import verify_signature
from caltrain.enclave.authority import open_sealed_request, request_digest, verify_authorization
from caltrain.enclave.consent import check_grant
from caltrain.enclave.consortium import Member
from caltrain.enclave.runtime import EnclaveContext, ecall
from caltrain.enclave.wire import (
    ROUTES,
    CollectHits,
    FanOutTrace,
    ForensicReply,
    LinkageBuilt,
    MergeLinkage,
    Ok,
    SealedRequest,
    ShardHits,
    ShardLinkage,
    ShardLinked,
    TracePlan,
    TraceQuery,
    TraceShard,
    WireError,
)
from caltrain.errors import AuthError, Unauthenticated
from caltrain.training.enclave_distributed import derive_key, plans, session, shard
from caltrain.training.enclave_side import finished_job, jobs, policies

METHOD = "caltrain-knn"
MAX_BLOCK_BITS = 10  # blocks of at most 1024 records: the one-enclave fingerprint batch, so the same bytes
LOGS = "sharded-logs"  # worker: its committed shard, per job
TRACES = "sharded-traces"  # first enclave: planned traces awaiting their shards' answers
_SHARD_TAG = "caltrain/linkage-shard/v1"
_HITS_TAG = "caltrain/trace-shard/v1"




def block_bits(records: int) -> int:
    """Blocks of 2^b records, at least 64 of them when the job is small: depends on the record count only."""
    return max(0, min(MAX_BLOCK_BITS, int(math.log2(max(1, records // 64)))))


def shard_range(records: int, rank: int, world: int) -> tuple[int, int]:
    """The records [start, end) worker `rank` of `world` commits: a contiguous run of whole blocks."""
    size = 1 << block_bits(records)
    blocks = -(-records // size)
    per_worker = -(-blocks // world)
    return min(records, rank * per_worker * size), min(records, (rank + 1) * per_worker * size)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _check_signed(doc: Any, tag: str, signing_key: bytes, what: str) -> dict[str, Any]:
    """The body of `{"body": ..., "signature": hex}` signed under `tag` by `signing_key`; `ShardInvalid` if not."""
    try:
        body, signature = doc["body"], bytes.fromhex(doc["signature"])
        verify_signature(signing_key, tagged_hash(tag, _canonical(body)), signature, what=what)
    except (KeyError, TypeError, ValueError, BadSignature, InvalidKey) as exc:
        raise ShardInvalid(f"{what} is not signed by the worker the first enclave admitted: {exc}") from None
    if not isinstance(body, dict):
        raise ShardInvalid(f"{what} must hold an object")
    return body


def _sign(ctx: EnclaveContext, tag: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"body": body, "signature": ctx.identity.sign(tagged_hash(tag, _canonical(body))).hex()}


# --- a worker's shard ------------------------------------------------------------------------------------


@dataclass
class ShardLog:
    """A worker's committed records (positions as in the whole job's log) with their block trees and index."""

    start: int
    bits: int
    records: list[LinkageRecord]
    blocks: list[MerkleTree]
    fingerprints: np.ndarray  # the records' fingerprints, one row each
    index: FingerprintIndex | None

    def path(self, position: int) -> tuple[bytes, ...]:
        """The in-block part of `position`'s audit path."""
        offset = position - self.start
        return self.blocks[offset >> self.bits].proof(offset & ((1 << self.bits) - 1)).path

    def search(self, query: np.ndarray, label: int, k: int) -> list[tuple[float, int]]:
        """The k best (score, position) among this shard's records with `label`."""
        if self.index is None:
            return []
        return [(score, self.start + p) for score, p in best_k(self.index, self.fingerprints, query, label, k)]


def best_k(index: FingerprintIndex, fingerprints: np.ndarray, query: np.ndarray, label: int,
           k: int) -> list[tuple[float, int]]:
    """The k best (score, row) among `fingerprints` rows with `label`: exact float64 inner products (so a score
    does not depend on which shard computed it), ties by row; faiss narrows the candidates and is asked for more
    until no row outside them can still rank."""
    if label not in index.labels:
        return []
    q = np.ascontiguousarray(query, dtype=np.float32)
    slack = 2.0 * index.dim * 2.0**-23  # float32 error bound of a unit inner product
    m = k + 32
    while True:
        dist, pos = index.search(q[None, :], m, label)
        found = pos[0][pos[0] >= 0]
        scores = (fingerprints[found].astype(np.float64) * q.astype(np.float64)).sum(axis=1)
        best = sorted(zip(scores.tolist(), found.tolist(), strict=True), key=lambda sp: (-sp[0], sp[1]))[:k]
        if len(found) < m or (len(best) == k and 1.0 - float(dist[0][m - 1]) + slack < best[-1][0]):
            return best
        m *= 4


def shard_log(ctx: EnclaveContext, job_id: str) -> ShardLog:
    found = ctx.extensions.get(LOGS, {}).get(job_id)
    if not isinstance(found, ShardLog):
        raise AccountabilityError(f"this worker holds no committed shard of job {job_id!r}")
    return found


@ecall(ShardLinkage)
def shard_linkage(ctx: EnclaveContext, req: ShardLinkage) -> ShardLinked:
    """Fingerprint this worker's blocks with the final model and commit them; sign the block roots."""
    joined = shard(ctx, req.job_id)
    if not joined.finished:
        raise AccountabilityError(f"job {req.job_id} has not finished training in this worker")
    job = joined.running()
    record_ids, contributors, hashes, dataset_ids, indexes = _provenance(job)
    n = len(record_ids)
    bits, (start, end) = block_bits(n), shard_range(n, joined.rank, joined.world)
    size = 1 << bits
    records: list[LinkageRecord] = []
    blocks: list[MerkleTree] = []
    for first in range(start, end, size):
        last = min(first + size, end)
        fps = compute_features(job.model, job.x[first:last], batch_size=size).fingerprints
        block = [
            LinkageRecord(i, record_ids[i], contributors[i], int(job.y[i]), hashes[i], dataset_ids[i],
                          int(indexes[i]), fps[i - first])
            for i in range(first, last)
        ]
        records += block
        blocks.append(MerkleTree([r.leaf() for r in block]))
    fingerprints = np.stack([r.fingerprint for r in records]) if records else np.zeros((0, 1), np.float32)
    index = FingerprintIndex(fingerprints, np.array([r.label for r in records])) if records else None
    ctx.extensions.setdefault(LOGS, {})[req.job_id] = ShardLog(start, bits, records, blocks, fingerprints, index)
    body = {
        "job_id": req.job_id, "rank": joined.rank, "world": joined.world, "start": start, "end": end,
        "block_bits": bits, "nodes": [b.root.hex() for b in blocks], "model_hash": model_hash(job.model).hex(),
    }
    return ShardLinked(shard=_sign(ctx, _SHARD_TAG, body))


# --- the first enclave: one root over the whole job ------------------------------------------------------


def holds_log(ctx: EnclaveContext, job_id: str) -> bool:
    """Whether this (first) enclave signed a sharded log for `job_id`."""
    found = plans(ctx).entries.get(job_id)
    return found is not None and bool(found.log)


@ecall(MergeLinkage)
def merge_linkage(ctx: EnclaveContext, req: MergeLinkage) -> LinkageBuilt:
    """Check every worker's signed shard against the job, compute the root over all records and sign it, once
    per job; a merge after a worker rejoined must reproduce exactly the signed roots."""
    started = time.perf_counter()
    plan, admitted = plans(ctx).get(req.job_id), session(ctx, req.job_id)
    world = admitted.world
    entry, job = jobs(ctx).get(req.job_id), finished_job(ctx, req.job_id)
    linked = bool(plan.log)
    if entry.state != ("linked" if linked else "trained"):
        raise AccountabilityError(f"job {req.job_id} has its linkage log already ({entry.state}); a log is built once")
    n, expected_hash = len(job.y), model_hash(job.model).hex()
    if len(req.shards) != world:
        raise ShardInvalid(f"job {req.job_id} has {world} shards, {len(req.shards)} were handed over")
    nodes: list[str] = []
    for rank, doc in enumerate(req.shards):
        if rank not in admitted.workers:
            raise ShardInvalid(f"rank {rank} was not admitted by this enclave instance")
        body = _check_signed(doc, _SHARD_TAG, admitted.workers[rank].signing, f"shard {rank}")
        start, end = shard_range(n, rank, world)
        size = 1 << block_bits(n)
        want = {"job_id": req.job_id, "rank": rank, "world": world, "start": start, "end": end,
                "block_bits": block_bits(n), "model_hash": expected_hash}
        if {k: body.get(k) for k in want} != want or len(body.get("nodes", [])) != -(-(end - start) // size):
            raise ShardInvalid(f"shard {rank} does not cover its records of job {req.job_id} with its final model")
        nodes += body["nodes"]
    if linked:
        if nodes != plan.log["nodes"]:
            raise ShardInvalid(f"the shards of job {req.job_id} no longer hash to its signed root")
        return LinkageBuilt(statement=plan.log["statement"], records=n, seconds=time.perf_counter() - started)
    root = MerkleTree.over_subtrees([bytes.fromhex(h) for h in nodes]).root
    statement = LogStatement(os.urandom(32), req.job_id, n, root, model_hash(job.model), bytes.fromhex(ctx.measurement))
    signed = SignedStatement.sign(statement, ctx.identity)
    plan.log = {"statement": signed.to_dict(), "nodes": nodes}
    plans(ctx).put(plan)
    entry.state, entry.log_id = "linked", statement.log_id.hex()
    jobs(ctx).put(entry)
    return LinkageBuilt(statement=signed.to_dict(), records=n, seconds=time.perf_counter() - started)


# --- traces that fan out ---------------------------------------------------------------------------------


@dataclass
class PendingTrace:
    """A planned trace: the auditor's request it answers, the queries' classes, and the shards' answers so far."""

    job_id: str
    digest: bytes
    predicted: list[int]
    k: int
    hits: dict[int, list[list[dict[str, Any]]]] = field(default_factory=dict)


def _trace_aad(job_id: str, what: str) -> bytes:
    return tagged_hash("caltrain/sharded-trace/v1", job_id.encode(), what.encode())


def _pending(ctx: EnclaveContext) -> dict[str, PendingTrace]:
    found: dict[str, PendingTrace] = ctx.extensions.setdefault(TRACES, {})
    return found


def _authorized_query(ctx: EnclaveContext, ciphertext: bytes) -> tuple[TraceQuery, Member]:
    """The auditor's sealed `TraceQuery`, its signature and role checked (its single-use id is spent only when
    the query itself is answered)."""
    try:
        inner = open_sealed_request(ctx.hpke, SealedRequest(ciphertext=ciphertext))
    except (CryptoError, WireError) as exc:
        raise Unauthenticated(f"sealed request does not open for this enclave: {exc}") from None
    if not isinstance(inner, TraceQuery):
        raise AuthError(f"only a TraceQuery fans out, not {inner.type_name}")
    return inner, verify_authorization(inner, ROUTES[TraceQuery], ctx.config.consortium, ctx.public_keys)


@ecall(FanOutTrace)
def fan_out(ctx: EnclaveContext, req: FanOutTrace) -> TracePlan:
    """Plan an auditor's trace of a sharded job: the queries' fingerprints and classes, sealed for the workers."""
    query, member = _authorized_query(ctx, req.ciphertext)
    if not holds_log(ctx, query.job_id):
        raise AccountabilityError(f"job {query.job_id!r} has no sharded linkage log in this enclave")
    job = finished_job(ctx, query.job_id)
    check_grant(policies(ctx, job.config.datasets).items(), "tracers", member)
    if query.method != METHOD:
        raise QueryRejected(f"a sharded log answers with {METHOD!r}, not {query.method!r}")
    check_k(query.k)
    num_classes = int(job.model(job.x[:1]).shape[1])
    x, predicted = read_query(query, tuple(job.x.shape[1:]), num_classes, query_range(ctx))
    features = compute_features(job.model, x)
    classes = features.predictions if predicted is None else predicted
    plan_id = os.urandom(16).hex()
    _pending(ctx)[plan_id] = PendingTrace(query.job_id, request_digest(query, ctx.public_keys),
                                          [int(c) for c in classes], query.k)
    fps = np.ascontiguousarray(features.fingerprints, dtype="<f4")
    body = {"plan_id": plan_id, "k": query.k, "classes": [int(c) for c in classes], "dim": int(fps.shape[1]),
            "fingerprints": base64.b64encode(fps.tobytes()).decode()}
    sealed = aead.encrypt(derive_key(plans(ctx).get(query.job_id).key, "trace"), _canonical(body),
                          _trace_aad(query.job_id, "plan"))
    return TracePlan(job_id=query.job_id, plan=sealed)


@ecall(TraceShard)
def trace_shard(ctx: EnclaveContext, req: TraceShard) -> ShardHits:
    """Answer a planned trace over this worker's shard: per query, its k best records, signed and sealed."""
    joined, log = shard(ctx, req.job_id), shard_log(ctx, req.job_id)
    key = derive_key(joined.job_key, "trace")
    try:
        body = json.loads(aead.decrypt(key, req.plan, _trace_aad(req.job_id, "plan")))
        fps = np.frombuffer(base64.b64decode(body["fingerprints"]), dtype="<f4").reshape(-1, int(body["dim"]))
        classes, k, plan_id = [int(c) for c in body["classes"]], int(body["k"]), str(body["plan_id"])
    except (CryptoError, KeyError, TypeError, ValueError) as exc:
        raise ShardInvalid(f"the trace plan is not one of job {req.job_id}'s first enclave: {exc}") from None
    results = [
        [
            {"score": score, "record": log.records[p - log.start].public().to_dict(),
             "path": [h.hex() for h in log.path(p)]}
            for score, p in log.search(q, label, k)
        ]
        for q, label in zip(fps, classes, strict=True)
    ]
    signed = _sign(ctx, _HITS_TAG, {"plan_id": plan_id, "rank": joined.rank, "results": results})
    return ShardHits(job_id=req.job_id, hits=aead.encrypt(key, _canonical(signed), _trace_aad(req.job_id, "hits")))


@ecall(CollectHits)
def collect_hits(ctx: EnclaveContext, req: CollectHits) -> Ok:
    """Take one worker's partial answer to a planned trace, once its signature checks out."""
    admitted = session(ctx, req.job_id)
    try:
        doc = json.loads(aead.decrypt(derive_key(admitted.plan.key, "trace"), req.hits, _trace_aad(req.job_id, "hits")))
        rank = int(doc["body"]["rank"])
    except (CryptoError, KeyError, TypeError, ValueError) as exc:
        raise ShardInvalid(f"the partial answer is not one of job {req.job_id}'s workers': {exc}") from None
    if rank not in admitted.workers:
        raise ShardInvalid(f"rank {rank} was not admitted by this enclave instance")
    body = _check_signed(doc, _HITS_TAG, admitted.workers[rank].signing, f"partial answer of rank {rank}")
    pending = _pending(ctx).get(str(body.get("plan_id")))
    if pending is None or pending.job_id != req.job_id or len(body.get("results", [])) != len(pending.predicted):
        raise ShardInvalid("the partial answer belongs to no trace planned for this job")
    pending.hits[rank] = body["results"]
    return Ok()


def trace(ctx: EnclaveContext, req: TraceQuery, member: Member) -> ForensicReply:
    """The auditor's trace of a sharded job: every shard's answer merged, every proof completed and checked."""
    plan, job = plans(ctx).get(req.job_id), finished_job(ctx, req.job_id)
    check_grant(policies(ctx, job.config.datasets).items(), "tracers", member)
    world = session(ctx, req.job_id).world
    digest = request_digest(req, ctx.public_keys)
    plan_id = next((i for i, p in _pending(ctx).items() if p.digest == digest), None)
    if plan_id is None or len(_pending(ctx)[plan_id].hits) != world:
        raise AccountabilityError(f"job {req.job_id} is sharded: every worker must answer this trace first")
    pending = _pending(ctx).pop(plan_id)
    signed = SignedStatement.from_dict(plan.log["statement"])
    upper = MerkleTree.over_subtrees([bytes.fromhex(h) for h in plan.log["nodes"]])
    bits, n = block_bits(signed.statement.count), signed.statement.count
    answers: list[QueryAnswer] = []
    attributions: list[Attribution] = []
    proved: dict[int, LinkageProof] = {}
    for q, predicted in enumerate(pending.predicted):
        merged = sorted(
            (hit for rank in range(world) for hit in pending.hits[rank][q]),
            key=lambda h: (-float(h["score"]), int(h["record"]["position"])),
        )[: pending.k]
        traced = tuple(_proved(ctx, signed, upper, bits, n, hit) for hit in merged)
        if any(t.proof.record.label != predicted for t in traced):
            raise LinkageTampered("a shard answered with a record whose committed label is not the predicted one")
        attribution = Attribution(np.array([t.proof.record.position for t in traced], dtype=np.int64),
                                  np.array([t.score for t in traced]))
        answers.append(QueryAnswer(predicted, traced, 1.0, True, len(attribution.evidence_records), {}))
        attributions.append(attribution)
        proved.update((t.proof.record.position, t.proof) for t in traced)
    _, contributors, _, _, _ = _provenance(job)
    names = sorted(set(contributors))
    ids = np.array([names.index(c) for c in contributors], dtype=np.int64)
    total = trace_ledger(ctx).count(req.job_id, METHOD, len(attributions))
    named = name_contributors(attributions, ids, job.y.numpy(), traced=total)
    report = TraceReport(METHOD, tuple(answers), total, tuple(
        NamedContributor(names[e.contributor], e, tuple(proved[int(p)] for p in e.positions) if e.named else ())
        for e in named)).to_dict()
    report.update(job_id=req.job_id, k=pending.k, statement=signed.to_dict())
    return ForensicReply(report=report)


def _proved(ctx: EnclaveContext, signed: SignedStatement, upper: MerkleTree, bits: int, n: int,
            hit: dict[str, Any]) -> TracedRecord:
    """A shard's hit with its full audit path (in-block part from the worker, upper part from the block roots),
    checked against the signed root before it may leave."""
    try:
        record = PublicRecord.from_dict(hit["record"])
        inner = tuple(bytes.fromhex(h) for h in hit["path"])
        path = inner + upper.proof(record.position >> bits).path
        proof = LinkageProof(record, InclusionProof(record.position, n, path), signed)
        verify_linkage_proof(proof, ctx.identity.public_key, measurement=bytes.fromhex(ctx.measurement))
        return TracedRecord(proof, float(hit["score"]))
    except (KeyError, TypeError, ValueError, ProofError, LinkageProofInvalid) as exc:
        raise ShardInvalid(f"a shard's record does not prove into the job's signed root: {exc}") from None
