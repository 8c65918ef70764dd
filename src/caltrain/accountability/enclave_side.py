"""The enclave's accountability calls: build the signed linkage log, answer forensic queries.

Everything here runs inside the enclave: fingerprints come from the decrypted training records, queries arrive
sealed to the enclave from an auditor whose signature the dispatcher verified, and whom every training dataset's
policy names as a tracer; answers carry proofs against the signed log root and leave signed by the enclave and
encrypted to that auditor. A job's log is built once: its id comes from enclave randomness and the sealed job
registry records it, so no log ever gets a second root. Every query traced is counted in a sealed, counter-pinned
ledger (`TraceLedger`), and contributors are named against that count, not against the batch alone.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from caltrain.accountability.attribution import AttributionMethod, QueryBatch, TrainingSet, get_method
from caltrain.accountability.errors import AccountabilityError, QueryRejected
from caltrain.accountability.fingerprints import model_hash
from caltrain.accountability.linkage import LinkageLog, SignedStatement
from caltrain.accountability.store import load_log, save_log
from caltrain.accountability.tracing import Tracer
from caltrain.enclave.consent import check_grant
from caltrain.enclave.consortium import Member
from caltrain.enclave.runtime import EnclaveContext, ecall, on_boot
from caltrain.enclave.sealed_state import CountedState, SealedTable
from caltrain.enclave.wire import BuildLinkage, ForensicReply, LinkageBuilt, SuspicionQuery, TraceQuery
from caltrain.training.enclave_side import Job, JobEntry, finished_job, jobs, policies

FORENSICS = "forensics"
TRACE_LEDGER = "trace-ledger"
MAX_QUERY_BATCH = 4096


@dataclass
class Forensics:
    """One finished job's committed log and the training set its attribution methods are fitted on."""

    log: LinkageLog
    training: TrainingSet
    methods: dict[str, AttributionMethod] = field(default_factory=dict)

    def method(self, name: str) -> AttributionMethod:
        if name not in self.methods:
            method = get_method(name)
            method.fit(self.training)
            self.methods[name] = method
        return self.methods[name]


def _forensics(ctx: EnclaveContext, job_id: str, member: Member) -> Forensics:
    """The job's forensics, for a member every training dataset's policy names as a tracer; after a restart the
    committed log is reloaded from its sealed file on first use."""
    loaded = ctx.extensions.setdefault(FORENSICS, {})
    entry = jobs(ctx).get(job_id)
    if entry.state != "linked":
        raise AccountabilityError(f"job {job_id!r} has no linkage log yet (build it after training)")
    check_grant(policies(ctx, finished_job(ctx, job_id).config.datasets).items(), "tracers", member)
    if job_id not in loaded:
        loaded[job_id] = _reload(ctx, entry)
    found = loaded[job_id]
    assert isinstance(found, Forensics)
    return found


@dataclass
class TraceTally:
    """How many queries the enclave has traced for one job, per attribution method."""

    job_id: str
    traced: dict[str, int] = field(default_factory=dict)


class TraceLedger(SealedTable[TraceTally]):
    """Every query traced, counted per job and method, sealed and counter-pinned. Contributor naming judges a
    batch's answers against everything traced before it too: an auditor who traces queries one at a time and then
    sends together only those answered "responsible" chose that batch by its answers, and the per-query
    false-answer rate holds only over all the queries it chose from. A host can neither roll the count back (the
    counter) nor inflate it by replaying requests (each request id is admitted once)."""

    @classmethod
    def load(cls, ctx: EnclaveContext) -> TraceLedger:
        state = CountedState(ctx.state_dir / "trace-ledger.sealed", label="trace-ledger/v1", counter="trace-ledger",
                             sealer=ctx.sealer, counters=ctx.counters)
        return cls(state, TraceTally)

    def count(self, job_id: str, method: str, queries: int) -> int:
        """Add `queries` to the job's tally for `method`, sealed before anything is answered; the new total."""
        tally = self.entries.get(job_id, TraceTally(job_id))
        traced = {**tally.traced, method: tally.traced.get(method, 0) + queries}
        self.put(TraceTally(job_id, traced))
        return traced[method]


