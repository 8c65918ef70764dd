"""Forensic queries over the verified linkage log (what the enclave answers): top-k records with proofs.

The attribution method ranks positions; every position that leaves is turned into a `LinkageProof` that is checked
against the signed root first, so an answer never names a record the log does not commit to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from caltrain.accountability.attribution import Attribution, AttributionMethod, QueryBatch, rank_contributors
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "predicted": self.predicted, "confidence": self.confidence, "responsible": self.responsible,
            "verdict": "attributed" if self.responsible else NO_RESPONSIBLE_DATA,
            "records": [r.to_dict() for r in self.records],
        }


@dataclass(frozen=True)
class TraceReport:
    method: str
    answers: tuple[QueryAnswer, ...]
    contributors: tuple[tuple[str, float], ...]  # (contributor, blame), most blamed first

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "answers": [a.to_dict() for a in self.answers],
                "contributors": [{"contributor": c, "blame": b} for c, b in self.contributors]}


class Tracer:
    """Answers forensic queries with a fitted method over a log whose positions are the method's record indexes."""

    def __init__(self, log: LinkageLog, method: AttributionMethod, labels: np.ndarray) -> None:
        if len(labels) != len(log) or not np.array_equal(labels, log.labels):
            raise LinkageTampered("the method's training labels disagree with the signed linkage log")
        self.log, self.method, self._labels = log, method, np.asarray(labels)
        self._names = sorted(set(log.contributors))
        self._contributor_ids = np.array([self._names.index(c) for c in log.contributors], dtype=np.int64)

    def trace(self, queries: QueryBatch, *, k: int = 10) -> TraceReport:
        attributions = self.method.trace(queries, k=k)
        answers = tuple(self._answer(int(p), a) for p, a in zip(queries.predicted, attributions, strict=True))
        blame = rank_contributors(attributions, self._contributor_ids, k=k, labels=self._labels)
        return TraceReport(self.method.name, answers, tuple((self._names[c], s) for c, s in blame))

    def _answer(self, predicted: int, att: Attribution) -> QueryAnswer:
        records = tuple(TracedRecord(self.log.prove(int(p)), float(s)) for p, s in zip(att.positions, att.scores,
                                                                                       strict=True))
        if any(r.proof.record.label != predicted for r in records):
            raise LinkageTampered("an answer names a record whose committed label is not the predicted one")
        return QueryAnswer(predicted, records, att.confidence, att.responsible)


def contributor_names(report: TraceReport) -> Sequence[str]:
    return [c for c, _ in report.contributors]
