"""Attribution: which training records (and contributors) are responsible for a misprediction, behind one interface.

Every method is fitted once on the enclave's view of the training set (`TrainingSet`) and then answers per-query
rankings of the records labelled with the predicted class, plus, where it has one, a dataset-level suspicion score
for every record. `caltrain-knn` is the seed (embedding kNN); `ours` scores every record by how much it looks like
another class in input space, pooled over its embedding cluster and over its contributor's records of that class,
and abstains ("no responsible training data found") when the records it would blame come from no contributor group
that stands out against all groups.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import ClassVar

import numpy as np
from torch import nn

from caltrain.accountability.errors import MethodAlreadyRegistered, UnknownMethod
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


class MethodRegistry:
    """Attribution methods by name. Refuses to overwrite a name: a later import must not silently replace what a
    caller asked for. The enclave's registry (`ENCLAVE_METHODS`) holds only the methods meant to run inside it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._factories: dict[str, Callable[[], AttributionMethod]] = {}

    def register(self, factory: type[AttributionMethod]) -> type[AttributionMethod]:
        if factory.name in self._factories:
            raise MethodAlreadyRegistered(f"{self.what}: a method named {factory.name!r} is already registered")
        self._factories[factory.name] = factory
        return factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def create(self, name: str) -> AttributionMethod:
        try:
            return self._factories[name]()
        except KeyError:
            raise UnknownMethod(f"no {self.what} attribution method {name!r}; available: {self.names()}") from None


ENCLAVE_METHODS = MethodRegistry("enclave")
register = ENCLAVE_METHODS.register


def available_methods() -> list[str]:
    """The methods the enclave answers forensic queries with (research baselines live host-side, in `baselines`)."""
    return ENCLAVE_METHODS.names()


def get_method(name: str) -> AttributionMethod:
    """A fresh, unfitted in-enclave method; `UnknownMethod` (naming the available ones) for any other name."""
    return ENCLAVE_METHODS.create(name)


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


def _group_z(values: np.ndarray, labels: np.ndarray, contributors: np.ndarray) -> tuple[np.ndarray, int]:
    """Per record, the z-score of its (class, contributor) group's mean against the null that contributors are
    unrelated to `values`: a random n of the class's N records has a mean with standard error
    sd/√n · √((N−n)/(N−1)). Poison is supplied in bulk by few contributors; honest groups follow the null.
    Also returns the number of groups (for a familywise threshold)."""
    z = np.zeros(len(values))
    groups = 0
    for c in np.unique(labels):
        in_class = labels == c
        big_n, mean, sd = int(in_class.sum()), float(values[in_class].mean()), float(values[in_class].std())
        for who in np.unique(contributors[in_class]):
            group = in_class & (contributors == who)
            n = int(group.sum())
            groups += 1
            if n < big_n and sd > 0:
                se = sd / np.sqrt(n) * np.sqrt((big_n - n) / (big_n - 1))
                z[group] = (float(values[group].mean()) - mean) / se
    return z, groups


@register
class Ours(AttributionMethod):
    """Input-space label conflict pooled over embedding clusters and over contributors; abstains when the records
    it would blame come from no contributor group that stands out (see docs/accountability.md)."""

    name = "ours"
    neighbours = 10  # k of the input-space label conflict
    cluster = 0.025  # share of its class a record's conflict is averaged over (half a 0.5%-of-data poison set)
    max_cluster = 20
    candidates = 5000  # exact embedding shortlist per query (the whole class at benchmark sizes)
    familywise = 1e-3  # chance that some honest group is blamed, under the null (Bonferroni over groups)
    evidence = 10  # top answers whose groups decide whether anyone is to blame

    def fit(self, ts: TrainingSet) -> None:
        f, y = ts.features.fingerprints, ts.y
        self._index = FingerprintIndex(f, y)
        pixels, _ = pixel_projection(ts.x)
        # Poisoned or flipped records look like another class in input space (the model cannot bend pixels).
        conflict = _knn_conflict(pixels, y, self.neighbours)
        # Poison shares one cause, so the model puts it in a tight cluster of its label: averaging over the
        # record's within-class embedding neighbours adds poison up and dilutes an isolated hard clean example.
        sizes = np.bincount(y)
        k = int(np.clip(round(self.cluster * np.median(sizes[sizes > 0])), 3, self.max_cluster))
        _, nbr = self._index.search(f, k + 1, y)
        nbr = np.where(nbr < 0, np.arange(len(y))[:, None], nbr)
        record = conflict[nbr].mean(axis=1)
        # Blame needs a group far outside the null: one-sided p < familywise / groups (z ≈ 4.4 for 110 groups).
        group_z, groups = _group_z(record, y, ts.contributors)
        threshold = NormalDist().inv_cdf(1.0 - self.familywise / groups)
        # The group's evidence saturates: every clearly anomalous group (each colluder) gets the same lift, and
        # within them records are told apart by their own score, nearer the query first among equals.
        self._group_confidence = 1.0 / (1.0 + np.exp(-2.0 * (group_z - threshold)))
        self._suspicion = record + self._group_confidence

    def suspicion(self) -> np.ndarray:
        return self._suspicion

    def trace(self, queries: QueryBatch, k: int = 10) -> list[Attribution]:
        """Shortlist the records with the predicted label nearest the query and rank them by suspicion, nearer
        first among equals (weighting similarity in lowered P@10 in every scenario measured); blame only when those
        records come from contributor groups far outside the null."""
        _, shortlist = self._index.search(queries.features.fingerprints, self.candidates, queries.predicted)
        out = []
        for cand in shortlist:
            cand = cand[cand >= 0]
            att = rank_by_scores(self._suspicion[cand], cand, k)
            top = att.positions[: self.evidence]
            confidence = float(np.median(self._group_confidence[top]))
            out.append(Attribution(att.positions, att.scores, confidence, confidence >= 0.5))
        return out


def rank_contributors(
    attributions: Sequence[Attribution], contributors: np.ndarray, *, k: int = 10, labels: np.ndarray | None = None
) -> list[tuple[int, float]]:
    """Contributors by blame summed over responsible answers: each answer gives a contributor its confidence times
    the share of the top k it supplied; with `labels`, divided by the contributor's share of that class (a big
    honest contributor shows up in answers by chance, which alone is no blame), so 1.0 means "as often as chance"."""
    totals: dict[int, float] = {}
    for att in attributions:
        if not att.responsible or not len(att.positions):
            continue
        top = contributors[att.positions[:k]]
        in_class = contributors if labels is None else contributors[labels == labels[att.positions[0]]]
        for c in np.unique(top):
            share = 1.0 if labels is None else float(np.mean(in_class == c))
            totals[int(c)] = totals.get(int(c), 0.0) + att.confidence * float(np.mean(top == c)) / share
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))
