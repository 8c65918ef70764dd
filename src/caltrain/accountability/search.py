"""Nearest-neighbour search over fingerprints, one faiss index per label.

A forensic query only ranks records carrying the predicted label, so splitting by label makes the label filter
free and divides the scan by the number of classes (10^6 records over 10 labels: a 10^5 scan per query).
Flat indexes are exact; distances are cosine distance (`ip`, on unit fingerprints) or Euclidean (`l2`). Searches
of *every* record against the rest cost N² when exact, so a method that needs them on millions of records asks
for HNSW graphs instead (`approximate=True`): same interface, recall measured in the tests.
"""

from __future__ import annotations

from typing import Literal

import faiss
import numpy as np

Metric = Literal["ip", "l2"]


HNSW_LINKS = 32  # graph degree of an approximate index
HNSW_SEARCH_DEPTH = 128  # candidates an approximate search keeps (faiss efSearch): recall against speed


class FingerprintIndex:
    """k-NN over fingerprints with an optional per-query label filter; returns global record positions. Exact
    unless `approximate` (HNSW, for all-records searches over millions of records)."""

    def __init__(self, fingerprints: np.ndarray, labels: np.ndarray, *, metric: Metric = "ip",
                 approximate: bool = False) -> None:
        x = np.ascontiguousarray(fingerprints, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if x.ndim != 2 or len(x) != len(labels):
            raise ValueError("fingerprints must be N×D with one label per row")
        self.metric, self.dim, self.size, self.approximate = metric, x.shape[1], len(x), approximate
        self._positions: dict[int, np.ndarray] = {}
        self._indexes: dict[int, faiss.Index] = {}
        for label in np.unique(labels):
            pos = np.flatnonzero(labels == label)
            index = _build(self.dim, metric, approximate)
            index.add(x[pos])
            self._positions[int(label)], self._indexes[int(label)] = pos, index

    @property
    def labels(self) -> list[int]:
        return sorted(self._indexes)

    def _distances(self, raw: np.ndarray) -> np.ndarray:
        return 1.0 - raw if self.metric == "ip" else np.sqrt(np.maximum(raw, 0.0))

    def _search_label(self, q: np.ndarray, k: int, label: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._indexes.get(label)
        out_d = np.full((len(q), k), np.inf, dtype=np.float32)
        out_p = np.full((len(q), k), -1, dtype=np.int64)
        if index is None or not len(q):
            return out_d, out_p
        kk = min(k, index.ntotal)
        raw, local = index.search(q, kk)
        found = local >= 0  # an approximate search may return fewer than kk
        out_d[:, :kk] = np.where(found, self._distances(raw), np.inf)
        out_p[:, :kk] = np.where(found, self._positions[label][np.maximum(local, 0)], -1)
        return out_d, out_p

    def _merged(self, q: np.ndarray, k: int, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest over several labels' indexes."""
        parts = [self._search_label(q, k, label) for label in labels] or [self._search_label(q, k, -1)]
        d = np.concatenate([part[0] for part in parts], axis=1)
        p = np.concatenate([part[1] for part in parts], axis=1)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(d, order, 1), np.take_along_axis(p, order, 1)

    def search(
        self, queries: np.ndarray, k: int, labels: np.ndarray | int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distances and positions (Q×k, ascending; -1 / inf pad when fewer records match).

        `labels`: one label for all queries, one per query, or None for no filter.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index {self.dim}")
        if labels is None:
            return self._merged(q, k, self.labels)
        per_query = np.broadcast_to(np.asarray(labels, dtype=np.int64), (len(q),))
        out_d = np.full((len(q), k), np.inf, dtype=np.float32)
        out_p = np.full((len(q), k), -1, dtype=np.int64)
        for label in np.unique(per_query):
            rows = np.flatnonzero(per_query == label)
            out_d[rows], out_p[rows] = self._search_label(q[rows], k, int(label))
        return out_d, out_p

    def search_other_labels(self, queries: np.ndarray, k: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query, its k nearest records whose label differs from the query's `labels` entry (same layout as
        `search`)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        per_query = np.broadcast_to(np.asarray(labels, dtype=np.int64), (len(q),))
        out_d = np.full((len(q), k), np.inf, dtype=np.float32)
        out_p = np.full((len(q), k), -1, dtype=np.int64)
        for own in np.unique(per_query):
            rows = np.flatnonzero(per_query == own)
            out_d[rows], out_p[rows] = self._merged(q[rows], k, [label for label in self.labels if label != own])
        return out_d, out_p


def _build(dim: int, metric: Metric, approximate: bool) -> faiss.Index:
    if not approximate:
        return faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    index = faiss.IndexHNSWFlat(dim, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    index.hnsw.efSearch = HNSW_SEARCH_DEPTH
    return index