@on_boot
def restore_trace_ledger(ctx: EnclaveContext) -> None:
    ctx.extensions[TRACE_LEDGER] = TraceLedger.load(ctx)


def trace_ledger(ctx: EnclaveContext) -> TraceLedger:
    return ctx.extension(TRACE_LEDGER, TraceLedger)


def _log_path(ctx: EnclaveContext, log_id: str) -> Path:
    return ctx.state_dir / "linkage" / f"{log_id}.sqlite"


def _training_set(job: Job) -> TrainingSet:
    if not isinstance(job.model, nn.Sequential):
        raise AccountabilityError("fingerprints need a model whose last block is its classifier (an nn.Sequential)")
    contributors = _provenance(job)[1]
    names = sorted(set(contributors))
    contributor_ids = np.array([names.index(c) for c in contributors], dtype=np.int64)
    return TrainingSet.build(job.model, job.x.numpy(), job.y.numpy(), contributor_ids)


def _reload(ctx: EnclaveContext, entry: JobEntry) -> Forensics:
    """A linked job's log, through `load_log` against the statement the sealed registry holds (so a rolled-back
    or swapped log file is refused), and its training set from the reloaded final model, which must be the
    model the log was signed for."""
    job = finished_job(ctx, entry.job_id)
    trusted = SignedStatement.from_dict(entry.statement)
    log = load_log(_log_path(ctx, entry.log_id), ctx.sealer, ctx.identity,
                   measurement=bytes.fromhex(ctx.measurement), trusted=trusted)
    trusted.verify(ctx.identity.public_key, model_hash=model_hash(job.model), job_id=entry.job_id)
    return Forensics(log, _training_set(job))


def _provenance(job: Job) -> tuple[list[str], list[str], list[bytes], list[str], np.ndarray]:
    record_ids, contributors, hashes, dataset_ids, indexes = [], [], [], [], []
    for source in job.sources:
        n = source.header.record_count
        record_ids += [f"{source.dataset_id}/{i}" for i in range(n)]
        contributors += [source.participant] * n
        hashes += list(source.record_hashes)
        dataset_ids += [source.dataset_id] * n
        indexes.append(np.arange(n))
    return record_ids, contributors, hashes, dataset_ids, np.concatenate(indexes)


@ecall(BuildLinkage)
def build_linkage(ctx: EnclaveContext, req: BuildLinkage) -> LinkageBuilt:
    """Fingerprint every training instance with the final model and commit (fingerprint, label, contributor,
    instance hash) to a Merkle-rooted log the enclave signs with the model hash and its measurement."""
    started = time.perf_counter()
    job = finished_job(ctx, req.job_id)
    entry = jobs(ctx).get(req.job_id)
    if entry.state != "trained":
        raise AccountabilityError(
            f"job {req.job_id} already has its linkage log {entry.log_id[:16]}…; a log is built once"
        )
    if not entry.log_id:  # sealed before anything is written: a crash mid-build rebuilds the same log, same id
        entry = dataclasses.replace(entry, log_id=os.urandom(32).hex())
        jobs(ctx).put(entry)
    record_ids, contributors, hashes, dataset_ids, indexes = _provenance(job)
    training = _training_set(job)
    log = LinkageLog(
        ctx.identity,
        log_id=bytes.fromhex(entry.log_id),
        job_id=req.job_id,
        model_hash=model_hash(job.model),
        measurement=bytes.fromhex(ctx.measurement),
    )
    signed = log.append(
        record_ids=record_ids,
        contributors=contributors,
        labels=job.y.numpy(),
        instance_hashes=hashes,
        dataset_ids=dataset_ids,
        dataset_indexes=indexes,
        fingerprints=training.features.fingerprints,
    )
    path = _log_path(ctx, entry.log_id)
    path.unlink(missing_ok=True)  # what a crash mid-build left: rebuilt whole
    save_log(path, log, ctx.sealer)
    jobs(ctx).put(dataclasses.replace(entry, state="linked", statement=signed.to_dict()))
    ctx.extensions.setdefault(FORENSICS, {})[req.job_id] = Forensics(log, training)
    return LinkageBuilt(statement=signed.to_dict(), records=len(log), seconds=time.perf_counter() - started)


