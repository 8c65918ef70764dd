"""Attribution: which training records (and contributors) are responsible for a misprediction, behind one interface.

Every method is fitted once on the enclave's view of the training set (`TrainingSet`) and then answers per-query
rankings of the records labelled with the predicted class, plus, where it has one, a dataset-level suspicion score
for every record. `caltrain-knn` is the seed (embedding kNN); `ours` fuses embedding kNN, last-layer gradient
similarity and a per-class calibrated dataset-level suspicion, and abstains ("no responsible training data found")
when the records it would blame look like ordinary members of their class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from torch import nn

from caltrain.accountability.errors import UnknownMethod
from caltrain.accountability.fingerprints import Features, compute_features
from caltrain.accountability.search import FingerprintIndex


@dataclass
class TrainingSet:
    """What the enclave holds after training: the final model, the records, who supplied them, their features."""

    model: nn.Sequential
    x: np.ndarray
    y: np.ndarray
    contributors: np.ndarray  # int participant id per record
    features: Features
    num_classes: int
    checkpoints: list[dict[str, object]] = field(default_factory=list)  # state_dicts, oldest first (TracIn)

    @classmethod
    def build(cls, model: nn.Sequential, x: np.ndarray, y: np.ndarray, contributors: np.ndarray,
              *, checkpoints: Sequence[dict[str, object]] = ()) -> TrainingSet:
        feats = compute_features(model, x)
        return cls(model, x, np.asarray(y, np.int64), np.asarray(contributors, np.int64), feats,
                   feats.probs.shape[1], list(checkpoints))


@dataclass(frozen=True)
class QueryBatch:
    """Mispredicted inputs (inside the enclave, decrypted) with the labels they were predicted as."""

    x: np.ndarray
    features: Features
    predicted: np.ndarray

    @classmethod
    def build(cls, ts: TrainingSet, x: np.ndarray, predicted: np.ndarray | None = None) -> QueryBatch:
        feats = compute_features(ts.model, x)
        pred = feats.predictions if predicted is None else np.asarray(predicted, np.int64)
        return cls(np.asarray(x, np.float32), feats, pred)

    def __len__(self) -> int:
        return len(self.predicted)


@dataclass(frozen=True)
class Attribution:
    """One query's answer: record positions best first, their scores, and whether anyone is to blame."""

    positions: np.ndarray
    scores: np.ndarray
    confidence: float = 1.0
    responsible: bool = True


class AttributionMethod(ABC):
    """Fit once per trained model; `trace` ranks candidates per query; `suspicion` ranks all records (or None)."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, ts: TrainingSet) -> None: ...

    @abstractmethod
    def trace(self, queries: QueryBatch, k: int = 10) -> list[Attribution]: ...

    def suspicion(self) -> np.ndarray | None:
        return None


def rank_by_scores(scores: np.ndarray, candidates: np.ndarray, k: int) -> Attribution:
    order = np.argsort(-scores, kind="stable")[:k]
    return Attribution(candidates[order], scores[order])


class SuspicionRanking(AttributionMethod, ABC):
    """Dataset-level detectors: a query is answered by the most suspicious records with the predicted label."""

    def fit(self, ts: TrainingSet) -> None:
        self._y = ts.y
        self._scores = self.score(ts)

    @abstractmethod
    def score(self, ts: TrainingSet) -> np.ndarray: ...

    def trace(self, queries: QueryBatch, k: int = 10) -> list[Attribution]:
        out = []
        for label in queries.predicted:
            cand = np.flatnonzero(self._y == label)
            out.append(rank_by_scores(self._scores[cand], cand, k))
        return out

    def suspicion(self) -> np.ndarray:
        return self._scores


_REGISTRY: dict[str, Callable[[], AttributionMethod]] = {}


def register(factory: type[AttributionMethod]) -> type[AttributionMethod]:
    _REGISTRY[factory.name] = factory
    return factory


def available_methods() -> list[str]:
    from caltrain.accountability import baselines  # noqa: F401  (registers the baselines)

    return sorted(_REGISTRY)


def get_method(name: str) -> AttributionMethod:
    if name not in _REGISTRY:
        available_methods()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise UnknownMethod(f"no attribution method {name!r}; available: {available_methods()}") from None


@register
class CaltrainKnn(AttributionMethod):
    """The seed: exact cosine kNN among records labelled with the prediction, in fingerprint space."""

    name = "caltrain-knn"

    def fit(self, ts: TrainingSet) -> None:
        self._index = FingerprintIndex(ts.features.fingerprints, ts.y)

    def trace(self, queries: QueryBatch, k: int = 10) -> list[Attribution]:
        dist, pos = self._index.search(queries.features.fingerprints, k, queries.predicted)
        return [Attribution(p[p >= 0], 1.0 - d[p >= 0]) for d, p in zip(dist, pos, strict=True)]


def _knn_conflict(points: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Leave-one-out share of a record's k nearest neighbours (any label) whose label differs from its own."""
    index = FingerprintIndex(points, np.zeros(len(points), np.int64), metric="l2")
    _, pos = index.search(points, k + 1, 0)
    neighbours = pos[:, 1:]
    return (labels[neighbours] != labels[:, None]).mean(axis=1)


