"""Research baselines, host-side only: a registry of their own, never consulted by the enclave.

The enclave answers with `attribution.ENCLAVE_METHODS` alone, so a host-chosen method name cannot make it import
captum, ART or cleanlab and run them over plaintext training data. The evaluation code and the benchmarks look
methods up here (`get_host_method`), where both registries are visible. captum, ART and cleanlab are imported
inside `fit` (they cost seconds to import).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from caltrain.accountability.attribution import (
    ENCLAVE_METHODS,
    Attribution,
    AttributionMethod,
    MethodRegistry,
    QueryBatch,
    SuspicionRanking,
    TrainingSet,
    available_methods,
    knn_label_conflict,
)
from caltrain.accountability.errors import UnknownMethod
from caltrain.accountability.search import FingerprintIndex

BASELINES = MethodRegistry("host-side baseline")
register = BASELINES.register


def host_methods() -> list[str]:
    """Every method the evaluation can run: the in-enclave ones first, then the baselines."""
    return available_methods() + BASELINES.names()


def get_host_method(name: str) -> AttributionMethod:
    """An in-enclave method or a baseline by name; `UnknownMethod` names every available one."""
    for registry in (ENCLAVE_METHODS, BASELINES):
        if name in registry:
            return registry.create(name)
    raise UnknownMethod(f"no attribution method {name!r}; available: {host_methods()}")


@register
class PixelKnn(AttributionMethod):
    """Nearest records with the predicted label in raw input space; dataset level: input-space label conflict."""

    name = "pixel-knn"

    def fit(self, ts: TrainingSet) -> None:
        flat = ts.x.reshape(len(ts.x), -1)
        self._index = FingerprintIndex(flat, ts.y, metric="l2")
        self._conflict = knn_label_conflict(flat, ts.y, 10)

    def trace(self, queries: QueryBatch, k: int = 10) -> list[Attribution]:
        dist, pos = self._index.search(queries.x.reshape(len(queries.x), -1), k, queries.predicted)
        return [Attribution(p[p >= 0], -d[p >= 0]) for d, p in zip(dist, pos, strict=True)]

    def suspicion(self) -> np.ndarray:
        return self._conflict


@register
class TracInCPFast(AttributionMethod):
    """captum's TracIn over the last layer at the replayed checkpoints, in its interactive form
    (`TracInCPFastRandProj` without a projection: exact scores, each training record's per-checkpoint gradient
    factors computed once at fit, so a query batch is one matrix product); dataset level: its self-influence, the
    squared norm of those same factors."""

    name = "tracin-cp-fast"

    def fit(self, ts: TrainingSet) -> None:
        from captum.influence import TracInCPFastRandProj

        model = ts.model
        checkpoints = ts.checkpoints or [model.state_dict()]

        def load(model: nn.Module, state: dict[str, object]) -> float:
            model.load_state_dict(state)
            return 1.0

        final = {k: v.clone() for k, v in model.state_dict().items()}
        data = torch.utils.data.TensorDataset(torch.from_numpy(ts.x), torch.from_numpy(ts.y))
        with warnings.catch_warnings():  # the factors held in memory: classes × last-layer inputs × checkpoints
            warnings.filterwarnings("ignore", message=".*stores quantities related to the entire")
            self._tracin = TracInCPFastRandProj(model, model[-1], data, checkpoints, checkpoints_load_func=load,
                                                loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=2048,
                                                nearest_neighbors=_exact_neighbours(), projection_dim=None)
        self._self = (self._tracin.src_intermediate_quantities**2).sum(dim=1).numpy()
        model.load_state_dict(final)
        self._y, self._final = ts.y, final

    def trace(self, queries: QueryBatch, k: int = 10) -> list[Attribution]:
        scores = self._tracin.influence((torch.from_numpy(queries.x), torch.from_numpy(queries.predicted)), k=None)
        scores = scores.numpy()
        self._tracin.model.load_state_dict(self._final)
        out = []
        for row, label in zip(scores, queries.predicted, strict=True):
            cand = np.flatnonzero(self._y == label)
            order = np.argsort(-row[cand], kind="stable")[:k]
            out.append(Attribution(cand[order], row[cand][order]))
        return out

    def suspicion(self) -> np.ndarray:
        return self._self


def _exact_neighbours() -> object:
    """captum's interactive TracIn indexes the training factors for its top-k search (annoy by default, which is
    not installed); `trace` ranks the full score matrix itself, so an exact inner-product search does."""
    from captum.influence._utils.nearest_neighbors import NearestNeighbors

    class ExactNeighbours(NearestNeighbors):
        def setup(self, data: torch.Tensor) -> None:
            self._data = data.flatten(1)

        def get_nearest_neighbors(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            top = torch.topk(query.flatten(1) @ self._data.T, k, dim=1)
            return top.indices, top.values

    return ExactNeighbours()


def _embedding_classifier(ts: TrainingSet) -> object:
    """ART classifier over the embedding network: AC/SS read the last registered layer, so make that the embedding."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=ts.model[:-1], loss=nn.CrossEntropyLoss(), input_shape=ts.x.shape[1:],
                             nb_classes=ts.num_classes)