def query_range(ctx: EnclaveContext) -> tuple[float, float]:
    """The values a query's inputs may hold: the consortium schema's, which every training record was checked
    against at ingestion. Far outside it a model's features overflow, and an answer would rest on nothing."""
    schema = ctx.config.consortium.schema
    return schema.value_range if schema is not None else (-np.inf, np.inf)


def read_query(req: TraceQuery, shape: tuple[int, ...], num_classes: int, value_range: tuple[float, float]
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """A query's inputs (1..MAX_QUERY_BATCH images of `shape`, values within `value_range`) and optional
    predicted classes."""
    try:
        with np.load(io.BytesIO(req.inputs), allow_pickle=False) as data:
            x = np.asarray(data["x"], dtype=np.float32)
            predicted = np.asarray(data["predicted"], dtype=np.int64) if "predicted" in data else None
    except (ValueError, KeyError, OSError, EOFError) as exc:
        raise QueryRejected(f"query must be an .npz with float array 'x' (and int 'predicted'): {exc}") from None
    expected = tuple(shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected or not 1 <= len(x) <= MAX_QUERY_BATCH:
        raise QueryRejected(f"query inputs must be 1..{MAX_QUERY_BATCH} images of shape {expected}, got {x.shape}")
    low, high = value_range
    if not np.isfinite(x).all() or x.min() < low or x.max() > high:
        raise QueryRejected(f"query inputs hold NaN, infinity or values outside the schema's [{low}, {high}]")
    if predicted is not None and (
        predicted.shape != (len(x),) or predicted.min() < 0 or predicted.max() >= num_classes
    ):
        raise QueryRejected("'predicted' must hold one class index per input")
    return x, predicted


def check_k(k: int) -> None:
    if not 1 <= k <= 100:
        raise QueryRejected(f"k must be 1..100, got {k}")


@ecall(TraceQuery)
def trace(ctx: EnclaveContext, req: TraceQuery, member: Member) -> ForensicReply:
    """Rank the training records labelled with each input's prediction; answers carry inclusion proofs. The whole
    report (job, method, k, answers, blame, queries traced so far, the log statement) is what the dispatcher signs
    for the auditor."""
    from caltrain.accountability import sharded  # it builds on this module

    if sharded.holds_log(ctx, req.job_id):
        return sharded.trace(ctx, req, member)
    forensics = _forensics(ctx, req.job_id, member)
    check_k(req.k)
    x, predicted = read_query(req, forensics.training.x.shape[1:], forensics.training.num_classes, query_range(ctx))
    method = forensics.method(req.method)
    queries = QueryBatch.build(forensics.training, x, predicted)
    traced = trace_ledger(ctx).count(req.job_id, req.method, len(queries))
    tracer = Tracer(forensics.log, method, forensics.training.y, inputs=forensics.training.x)
    report = tracer.trace(queries, k=req.k, traced=traced).to_dict()
    report.update(job_id=req.job_id, k=req.k, statement=forensics.log.signed.to_dict())
    return ForensicReply(report=report)


@ecall(SuspicionQuery)
def suspicion(ctx: EnclaveContext, req: SuspicionQuery, member: Member) -> ForensicReply:
    """Every training instance ranked by the method's suspicion score, most suspicious first."""
    from caltrain.accountability import sharded

    if sharded.holds_log(ctx, req.job_id):
        raise QueryRejected(f"job {req.job_id}'s log is sharded over its workers: they answer traces, not suspicion")
    forensics = _forensics(ctx, req.job_id, member)
    scores = forensics.method(req.method).suspicion()
    if scores is None:
        raise QueryRejected(f"method {req.method!r} has no dataset-level suspicion score")
    order = np.argsort(-scores, kind="stable")
    records = forensics.log.records()
    ranking = [
        {
            "record_id": records[i].record_id,
            "contributor": records[i].contributor,
            "label": records[i].label,
            "score": float(scores[i]),
        }
        for i in order
    ]
    report = {"job_id": req.job_id, "method": req.method, "ranking": ranking,
              "statement": forensics.log.signed.to_dict()}
    return ForensicReply(report=report)
