"""The enclave's accountability calls: build the signed linkage log, answer forensic queries.

Everything here runs inside the enclave: fingerprints come from the decrypted training records, queries
arrive HPKE-encrypted, and answers carry proofs against the signed log root (DESIGN.md §2, property 4).
"""

from __future__ import annotations

import hashlib
import io
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
from caltrain.crypto.errors import CryptoError
from caltrain.enclave.protocol import trace_info
from caltrain.enclave.runtime import EnclaveContext, ecall
from caltrain.enclave.wire import BuildLinkage, ForensicReply, LinkageBuilt, SuspicionQuery, TraceQuery
from caltrain.training.enclave_side import Job, finished_job

FORENSICS = "forensics"
MAX_QUERY_BATCH = 4096


class QueryRejected(AccountabilityError):
    """A forensic query is malformed, replayed, or does not fit the model."""


@dataclass
class Forensics:
    """One finished job's committed log and the training set its attribution methods are fitted on."""

    log: LinkageLog
    training: TrainingSet
    methods: dict[str, AttributionMethod] = field(default_factory=dict)
    seen: set[bytes] = field(default_factory=set)

    def method(self, name: str) -> AttributionMethod:
        if name not in self.methods:
            method = get_method(name)
            method.fit(self.training)
            self.methods[name] = method
        return self.methods[name]


def _forensics(ctx: EnclaveContext, job_id: str) -> Forensics:
    found = ctx.extensions.get(FORENSICS, {}).get(job_id)
    if not isinstance(found, Forensics):
        raise AccountabilityError(f"job {job_id!r} has no linkage log yet (build it after training)")
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
    if not isinstance(job.model, nn.Sequential):
        raise AccountabilityError("fingerprints need a model whose last block is its classifier (an nn.Sequential)")
    record_ids, contributors, hashes, dataset_ids, indexes = _provenance(job)
    names = sorted(set(contributors))
    contributor_ids = np.array([names.index(c) for c in contributors], dtype=np.int64)
    training = TrainingSet.build(job.model, job.x.numpy(), job.y.numpy(), contributor_ids)
    log = LinkageLog(
        ctx.identity,
        log_id=hashlib.sha256(req.job_id.encode()).digest(),
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
    ctx.extensions.setdefault(FORENSICS, {})[req.job_id] = Forensics(log, training)
    return LinkageBuilt(statement=signed.to_dict(), records=len(log), seconds=time.perf_counter() - started)


def _decrypt_query(ctx: EnclaveContext, forensics: Forensics, req: TraceQuery) -> tuple[np.ndarray, np.ndarray | None]:
    digest = hashlib.sha256(req.ciphertext).digest()
    if digest in forensics.seen:
        raise QueryRejected("this encrypted query was already answered (replay)")
    try:
        raw = ctx.hpke.open(req.ciphertext, trace_info(req.job_id))
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            x = np.asarray(data["x"], dtype=np.float32)
            predicted = np.asarray(data["predicted"], dtype=np.int64) if "predicted" in data else None
    except CryptoError:
        raise QueryRejected("query does not decrypt for this enclave and job (wrong key, job or tampered)") from None
    except (ValueError, KeyError, OSError) as exc:
        raise QueryRejected(f"query must be an .npz with float array 'x' (and int 'predicted'): {exc}") from None
    expected = tuple(forensics.training.x.shape[1:])
    if x.ndim != 4 or tuple(x.shape[1:]) != expected or not 1 <= len(x) <= MAX_QUERY_BATCH:
        raise QueryRejected(f"query inputs must be 1..{MAX_QUERY_BATCH} images of shape {expected}, got {x.shape}")
    if predicted is not None and (
        predicted.shape != (len(x),) or predicted.min() < 0 or predicted.max() >= forensics.training.num_classes
    ):
        raise QueryRejected("'predicted' must hold one class index per input")
    forensics.seen.add(digest)
    return x, predicted


@ecall(TraceQuery)
def trace(ctx: EnclaveContext, req: TraceQuery) -> ForensicReply:
    """Rank the training records labelled with each input's prediction; answers carry inclusion proofs."""
    forensics = _forensics(ctx, req.job_id)
    if not 1 <= req.k <= 100:
        raise QueryRejected(f"k must be 1..100, got {req.k}")
    x, predicted = _decrypt_query(ctx, forensics, req)
    method = forensics.method(req.method)
    queries = QueryBatch.build(forensics.training, x, predicted)
    report = Tracer(forensics.log, method, forensics.training.y).trace(queries, k=req.k).to_dict()
    report["statement"] = forensics.log.signed.to_dict()
    return ForensicReply(report=report)


@ecall(SuspicionQuery)
def suspicion(ctx: EnclaveContext, req: SuspicionQuery) -> ForensicReply:
    """Every training instance ranked by the method's suspicion score, most suspicious first."""
    forensics = _forensics(ctx, req.job_id)
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
    return ForensicReply(report={"method": req.method, "ranking": ranking, "statement": forensics.log.signed.to_dict()})
