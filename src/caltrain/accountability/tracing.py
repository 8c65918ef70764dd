"""Forensic queries over the verified linkage log (what the enclave answers): top-k records with proofs.

The attribution method ranks positions and decides, per query, whether training data explains it; every position
that leaves is turned into a `LinkageProof` that is checked against the signed root first, so an answer never names
a record the log does not commit to. Contributors are named by set detection over the answered queries' evidence
records (`attribution.name_contributors`), with the evidence per contributor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from caltrain.accountability.attribution import (
    Attribution,
    AttributionMethod,
    ContributorEvidence,
    QueryBatch,
    distinct_answers,
    name_contributors,
)
from caltrain.accountability.errors import LinkageTampered
from caltrain.accountability.linkage import LinkageLog, LinkageProof

NO_RESPONSIBLE_DATA = "no responsible training data found"


@dataclass(frozen=True)
class TracedRecord:
    proof: LinkageProof
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, **self.proof.to_dict()}


@dataclass(frozen=True)
class QueryAnswer:
    predicted: int
    records: tuple[TracedRecord, ...]
    confidence: float
    responsible: bool
    support: int  # how many records the answer rests on (what contributor naming counts)
    details: dict[str, float]  # the method's per-query evidence

    def to_dict(self) -> dict[str, Any]:
        return {
            "predicted": self.predicted, "confidence": self.confidence, "responsible": self.responsible,
            "verdict": "attributed" if self.responsible else NO_RESPONSIBLE_DATA,
            "supporting_records": self.support if self.responsible else 0, "evidence": self.details,
            "records": [r.to_dict() for r in self.records],
        }


@dataclass(frozen=True)
class NamedContributor:
    name: str
    evidence: ContributorEvidence
    proofs: tuple[LinkageProof, ...]  # for a named contributor: its evidence records, most supporting first

    def to_dict(self) -> dict[str, Any]:
        e = self.evidence
        return {"contributor": self.name, "blame": e.blame, "named": e.named, "p_value": e.p_value,
                "records_p_value": e.records_p_value, "answers_p_value": e.answers_p_value,
                "records": e.records, "expected_records": e.expected, "answered_share": e.answered_share,
                "answers": e.answers, "answered": e.answered, "traced": e.traced,
                "evidence_records": [p.to_dict() for p in self.proofs]}


@dataclass(frozen=True)
class TraceReport:
    method: str
    answers: tuple[QueryAnswer, ...]
    traced: int  # queries traced with this method in all, these included: what contributor naming judged against
    contributors: tuple[NamedContributor, ...]  # every contributor with evidence, most significant first

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "answers": [a.to_dict() for a in self.answers], "traced": self.traced,
                "contributors": [c.to_dict() for c in self.contributors]}


class Tracer:
    """Answers forensic queries with a fitted method over a log whose positions are the method's record indexes.
    A named contributor's report carries inclusion proofs for up to `proofs_per_contributor` of its evidence
    records, so it can check offline what it is blamed for. Given the training `inputs`, answered queries that are
    one input (`distinct_answers`) count once towards blame."""

    proofs_per_contributor = 50

    def __init__(self, log: LinkageLog, method: AttributionMethod, labels: np.ndarray, *,
                 inputs: np.ndarray | None = None) -> None:
        if len(labels) != len(log) or not np.array_equal(labels, log.labels):
            raise LinkageTampered("the method's training labels disagree with the signed linkage log")
        self.log, self.method, self._labels, self._inputs = log, method, np.asarray(labels), inputs
        self._names = sorted(set(log.contributors))
        self._contributor_ids = np.array([self._names.index(c) for c in log.contributors], dtype=np.int64)

    def trace(self, queries: QueryBatch, *, k: int = 10, traced: int | None = None) -> TraceReport:
        """`traced`: queries traced in all, these included (the enclave's ledger); None: these alone."""
        attributions = self.method.trace(queries, k=k)
        answers = tuple(self._answer(int(p), a) for p, a in zip(queries.predicted, attributions, strict=True))
        total = len(attributions) if traced is None else traced
        distinct = None if self._inputs is None else distinct_answers(queries.x, attributions, self._inputs)
        named = name_contributors(attributions, self._contributor_ids, self._labels, traced=total, distinct=distinct)
        return TraceReport(self.method.name, answers, total, tuple(
            NamedContributor(self._names[e.contributor], e,
                             tuple(self.log.prove(int(p)) for p in e.positions[: self.proofs_per_contributor])
                             if e.named else ())
            for e in named))

    def _answer(self, predicted: int, att: Attribution) -> QueryAnswer:
        records = tuple(TracedRecord(self.log.prove(int(p)), float(s)) for p, s in zip(att.positions, att.scores,
                                                                                       strict=True))
        if any(r.proof.record.label != predicted for r in records):
            raise LinkageTampered("an answer names a record whose committed label is not the predicted one")
        return QueryAnswer(predicted, records, att.confidence, att.responsible, len(att.evidence_records),
                           att.details)