def _onehot(y: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[y]


@register
class ActivationClustering(SuspicionRanking):
    """ART ActivationDefence (2-means per class on PCA-10 embeddings); score = flagged + distance to kept centroid."""

    name = "art-activation"

    def score(self, ts: TrainingSet) -> np.ndarray:
        from art.defences.detector.poison import ActivationDefence

        defence = ActivationDefence(_embedding_classifier(ts), ts.x, _onehot(ts.y, ts.num_classes))
        _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis="smaller")
        flagged = 1.0 - np.asarray(is_clean, dtype=np.float64)
        # A continuous tie-break from the defence's own reduced activations: distance to the class centroid.
        dist = np.zeros(len(ts.y))
        for c, red in enumerate(defence.red_activations_by_class):
            idx = np.flatnonzero(ts.y == c)
            if len(idx):
                d = np.linalg.norm(red - red.mean(axis=0), axis=1)
                dist[idx] = d / (d.max() + 1e-9)
        return flagged + 0.5 * dist


@register
class SpectralSignature(SuspicionRanking):
    """ART SpectralSignatureDefense on the embedding; score = its per-class spectral outlier score."""

    name = "art-spectral"

    def score(self, ts: TrainingSet) -> np.ndarray:
        from art.defences.detector.poison import SpectralSignatureDefense

        defence = SpectralSignatureDefense(_embedding_classifier(ts), ts.x, _onehot(ts.y, ts.num_classes),
                                           expected_pp_poison=0.05, batch_size=512, eps_multiplier=1.5)
        report, _ = defence.detect_poison()
        scores = np.zeros(len(ts.y))
        emb = ts.features.embeddings
        for c in range(ts.num_classes):
            idx = np.flatnonzero(ts.y == c)
            if len(idx) > 1:
                scores[idx] = SpectralSignatureDefense.spectral_signature_scores(emb[idx]).ravel()
        flagged = np.zeros(len(ts.y))
        flagged[[int(i) for i in report]] = 1.0
        return flagged + scores / (scores.max() + 1e-9)


@register
class CleanlabIssues(SuspicionRanking):
    """cleanlab find_label_issues on 5-fold out-of-fold probabilities of a logistic regression on the embeddings."""

    name = "cleanlab"

    def score(self, ts: TrainingSet) -> np.ndarray:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_predict

        probs = cross_val_predict(LogisticRegression(max_iter=300), ts.features.fingerprints, ts.y, cv=5,
                                  method="predict_proba")
        issues = find_label_issues(ts.y, probs)
        return issues.astype(np.float64) + 1.0 - get_label_quality_scores(ts.y, probs)
