"""Attribution: which training records (and contributors) are responsible for a misprediction, behind one interface.

Every method is fitted once on the enclave's view of the training set (`TrainingSet`) and then answers, per query,
a ranking of the records labelled with the predicted class, whether training data explains the misprediction at
all, and the records the answer rests on; plus, where it has one, a dataset-level suspicion score for every record.
`caltrain-knn` is the paper's method (embedding kNN, always answers); `ours` decides per query from four tests on
the input itself (does what sets it apart send other inputs to the predicted class; does it sit in a pocket of
records whose label their look contradicts; does its neighbourhood stop voting for the prediction once the most
label-surprising records are set aside; does the model's last part, refitted without them, stop predicting it),
calibrated together, and otherwise answers "no responsible training data found".
Contributors are named by set detection with an exact false-positive control (`name_contributors`). Only the
methods meant to run inside the enclave are registered here; research baselines live host-side (`baselines`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from torch import nn

from caltrain.accountability.errors import MethodAlreadyRegistered, UnknownMethod
from caltrain.accountability.fingerprints import Features, channels_last, compute_features
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

    def select(self, index: np.ndarray) -> QueryBatch:
        return QueryBatch(self.x[index], self.features.select(index), self.predicted[index])


@dataclass(frozen=True)
class Attribution:
    """One query's answer: record positions best first, their scores, and whether anyone is to blame."""

    positions: np.ndarray
    scores: np.ndarray
    confidence: float = 1.0
    responsible: bool = True
    support: np.ndarray | None = None  # the records the answer rests on (None: the first ten positions)
    details: dict[str, float] = field(default_factory=dict)  # per-query evidence the method reports
    level: float | None = None  # chance that a query no training data explains is answered anyway (None: always)

    @property
    def evidence_records(self) -> np.ndarray:
        """What contributor naming counts: `support`, or the first ten positions for methods without one."""
        return self.positions[:10] if self.support is None else self.support


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


