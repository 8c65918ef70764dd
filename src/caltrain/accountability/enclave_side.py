"""The enclave's accountability calls: build the signed linkage log, answer forensic queries.

Everything here runs inside the enclave: fingerprints come from the decrypted training records, queries arrive
sealed to the enclave from an auditor whose signature the dispatcher verified, and whom every training dataset's
policy names as a tracer; answers carry proofs against the signed log root and leave signed by the enclave and
encrypted to that auditor. A job's log is built once: its id comes from enclave randomness and the sealed job
registry records it, so no log ever gets a second root.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from caltrain.accountability.attribution import AttributionMethod, QueryBatch, TrainingSet, get_method
from caltrain.accountability.errors import AccountabilityError
from caltrain.accountability.fingerprints import model_hash
from caltrain.accountability.linkage import LinkageLog
from caltrain.accountability.store import save_log
from caltrain.accountability.tracing import Tracer
from caltrain.enclave.consent import check_grant
from caltrain.enclave.consortium import Member
from caltrain.enclave.runtime import EnclaveContext, ecall
from caltrain.enclave.wire import BuildLinkage, ForensicReply, LinkageBuilt, SuspicionQuery, TraceQuery
from caltrain.training.enclave_side import Job, finished_job, jobs, policies

FORENSICS = "forensics"
MAX_QUERY_BATCH = 4096


class QueryRejected(AccountabilityError):
    """A forensic query is malformed or does not fit the model."""


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
    """The job's forensics, for a member every training dataset's policy names as a tracer."""
    found = ctx.extensions.get(FORENSICS, {}).get(job_id)
    if not isinstance(found, Forensics):
        raise AccountabilityError(f"job {job_id!r} has no linkage log yet (build it after training)")
    check_grant(policies(ctx, finished_job(ctx, job_id).config.datasets).items(), "tracers", member)
    return found


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
    if not isinstance(job.model, nn.Sequential):
        raise AccountabilityError("fingerprints need a model whose last block is its classifier (an nn.Sequential)")
    record_ids, contributors, hashes, dataset_ids, indexes = _provenance(job)
    names = sorted(set(contributors))
    contributor_ids = np.array([names.index(c) for c in contributors], dtype=np.int64)
    training = TrainingSet.build(job.model, job.x.numpy(), job.y.numpy(), contributor_ids)
    log = LinkageLog(
        ctx.identity,
        log_id=os.urandom(32),
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
    save_log(ctx.state_dir / "linkage" / f"{log.log_id.hex()}.sqlite", log, ctx.sealer)
    entry.state, entry.log_id = "linked", log.log_id.hex()
    jobs(ctx).put(entry)
    ctx.extensions.setdefault(FORENSICS, {})[req.job_id] = Forensics(log, training)
    return LinkageBuilt(statement=signed.to_dict(), records=len(log), seconds=time.perf_counter() - started)


def read_query(req: TraceQuery, shape: tuple[int, ...], num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A query's inputs (1..MAX_QUERY_BATCH finite images of `shape`) and optional predicted classes."""
    try:
        with np.load(io.BytesIO(req.inputs), allow_pickle=False) as data:
            x = np.asarray(data["x"], dtype=np.float32)
            predicted = np.asarray(data["predicted"], dtype=np.int64) if "predicted" in data else None
    except (ValueError, KeyError, OSError, EOFError) as exc:
        raise QueryRejected(f"query must be an .npz with float array 'x' (and int 'predicted'): {exc}") from None
    expected = tuple(shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected or not 1 <= len(x) <= MAX_QUERY_BATCH:
        raise QueryRejected(f"query inputs must be 1..{MAX_QUERY_BATCH} images of shape {expected}, got {x.shape}")
    if not np.isfinite(x).all():
        raise QueryRejected("query inputs hold NaN or infinity")
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
    report (job, method, k, answers, blame, the log statement) is what the dispatcher signs for the auditor."""
    from caltrain.accountability import sharded  # it builds on this module

    if sharded.holds_log(ctx, req.job_id):
        return sharded.trace(ctx, req, member)
    forensics = _forensics(ctx, req.job_id, member)
    check_k(req.k)
    x, predicted = read_query(req, forensics.training.x.shape[1:], forensics.training.num_classes)
    method = forensics.method(req.method)
    queries = QueryBatch.build(forensics.training, x, predicted)
    report = Tracer(forensics.log, method, forensics.training.y).trace(queries, k=req.k).to_dict()
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