def _robust_z(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class robust z-score: a record is judged against its own class (classes differ in spread)."""
    z = np.zeros(len(values))
    for c in np.unique(labels):
        m = labels == c
        v = values[m]
        med = np.median(v)
        scale = max(1.4826 * float(np.median(np.abs(v - med))), float(v.std()) / 3, 1e-6)
        z[m] = (v - med) / scale
    return z


def _spectral(fingerprints: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Squared projection on the top singular direction of each class's centred fingerprints (Tran et al. 2018)."""
    out = np.zeros(len(labels))
    for c in np.unique(labels):
        m = np.flatnonzero(labels == c)
        centred = fingerprints[m] - fingerprints[m].mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        out[m] = (centred @ vt[0]) ** 2
    return out


def pixel_projection(
    x: np.ndarray, dims: int = 64, seed: int = 0
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """PCA of flattened inputs: a space the trained model cannot bend, where poison still looks like its source."""
    from sklearn.decomposition import PCA

    flat = x.reshape(len(x), -1)
    pca = PCA(n_components=min(dims, flat.shape[1]), random_state=seed).fit(flat)

    def project(batch: np.ndarray) -> np.ndarray:
        return pca.transform(batch.reshape(len(batch), -1)).astype(np.float32)

    return project(x), project


@register
class Ours(AttributionMethod):
    """Fused, calibrated attribution (see the module docstring and docs/accountability.md)."""

    name = "ours"
    neighbours = 10  # k for the leave-one-out label-conflict and the within-class smoothing
    candidates = 100  # embedding-kNN shortlist per query, re-ranked by the fused score
    abstain_z = 3.0  # blame only when the records blamed are this many robust SDs more suspicious than their class

    def fit(self, ts: TrainingSet) -> None:
        f, y = ts.features.fingerprints, ts.y
        self._y, self._index = y, FingerprintIndex(f, y)
        self._f, self._r = f, ts.features.residuals(y)
        self._h = ts.features.embeddings
        pixels, _ = pixel_projection(ts.x)
        pixel_conflict = _knn_conflict(pixels, y, self.neighbours)
        embedding_conflict = _knn_conflict(f, y, self.neighbours)
        raw = {
            # Dirty-label poison looks like its source class in input space but sits with its label in the
            # embedding (the trigger moved it there); a hard clean example conflicts in both or neither.
            "cross_space": pixel_conflict - embedding_conflict,
            # A flipped label disagrees with what the model learned from everyone else's data.
            "embedding_conflict": embedding_conflict,
            # Clean-label poison forms its own direction inside its class.
            "spectral": _spectral(f, y),
        }
        # Average each signal over the record's within-class embedding neighbourhood: poison shares one cause and
        # clusters, so its signals add up, while a clean hard example's neighbours are mostly unremarkable.
        _, nbr = self._index.search(f, self.neighbours + 1, y)
        nbr = np.where(nbr < 0, np.arange(len(y))[:, None], nbr)
        self.components = {name: _robust_z(v[nbr].mean(axis=1), y) for name, v in raw.items()}
        self._z = np.max(np.stack(list(self.components.values())), axis=0)

    def suspicion(self) -> np.ndarray:
        return self._z

    def trace(self, queries: QueryBatch, k: int = 10) -> list[Attribution]:
        """Rank each query's shortlist by embedding similarity, last-layer gradient similarity, how many other
        queries in the batch with the same prediction also shortlist the record, and its calibrated suspicion."""
        q_f = queries.features.fingerprints
        q_r = queries.features.residuals(queries.predicted)
        q_h = queries.features.embeddings
        _, shortlist = self._index.search(q_f, self.candidates, queries.predicted)
        hits = np.zeros(len(self._y))
        np.add.at(hits, shortlist[shortlist >= 0], 1.0)
        out = []
        for i, cand in enumerate(shortlist):
            cand = cand[cand >= 0]
            emb = self._f[cand] @ q_f[i]
            grad = (self._r[cand] @ q_r[i]) * (self._h[cand] @ q_h[i])  # TracIn on the classifier layer
            score = (2 * _standardize(emb) + _standardize(grad) + _standardize(hits[cand])
                     + np.clip(self._z[cand], -5.0, 20.0) / 4.0)
            att = rank_by_scores(score, cand, k)
            blame_z = float(np.median(self._z[att.positions[: self.neighbours]]))
            confidence = float(1.0 / (1.0 + np.exp(-(blame_z - self.abstain_z))))
            out.append(Attribution(att.positions, att.scores, confidence, blame_z >= self.abstain_z))
        return out


def _standardize(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / (v.std() + 1e-9) if len(v) > 1 else np.zeros_like(v, dtype=np.float64)


def rank_contributors(
    attributions: Sequence[Attribution], contributors: np.ndarray, *, k: int = 10
) -> list[tuple[int, float]]:
    """Contributors by blame summed over queries: each responsible answer spreads its confidence over its top k."""
    totals: dict[int, float] = {}
    for att in attributions:
        if not att.responsible:
            continue
        top = att.positions[:k]
        for c in contributors[top]:
            totals[int(c)] = totals.get(int(c), 0.0) + att.confidence / len(top)
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))