def _first_where(nearest: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first `k` positions of `nearest` (-1 for none) where `keep` holds, in order, padded with -1."""
    keep = keep & (nearest >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out = np.full((len(nearest), k), -1, np.int64)
    out[:, : order.shape[1]] = np.where(np.take_along_axis(keep, order, axis=1),
                                        np.take_along_axis(nearest, order, axis=1), -1)
    return out


def leave_one_out_neighbours(points: np.ndarray, k: int, *, approximate: bool = False) -> np.ndarray:
    """Each point's k nearest other points (L2; -1 where an approximate search finds fewer)."""
    index = FingerprintIndex(points, np.zeros(len(points), np.int64), metric="l2", approximate=approximate)
    _, pos = index.search(points, k + 1, 0)
    return pos[:, 1:]


def other_party_neighbours(points: np.ndarray, parties: np.ndarray, nearest: np.ndarray, k: int, *,
                           approximate: bool = False) -> np.ndarray:
    """Each point's k nearest points supplied by *other* parties (L2; -1 where there are fewer), taken from
    `nearest` (each point's nearest other points, a leave-one-out search) where it holds k of them, else searched
    among the other parties' points. A party (a contributor, or contributors acting as one: `acting_parties`)
    cannot vouch for its own labels: records that share one transformation (a warp, a blend, a device) look like
    each other, and a poisoner's records then look like their poisoned label."""
    out = _first_where(nearest, parties[np.maximum(nearest, 0)] != parties[:, None], k)
    short = np.flatnonzero((out < 0).any(axis=1))
    for who in np.unique(parties[short]):
        rows, rest = short[parties[short] == who], np.flatnonzero(parties != who)
        if len(rest):
            index = FingerprintIndex(points[rest], np.zeros(len(rest), np.int64), metric="l2", approximate=approximate)
            _, pos = index.search(points[rows], k, 0)
            out[rows] = np.where(pos >= 0, rest[np.maximum(pos, 0)], -1)
    return out


def acting_parties(labels: np.ndarray, contributors: np.ndarray, nearest: np.ndarray, *, ratio: float = 2.0,
                   alpha: float = 1e-3) -> np.ndarray:
    """Per record, the party its contributor acts as one with: contributors whose records are each other's
    look-alikes (`nearest`, -1 for none) at least `ratio` times as often as their shares of each neighbour's class
    predict, beyond chance (Poisson, Bonferroni `alpha` over pairs), are one party, and so, transitively, are their
    partners. One poisoner behind many identities shares one transformation across them; honest contributors, even
    label-skewed or behind another device, look like each other only as often as their class shares say."""
    ids, who = np.unique(contributors, return_inverse=True)
    if len(ids) < 2:
        return who
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.stats import poisson

    n, classes = len(ids), int(labels.max()) + 1
    share = np.bincount(labels * n + who, minlength=classes * n).reshape(classes, n).astype(float)
    share /= np.maximum(share.sum(axis=1, keepdims=True), 1.0)  # each contributor's share of each class
    found = nearest >= 0
    rows, linked = np.broadcast_to(who[:, None], nearest.shape)[found], nearest[found]
    links = np.bincount(rows * n + who[linked], minlength=n * n).reshape(n, n).astype(float)
    by_class = np.bincount(rows * classes + labels[linked], minlength=n * classes).reshape(n, classes)
    expected = by_class @ share
    links, expected = links + links.T, expected + expected.T
    a, b = np.triu_indices(n, 1)
    # halved: a mutual pair of look-alikes is counted from both ends
    p = poisson.sf(np.ceil(links[a, b] / 2) - 1, expected[a, b] / 2)
    joined = (links[a, b] >= ratio * expected[a, b]) & (p < alpha / len(a))
    graph = coo_matrix((np.ones(int(joined.sum())), (a[joined], b[joined])), shape=(n, n))
    return connected_components(graph, directed=False)[1][who]


def knn_label_conflict(points: np.ndarray, labels: np.ndarray, k: int, *, approximate: bool = False) -> np.ndarray:
    """Leave-one-out share of a record's k nearest neighbours (any label) whose label differs from its own."""
    return _label_conflict(leave_one_out_neighbours(points, k, approximate=approximate), labels)


def _neighbour_cost(neighbours: np.ndarray, labels: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per record, the mean of cost[neighbour's label, own label] over the neighbours found (-1: none)."""
    found = neighbours >= 0
    each = cost[labels[np.maximum(neighbours, 0)], labels[:, None]]
    return np.where(found, each, 0.0).sum(axis=1) / np.maximum(found.sum(axis=1), 1)


def _label_conflict(neighbours: np.ndarray, labels: np.ndarray) -> np.ndarray:
    classes = int(labels.max()) + 1 if len(labels) else 0
    return _neighbour_cost(neighbours, labels, 1.0 - np.eye(classes))


def pixel_projection(
    x: np.ndarray, dims: int = 64, seed: int = 0
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """PCA of flattened inputs: a space the trained model cannot bend, where poison still looks like its source."""
    from sklearn.decomposition import PCA

    flat = x.reshape(len(x), -1)
    pca = PCA(n_components=min(dims, *flat.shape), random_state=seed).fit(flat)

    def project(batch: np.ndarray) -> np.ndarray:
        return pca.transform(batch.reshape(len(batch), -1)).astype(np.float32)

    return project(x), project


def label_surprise(neighbours: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per record: how unlikely its label is, given its neighbours' labels (`neighbours`: positions, -1 for none)
    and how readily the model itself takes one class for another. A neighbour of class a costs −log of the
    geometric-mean probability the model gives the record's class c over the records of class a: a T-shirt among
    shirts costs little (the model confuses them too), a T-shirt among trousers a lot. That is the signature of
    dirty-label poison, which keeps its source class's look; a poisoned minority cannot move the model's view of
    the source class, whose own trigger-free records keep their label."""
    num_classes = probs.shape[1]
    log_probs = np.log(np.maximum(probs, 1e-6))
    confusable = np.zeros((num_classes, num_classes))
    for a in np.unique(labels):
        confusable[a] = log_probs[labels == a].mean(axis=0)
    np.fill_diagonal(confusable, 0.0)
    return _neighbour_cost(neighbours, labels, -confusable)


def _within_class_cluster(ts: TrainingSet, index: FingerprintIndex, cluster: int) -> np.ndarray:
    """Each record's `cluster` + 1 nearest records of its own label in the embedding (itself among them), what a
    per-record score is pooled over: dirty-label poison shares one cause, so the model puts it in a tight cluster
    where its score adds up, while an isolated hard clean record is diluted."""
    _, nbr = index.search(ts.features.fingerprints, cluster + 1, ts.y)
    return np.where(nbr < 0, np.arange(len(ts.y))[:, None], nbr)


def _nearest(index: FingerprintIndex, points: np.ndarray, k: int, exclude: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest records of any label (distances, positions); `exclude`: per point, a position to leave out
    (the point itself, when it is a training record)."""
    dist, pos = index.search(points, k + 1)
    if exclude is None:
        return dist[:, :k], pos[:, :k]
    keep = np.array([(row != own) | (own < 0) for row, own in zip(pos, exclude, strict=True)])
    return (np.array([row[m][:k] for row, m in zip(dist, keep, strict=True)]),
            np.array([row[m][:k] for row, m in zip(pos, keep, strict=True)]))


def _moved_support(near_d: np.ndarray, near: np.ndarray, away_d: np.ndarray, away: np.ndarray, labels: np.ndarray,
                   predicted: np.ndarray) -> np.ndarray:
    """Per input: how much nearer its nearest records (`near`, at `near_d`) are than its nearest once some are
    taken away (`away`, at `away_d`), times how much of their vote for the predicted class goes with those taken:
    a kNN stand-in for "remove them and retrain"."""
    votes = _carries(near, labels, predicted).mean(axis=1) - _carries(away, labels, predicted).mean(axis=1)
    return (_finite_mean(away_d) - _finite_mean(near_d)) * np.clip(votes, 0.0, None)


def _carries(positions: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per input, which of its found records (`positions`, -1 for none) carry its predicted label."""
    return (positions >= 0) & (labels[np.maximum(positions, 0)] == predicted[:, None])


def _finite_mean(distances: np.ndarray) -> np.ndarray:
    """Row means over the distances a search found (an approximate one pads with inf); 0 for a row with none."""
    found = np.isfinite(distances)
    return np.where(found, distances, 0.0).sum(axis=1) / np.maximum(found.sum(axis=1), 1)


def head_inputs(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """What the model's last two blocks see, flattened: the input of the block before the classifier (for a CNN
    with a hidden layer, the last convolutional features; where that block is a flatten, the embedding itself)."""
    import torch

    body = model[:-2]  # type: ignore[index]
    with torch.no_grad():
        parts = [body(torch.as_tensor(x[start : start + batch_size], dtype=torch.float32)).flatten(1).numpy()
                 for start in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def head_draw(total: int, width: int, *, records: int, floats: int) -> np.ndarray:
    """Which of `total` records the last blocks are refitted on, sorted: all of them, or one seeded draw of at most
    `records`, fewer where their `width`-wide inputs would hold more than `floats` values (wide features: memory,
    not the record count, is then the bound)."""
    n = min(total, records, max(floats // max(width, 1), 1))
    return np.sort(np.random.default_rng(0).permutation(total)[:n])


class LinearHead:
    """A softmax classifier on standardised features, fitted by one fixed recipe (from zero, L-BFGS, L2
    `weight_decay`, each class's records weighted by `class_weights`): the model's last blocks refitted as one
    linear map, so that two fits that differ only in their records differ only by what those records taught it."""

    iterations = 100

    def __init__(self, features: np.ndarray, labels: np.ndarray, classes: int, *, mean: np.ndarray,
                 scale: np.ndarray, weight_decay: float, class_weights: np.ndarray | None = None) -> None:
        import torch

        self._mean, self._scale = mean, scale
        x, y = torch.from_numpy(self._standardised(features)), torch.from_numpy(np.asarray(labels, np.int64))
        self._layer = torch.nn.Linear(x.shape[1], classes)
        torch.nn.init.zeros_(self._layer.weight)
        torch.nn.init.zeros_(self._layer.bias)
        solver = torch.optim.LBFGS(self._layer.parameters(), max_iter=self.iterations, history_size=20,
                                   line_search_fn="strong_wolfe")
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)

        def loss() -> torch.Tensor:
            solver.zero_grad()
            value = (torch.nn.functional.cross_entropy(self._layer(x), y, weight=weight)
                     + weight_decay * self._layer.weight.pow(2).sum())
            value.backward()
            return value

        solver.step(loss)

    def _standardised(self, features: np.ndarray) -> np.ndarray:
        return ((features - self._mean) / self._scale).astype(np.float32)

    def probs(self, features: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            logits = self._layer(torch.from_numpy(self._standardised(features)))
            return torch.softmax(logits, dim=1).numpy()


def _exceeds(value: float, null: np.ndarray) -> float:
    """Empirical one-sided p-value of `value` against the sorted `null` samples (never 0)."""
    return float((1 + len(null) - np.searchsorted(null, value, side="left")) / (1 + len(null)))


@dataclass(frozen=True)
class JointNull:
    """Several tests' statistics on the same null inputs (larger is more suspicious), calibrated as one: an
    input's evidence is the harmonic mean of its p-values over the tests (Wilson 2019: dominated by the smallest,
    yet two moderately small ones count for more than one), and its joint p-value is the share of null inputs
    whose own harmonic mean (each left out of its column) is as small. So "the tests together fire" keeps its
    measured rate, whatever the tests' correlation, where Bonferroni would only bound it."""

    columns: np.ndarray  # N×tests, each column sorted
    evidence: np.ndarray  # the null inputs' own harmonic-mean p-values, sorted

    @classmethod
    def of(cls, statistics: np.ndarray) -> JointNull:
        n = len(statistics)
        columns = np.sort(statistics, axis=0)
        below = np.stack([np.searchsorted(columns[:, j], statistics[:, j], side="left")
                          for j in range(statistics.shape[1])], axis=1)
        return cls(columns, np.sort(harmonic_mean_p((n - below) / max(n, 1))))

    def p_values(self, row: np.ndarray) -> tuple[float, list[float]]:
        """The joint p-value of one input's statistics, and each test's own."""
        each = [_exceeds(value, self.columns[:, j]) for j, value in enumerate(row)]
        at = np.searchsorted(self.evidence, float(harmonic_mean_p(np.array(each))), side="right")
        return float((1 + at) / (1 + len(self.evidence))), each


def harmonic_mean_p(p_values: np.ndarray) -> np.ndarray:
    """The harmonic mean of p-values (none of them 0) over the last axis: how the tests' evidence is pooled before
    calibration."""
    return p_values.shape[-1] / np.sum(1.0 / p_values, axis=-1)


# how each per-query test's statistic is reported in an answer's details
STATISTIC_KEYS = {"transplant": "transplant", "neighbourhood": "neighbourhood_conflict",
                  "set_aside": "set_aside_support", "retrained_head": "retrained_head_drop"}


@register
class Ours(AttributionMethod):
    """Per misprediction, four tests on *that input*, calibrated together against a null measured on this model,
    then the records behind it (see docs/accountability.md):

    - transplant: the query minus the mean of its nearest look-alikes of other classes (in input space) is what
      sets it apart from inputs the model handles. Added to the inputs of every other class that the model is
      surest of, does it raise their probability of the predicted class? A backdoor trigger does (that is what a
      trigger is); what makes an input naturally confusable does not carry over to other inputs;
    - mislabelled neighbourhood: the training records of the predicted class nearest the query in the model's
      embedding look like another class in input space (label flips, dirty-label poison);
    - set-aside support: with the most label-surprising records set aside (`label_surprise`, among any party's
      look-alikes or among other parties' only, whichever is larger: a party cannot vouch for its own labels), the
      query's nearest records move further away and stop voting for the predicted class. The query's prediction
      rests on those records; this needs no additive trigger (a warp, a partial blend);
    - retrained head: the model's last two blocks refitted as one linear map on their input (`head_inputs`), once on
      every record and once without the set-aside ones, by the same recipe: how much probability of the predicted
      class does the second take away? A cheap "remove the suspicious records and retrain": a backdoor's poison
      is what taught the last blocks to send the trigger's features to the target, a natural confusion's
      features are sent there by ordinary records.

    Null: the statistics for the training inputs of other classes that the model takes for c' (its natural
    confusions), for every class c' other than the predicted one, so an attack on the predicted class cannot move
    its own null. A query's evidence is the harmonic mean of its p-values over the tests, and its answer is
    "responsible" when that is smaller than all but an `alpha` share of the null inputs' own: the tests are
    calibrated as one, whatever their correlation. Records: the nearest of the predicted class in the
    embedding, ranked by similarity plus their pooled conflict plus how much of the query's distinctive part
    they share (`_sharing`: a trigger's carriers share it); the best-ranked share of the class is the answer's
    support, which contributor naming counts. The dataset-level ranking (`suspicion`) is the pooled input-space
    label conflict.
    """

    name = "ours"
    neighbours = 10  # k of the input-space label conflict and surprise
    overfetch = 4  # input-space neighbours searched per k, among which the surprise's other contributors are sought
    cluster_share = 0.01  # within-class embedding neighbourhood a record's score is pooled over, share of class
    support_share = 0.025  # best-ranked records an answer rests on (what contributor naming counts), share of the
    # predicted class: a quarter of a poison set of 1% of the data, at least 10, at most `candidates`
    surroundings = 20  # nearest records of any label the mislabelled-neighbourhood test looks at
    set_aside = 0.15  # share of all records, most label-surprising first, the set-aside test takes away
    support_neighbours = 50  # nearest records of any label the set-aside test compares, with and without them
    candidates = 100  # records ranked per query
    lookalikes = 10  # a query's nearest records of other classes in input space: what it looks like
    recipients_per_class = 2  # surest inputs of each other class the query's distinctive part is added to
    null_inputs = 300  # per class: inputs the null is measured on, at most
    null_minimum = 50  # per class: inputs the null is measured on, at least
    alpha = 0.01  # per-query false-answer rate, the tests together, against the null
    min_transfer = 0.2  # smallest mean rise in probability that counts as moving other inputs at all
    ranking_weight = 1.0  # suspicion's weight against cosine similarity in the per-query ranking
    sharing_weight = 1.0  # the shared distinctive part's weight in the per-query ranking (`_sharing`)
    head_decay = 1e-2  # L2 weight of the refitted last blocks (on standardised features)
    head_records = 100_000  # records the last blocks are refitted on, at most (a seeded draw)
    head_floats = 2**27  # values their inputs may hold, at most (512 MiB of float32): wide features, fewer records
    exact_up_to = 200_000  # records; above, neighbour searches use HNSW graphs (exact ones cost N² to fit)
    tests: tuple[str, ...] = tuple(STATISTIC_KEYS)  # which per-query tests run (a subset: an ablation)

    def fit(self, ts: TrainingSet) -> None:
        if not self.tests or not set(self.tests) <= set(STATISTIC_KEYS):
            raise ValueError(f"tests must be some of {sorted(STATISTIC_KEYS)}, got {list(self.tests)}")
        self._ts = ts
        approximate = len(ts.y) > self.exact_up_to
        self._index = FingerprintIndex(ts.features.fingerprints, ts.y, approximate=approximate)
        pixels, self._project = pixel_projection(ts.x)
        self._pixel_index = FingerprintIndex(pixels, ts.y, metric="l2", approximate=approximate)
        sizes = np.bincount(ts.y, minlength=ts.num_classes)
        cluster = int(np.clip(round(self.cluster_share * np.median(sizes[sizes > 0])), 3, 20))
        self._support = np.clip(np.round(self.support_share * sizes), 10, self.candidates).astype(int)
        nearest = leave_one_out_neighbours(pixels, self.overfetch * self.neighbours, approximate=approximate)
        look_alikes = nearest[:, : self.neighbours]
        pool = _within_class_cluster(ts, self._index, cluster)
        self._suspicion = _label_conflict(look_alikes, ts.y)[pool].mean(axis=1)
        # surprising among anyone's look-alikes (records amid mislabelled ones) or among other parties' (a party,
        # however many identities it acts through, cannot vouch for its own labels)
        parties = acting_parties(ts.y, ts.contributors, nearest)
        others = other_party_neighbours(pixels, parties, nearest, self.neighbours, approximate=approximate)
        surprise = np.maximum(label_surprise(look_alikes, ts.y, ts.features.probs),
                              label_surprise(others, ts.y, ts.features.probs))[pool].mean(axis=1)
        self._kept = np.flatnonzero(surprise <= np.quantile(surprise, 1.0 - self.set_aside))
        # each record's look-alikes of other labels (what sets a record apart is itself minus their mean): the
        # first of its neighbours above that carry another label, searched anew only where they are too few
        alikes = _first_where(nearest, ts.y[np.maximum(nearest, 0)] != ts.y[:, None], self.lookalikes)
        few = np.flatnonzero((alikes < 0).any(axis=1))
        alikes[few] = self._pixel_index.search_other_labels(pixels[few], self.lookalikes, ts.y[few])[1]
        self._record_alikes = alikes
        self._kept_index = FingerprintIndex(ts.features.fingerprints[self._kept], ts.y[self._kept],
                                            approximate=approximate)
        self._fast_model = channels_last(ts.model)  # the per-query forward passes: the hot path
        if "retrained_head" in self.tests:
            # one seeded draw for both fits (`head_draw`); the second leaves the set-aside out
            width = head_inputs(self._fast_model, ts.x[:1]).shape[1]
            drawn = head_draw(len(ts.y), width, records=self.head_records, floats=self.head_floats)
            kept = np.isin(drawn, self._kept)
            inputs = head_inputs(self._fast_model, ts.x[drawn])
            recipe = {"mean": inputs.mean(axis=0), "scale": inputs.std(axis=0) + 1e-6,
                      "weight_decay": self.head_decay}
            # each class keeps its weight without the set-aside records: setting many of one class aside (a
            # clean-label poison is most of its class) must not shrink the class, only change who teaches it
            labels = ts.y[drawn]
            weights = (np.bincount(labels, minlength=ts.num_classes)
                       / np.maximum(np.bincount(labels[kept], minlength=ts.num_classes), 1))
            self._heads = (LinearHead(inputs, labels, ts.num_classes, **recipe),
                           LinearHead(inputs[kept], labels[kept], ts.num_classes, **recipe, class_weights=weights))
        # Recipients: the inputs of each class the model is surest of, so that only a strong feature moves them.
        sure = ts.features.probs[np.arange(len(ts.y)), ts.y]
        pools = {c: idx[np.argsort(-sure[idx], kind="stable")][: self.recipients_per_class]
                 for c in range(ts.num_classes) if len(idx := np.flatnonzero(ts.y == c))}
        self._recipients = {c: np.concatenate([pool for other, pool in pools.items() if other != c]
                                              or [np.zeros(0, np.int64)])
                            for c in range(ts.num_classes)}
        self._base = {c: compute_features(self._fast_model, ts.x[r]).probs[:, c]
                      for c, r in self._recipients.items()}
        nulls: dict[int, np.ndarray] = {}
        for c in range(ts.num_classes):
            # training inputs of other classes the model takes for c (what a natural confusion is), topped up
            # with the most c-like ones when there are few
            others = np.flatnonzero(ts.y != c)
            confused = ts.features.predictions[others] == c
            near = others[np.lexsort((-ts.features.probs[others, c], ~confused))]
            sample = near[: min(max(int(confused.sum()), self.null_minimum), self.null_inputs)]
            if len(sample) and len(self._recipients[c]):
                nulls[c] = self._tested(self._statistics(ts.x[sample], ts.features.select(sample),
                                                         np.full(len(sample), c), exclude=sample))
        # per predicted class c: the null inputs of every other class
        self._null = {c: JointNull.of(np.concatenate([v for other, v in nulls.items() if other != c]
                                                     or [np.zeros((1, len(self.tests)))]))
                      for c in range(ts.num_classes)}

    def suspicion(self) -> np.ndarray:
        return self._suspicion

    def _statistics(self, x: np.ndarray, features: Features, predicted: np.ndarray, *,
                    exclude: np.ndarray | None = None, parts: np.ndarray | None = None) -> np.ndarray:
        """Per input, the statistics of `tests`, in that order (larger is more suspicious). The pocket and set-aside
        tests share one search of the nearest records of any label; the transplant takes `parts` when given."""
        fingerprints = features.fingerprints
        near_d, near = _nearest(self._index, fingerprints, max(self.surroundings, self.support_neighbours), exclude)
        pocket = near[:, : self.surroundings]
        near_d, near = near_d[:, : self.support_neighbours], near[:, : self.support_neighbours]
        run: dict[str, Callable[[], np.ndarray]] = {
            "transplant": lambda: self._transfer(self._distinctive_parts(x, predicted) if parts is None else parts,
                                                 predicted),
            "neighbourhood": lambda: self._neighbourhood(pocket, predicted),
            "set_aside": lambda: self._set_aside_support(near_d, near, fingerprints, predicted, exclude),
            "retrained_head": lambda: self._retrained_head_drop(x, predicted),
        }
        return np.stack([run[name]() for name in self.tests], axis=1)

    def _tested(self, statistics: np.ndarray) -> np.ndarray:
        """What the null compares: a transplant below `min_transfer` counts as none at all."""
        out = statistics.copy()
        if "transplant" in self.tests:
            col = self.tests.index("transplant")
            out[:, col] = np.where(out[:, col] >= self.min_transfer, out[:, col], -np.inf)
        return out

    def _neighbourhood(self, near: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Per input, over its nearest training records of any label in the embedding (`near`, its surroundings):
        the share carrying the predicted label, squared, times their mean pooled conflict. High when the input sits
        in a pocket of records labelled with the prediction that look like another class."""
        same = _carries(near, self._ts.y, predicted)
        purity = same.mean(axis=1)
        conflict = np.where(same, self._suspicion[np.maximum(near, 0)], 0.0).sum(axis=1) / np.maximum(same.sum(1), 1)
        return purity**2 * conflict

    def _set_aside_support(self, near_d: np.ndarray, near: np.ndarray, fingerprints: np.ndarray,
                           predicted: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
        """Per input: `_moved_support` when the most label-surprising records are set aside."""
        kept = self._kept
        if exclude is not None:  # to positions in the kept index (-1, matching nothing, for one set aside)
            at = np.minimum(np.searchsorted(kept, exclude), len(kept) - 1)
            exclude = np.where(kept[at] == exclude, at, -1)
        kept_d, kept_near = _nearest(self._kept_index, fingerprints, near.shape[1], exclude)
        kept_near = np.where(kept_near >= 0, kept[np.maximum(kept_near, 0)], -1)  # local positions to records
        return _moved_support(near_d, near, kept_d, kept_near, self._ts.y, predicted)

    def _retrained_head_drop(self, x: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Per input: how much probability of the predicted class the model's last blocks, refitted without the
        set-aside records, take away, against the same refitted on every record by the same recipe."""
        inputs, rows = head_inputs(self._fast_model, x), np.arange(len(predicted))
        full, kept = (head.probs(inputs)[rows, predicted] for head in self._heads)
        return full - kept

    def _distinctive_parts(self, x: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Per input: what sets it apart from the inputs it looks like, i.e. itself minus the mean of its nearest
        look-alikes (in input space) of other classes than the predicted one; zero when it has none."""
        train = self._ts.x
        _, alike = self._pixel_index.search_other_labels(self._project(x), self.lookalikes + 1, predicted)
        parts = np.zeros_like(x)
        for row, (query, near) in enumerate(zip(x, alike, strict=True)):
            near = near[near >= 0]
            near = near[np.any(train[near] != query, axis=tuple(range(1, query.ndim + 1)))][: self.lookalikes]
            if len(near):
                parts[row] = query - train[near].mean(axis=0)
        return parts

    def _transfer(self, parts: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Per input: mean rise in the predicted class's probability when its distinctive part
        (`_distinctive_parts`) is added to the recipients."""
        train = self._ts.x
        batch = [np.clip(train[self._recipients[int(label)]] + part, 0.0, 1.0)
                 for part, label in zip(parts, predicted, strict=True)]
        probs = compute_features(self._fast_model, np.concatenate(batch)).probs
        out, start = [], 0
        for label, b in zip(predicted, batch, strict=True):
            rise = probs[start : start + len(b), label] - self._base[int(label)]
            out.append(float(rise.mean()) if len(b) else 0.0)
            start += len(b)
        return np.array(out)

    def _sharing(self, part: np.ndarray, records: np.ndarray) -> np.ndarray:
        """Per record: cosine between the query's distinctive part and the record's own (the record minus the mean
        of its look-alikes of other labels). Records that carry what sets the query apart (a trigger) share it."""
        flat = self._ts.x.reshape(len(self._ts.x), -1)
        alikes = self._record_alikes[records]
        found = alikes >= 0
        counts = found.sum(axis=1)[:, None]
        means = (flat[np.maximum(alikes, 0)] * found[..., None]).sum(axis=1) / np.maximum(counts, 1)
        own = np.where(counts > 0, flat[records] - means, 0.0)
        part = part.reshape(-1)
        norms = np.linalg.norm(own, axis=1) * np.linalg.norm(part)
        return np.where(norms > 0, own @ part / np.maximum(norms, 1e-12), 0.0)

    def trace(self, queries: QueryBatch, k: int = 10) -> list[Attribution]:
        if not len(queries):
            return []
        dist, shortlist = self._index.search(queries.features.fingerprints, max(k, self.candidates),
                                             queries.predicted)
        parts = self._distinctive_parts(queries.x, queries.predicted)
        stats = self._statistics(queries.x, queries.features, queries.predicted, parts=parts)
        out = []
        for d, cand, row, tested, label, part in zip(dist, shortlist, stats, self._tested(stats), queries.predicted,
                                                     parts, strict=True):
            keep = cand >= 0
            d, cand = d[keep], cand[keep]
            p, p_tests = self._null[int(label)].p_values(tested)
            score = ((1.0 - d) + self.ranking_weight * self._suspicion[cand]
                     + self.sharing_weight * self._sharing(part, cand))
            order = np.argsort(-score, kind="stable")
            details = {"p": p, **{f"{name}_p": value for name, value in zip(self.tests, p_tests, strict=True)},
                       **{STATISTIC_KEYS[name]: float(value) for name, value in zip(self.tests, row, strict=True)}}
            # an answer rests on records: a class with none answers "no responsible training data found"
            out.append(Attribution(cand[order[:k]], score[order[:k]], 1.0 - p, p < self.alpha and len(cand) > 0,
                                   support=cand[order[: self._support[int(label)]]], details=details,
                                   level=self.alpha))
        return out


def distinct_inputs(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per input, which distinct input it is: inputs within half the distance from either to its nearest
    `reference` input (the training inputs) are one, transitively. One input sent many times, or with a little
    noise added each time, is one test of the per-query level however many queries carry it; distinct inputs are
    about as far from each other as from the nearest of thousands of training inputs (a trigger or a warp moves
    them off the data, and further from the training inputs than from each other, hence only half)."""
    if len(x) < 2:
        return np.arange(len(x))
    import faiss
    from scipy.sparse.csgraph import connected_components

    flat = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
    squared = faiss.knn(flat, np.ascontiguousarray(reference.reshape(len(reference), -1), dtype=np.float32), 1)[0]
    wide = flat.astype(np.float64)
    norms = (wide**2).sum(axis=1)
    between = np.maximum(norms[:, None] + norms[None, :] - 2.0 * wide @ wide.T, 0.0)
    return connected_components(between <= 0.25 * np.minimum(squared, squared.T), directed=False)[1]


def distinct_answers(x: np.ndarray, attributions: Sequence[Attribution], reference: np.ndarray) -> np.ndarray:
    """Per query, which distinct input it is (what `name_contributors` counts), by `distinct_inputs` over the
    answered queries, the only ones blame counts; every other query is its own."""
    answered = np.flatnonzero([a.responsible for a in attributions])
    out = np.arange(len(attributions))
    out[answered] = len(attributions) + distinct_inputs(x[answered], reference)
    return out


@dataclass(frozen=True)
class ContributorEvidence:
    """How much one contributor's records explain the answered mispredictions, and whether that is beyond chance."""

    contributor: int
    positions: np.ndarray  # its evidence records, those supporting the most answers first
    expected: float  # how many it would supply if its records of each class were a random draw of that class
    answers: int  # answered queries (distinct inputs) whose evidence holds one of its records
    answered: int  # answered queries (distinct inputs) in all
    traced: int  # queries traced, answered or not (in the enclave: every one traced for the job with the method)
    records_p_value: float  # exact: P(records >= observed) if who supplied which record of a class were chance
    answers_p_value: float | None  # P(answers >= observed) if each were a false answer (None: method has no level)
    p_value: float  # the larger of the two: both must reject for it to be named (an intersection-union test)
    named: bool

    @property
    def records(self) -> int:
        """How many distinct evidence records it supplied."""
        return len(self.positions)

    @property
    def answered_share(self) -> float:
        """Share of the answered queries whose evidence holds one of its records."""
        return self.answers / self.answered

    @property
    def blame(self) -> float:
        """Evidence beyond chance, −log10 p: comparable across contributors of any size."""
        return float(-np.log10(max(self.p_value, 1e-300)))


def _hypergeometric_tail(observed: int, draws: Sequence[tuple[int, int, int]]) -> float:
    """P(sum of independent hypergeometrics >= observed); each draw is (population, successes, sample size)."""
    from scipy.stats import hypergeom

    pmf = np.ones(1)
    for population, successes, sample in draws:
        support = np.arange(min(successes, sample) + 1)
        pmf = np.convolve(pmf, hypergeom.pmf(support, population, successes, sample))
    return float(min(1.0, pmf[observed:].sum())) if observed < len(pmf) else 0.0


def name_contributors(
    attributions: Sequence[Attribution], contributors: np.ndarray, labels: np.ndarray, *, alpha: float = 0.01,
    traced: int | None = None, distinct: np.ndarray | None = None,
) -> list[ContributorEvidence]:
    """Set detection: name every contributor whose records explain the answered queries beyond chance, most
    significant first. Two nulls, and both must be rejected (`ContributorEvidence.p_value`):

    - records: within each class, which records are evidence is unrelated to who supplied them (exactly what
      re-dealing the records among honest contributors produces, evenly or label-skewed, since the test conditions
      on each contributor's per-class counts). A contributor's evidence count is then a sum of hypergeometrics,
      whatever its size.
    - answers (for a method with a per-query level): every answered query resting on its records is a false answer,
      each traced query answered at most at that level. A few false answers can all rest on one honest party (the
      records nearest a natural misprediction from its own device are its own); they are then the share of the
      traced queries the level allows, not blame. One answered query never names anyone. `traced` counts every
      query traced for the same audit, these included (None: these alone): a batch picked out of many traced
      queries by their answers holds the false answers of all of them, so it is judged against all of them.
      `distinct` (per attribution, which distinct input it is: `distinct_answers`) counts the answers of one input,
      sent many times or with a little noise each time, once.

    A contributor is named when both are below `alpha` / number of contributors (Bonferroni), so the chance that
    anyone at all is named falsely is at most `alpha`.
    """
    from scipy.stats import binom

    traced = len(attributions) if traced is None else traced
    if traced < len(attributions):
        raise ValueError(f"traced ({traced}) counts the {len(attributions)} queries given and those traced before")
    distinct = np.arange(len(attributions)) if distinct is None else np.asarray(distinct)
    if len(distinct) != len(attributions):
        raise ValueError(f"distinct has {len(distinct)} entries for {len(attributions)} queries")
    answered_at = [i for i, a in enumerate(attributions) if a.responsible and len(a.evidence_records)]
    answered = [attributions[i] for i in answered_at]
    if not answered:
        return []
    answered_inputs = len(set(distinct[answered_at]))
    levels = [a.level for a in attributions]
    level = None if any(v is None for v in levels) else max(v for v in levels if v is not None)
    evidence, support = np.unique(np.concatenate([a.evidence_records for a in answered]), return_counts=True)
    everyone = np.unique(contributors)
    threshold = alpha / len(everyone)
    class_sizes = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True), strict=True)}
    sample = {int(c): int(n) for c, n in zip(*np.unique(labels[evidence], return_counts=True), strict=True)}
    out = []
    for who in np.unique(contributors[evidence]):
        mine = contributors == who
        draws = [(class_sizes[c], int((mine & (labels == c)).sum()), n) for c, n in sample.items()]
        records_p = _hypergeometric_tail(int(mine[evidence].sum()), draws)
        resting = len({distinct[i] for i in answered_at if mine[attributions[i].evidence_records].any()})
        answers_p = None if level is None else float(binom.sf(resting - 1, traced, level))
        own = mine[evidence]
        positions = evidence[own][np.argsort(-support[own], kind="stable")]
        p = records_p if answers_p is None else max(records_p, answers_p)
        out.append(ContributorEvidence(int(who), positions, sum(k * n / size for size, k, n in draws), resting,
                                       answered_inputs, traced, records_p, answers_p, p, p < threshold))
    return sorted(out, key=lambda e: (e.p_value, -e.records, e.contributor))
