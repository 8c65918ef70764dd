"""Exact nearest-neighbour search over fingerprints, one faiss flat index per label.

A forensic query only ranks records carrying the predicted label, so splitting by label makes the label filter
free and divides the scan by the number of classes (10^6 records over 10 labels: a 10^5 scan per query).
Flat indexes are exact; distances are cosine distance (`ip`, on unit fingerprints) or Euclidean (`l2`).
"""

from __future__ import annotations

from typing import Literal

import faiss
import numpy as np

Metric = Literal["ip", "l2"]


class FingerprintIndex:
    """Exact k-NN over fingerprints with an optional per-query label filter; returns global record positions."""

    def __init__(self, fingerprints: np.ndarray, labels: np.ndarray, *, metric: Metric = "ip") -> None:
        x = np.ascontiguousarray(fingerprints, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if x.ndim != 2 or len(x) != len(labels):
            raise ValueError("fingerprints must be N×D with one label per row")
        self.metric, self.dim, self.size = metric, x.shape[1], len(x)
        self._positions: dict[int, np.ndarray] = {}
        self._indexes: dict[int, faiss.Index] = {}
        for label in np.unique(labels):
            pos = np.flatnonzero(labels == label)
            index = faiss.IndexFlatIP(self.dim) if metric == "ip" else faiss.IndexFlatL2(self.dim)
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
        out_d[:, :kk], out_p[:, :kk] = self._distances(raw), self._positions[label][local]
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
