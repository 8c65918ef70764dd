"""Exactness of the per-label faiss search against a numpy brute force; recall of the approximate (HNSW) mode."""

from __future__ import annotations

import numpy as np
import pytest

from caltrain.accountability.fingerprints import l2_normalize
from caltrain.accountability.search import FingerprintIndex


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_matches_brute_force(metric: str) -> None:
    rng = np.random.default_rng(0)
    x = l2_normalize(rng.standard_normal((5000, 32)).astype(np.float32))
    y = rng.integers(0, 7, len(x))
    q = l2_normalize(rng.standard_normal((25, 32)).astype(np.float32))
    ql = rng.integers(0, 7, len(q))
    index = FingerprintIndex(x, y, metric=metric)  # type: ignore[arg-type]
    for labels in (ql, None):
        dist, pos = index.search(q, 10, labels)
        for i in range(len(q)):
            keep = np.flatnonzero(y == ql[i]) if labels is not None else np.arange(len(x))
            d2 = ((x[keep] - q[i]) ** 2).sum(axis=1)
            expected = keep[np.argsort(d2)[:10]]  # unit vectors: L2 order == cosine order
            np.testing.assert_array_equal(pos[i], expected)
            want = np.sqrt(d2[np.argsort(d2)[:10]]) if metric == "l2" else 1 - x[expected] @ q[i]
            np.testing.assert_allclose(dist[i], want, atol=1e-5)


def test_pads_when_label_has_few_records() -> None:
    x = l2_normalize(np.eye(4, dtype=np.float32))
    dist, pos = FingerprintIndex(x, np.array([0, 0, 1, 1])).search(x[:1], 3, 1)
    assert sorted(pos[0][:2]) == [2, 3] and pos[0][2] == -1 and np.isinf(dist[0, 2])


def test_search_other_labels_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    y = rng.integers(0, 5, len(x))
    q = rng.standard_normal((30, 16)).astype(np.float32)
    ql = rng.integers(0, 5, len(q))
    dist, pos = FingerprintIndex(x, y, metric="l2").search_other_labels(q, 7, ql)
    for i in range(len(q)):
        keep = np.flatnonzero(y != ql[i])
        d2 = ((x[keep] - q[i]) ** 2).sum(axis=1)
        np.testing.assert_array_equal(pos[i], keep[np.argsort(d2)[:7]])
        np.testing.assert_allclose(dist[i], np.sqrt(np.sort(d2)[:7]), rtol=1e-4)
    _, alone = FingerprintIndex(x[:5], np.zeros(5, np.int64), metric="l2").search_other_labels(q[:2], 3, 0)
    assert (alone == -1).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_approximate_mode_finds_nearly_every_true_neighbour(metric: str) -> None:
    rng = np.random.default_rng(2)
    x = l2_normalize(rng.standard_normal((20000, 32)).astype(np.float32))
    y = rng.integers(0, 4, len(x))
    q, ql = x[:300], y[:300]
    _, exact = FingerprintIndex(x, y, metric=metric).search(q, 10, ql)  # type: ignore[arg-type]
    dist, approx = FingerprintIndex(x, y, metric=metric, approximate=True).search(q, 10, ql)  # type: ignore[arg-type]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95
    assert (np.diff(dist, axis=1) >= -1e-6).all() and (approx >= 0).all()
    assert (y[approx] == ql[:, None]).all()  # the label filter holds
