"""Scoring attribution against a scenario's ground truth; shared by the benchmark, the tests and the demo."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from caltrain.accountability.attacks import Scenario
from caltrain.accountability.attribution import AttributionMethod, QueryBatch, TrainingSet, rank_contributors
from caltrain.accountability.baselines import get_host_method
from caltrain.data.datasets import ArrayDataset
from caltrain.models.zoo import spec_for_dataset
from caltrain.training.config import TrainConfig
from caltrain.training.plain import train_plain


def train_model(
    train: ArrayDataset, *, dataset: str, epochs: int, seed: int, batch_size: int = 128, lr: float = 1e-3
) -> tuple[nn.Sequential, list[dict[str, object]]]:
    """Plain (unpartitioned) Adam training of `dataset`'s zoo model, no augmentation (fingerprints use none);
    returns the model in eval mode and one checkpoint per epoch (TracIn replays them)."""
    config = TrainConfig(model=spec_for_dataset(dataset).name, epochs=epochs, batch_size=batch_size,
                         optimizer="adam", lr=lr, seed=seed, augment=False)
    checkpoints: list[dict[str, object]] = []

    def keep(_: int, model: nn.Module) -> None:
        checkpoints.append({k: v.clone() for k, v in model.state_dict().items()})

    model, _ = train_plain(config, train, on_epoch_end=keep)
    assert isinstance(model, nn.Sequential)
    model.eval()
    return model, checkpoints


@dataclass(frozen=True)
class Queries:
    attack: QueryBatch  # mispredictions the attack caused (or, for label flips, wanted)
    natural: QueryBatch  # clean test inputs mispredicted into a class the attack does not target
    attack_success: float
    clean_accuracy: float


def collect_queries(ts: TrainingSet, scenario: Scenario, test: ArrayDataset, *, limit: int, seed: int) -> Queries:
    rng = np.random.default_rng(seed)
    attack_in = scenario.attack_inputs(test)
    attack_all = QueryBatch.build(ts, attack_in.x)
    hit = np.flatnonzero(attack_all.predicted == scenario.target)
    clean = QueryBatch.build(ts, test.x)
    natural = np.flatnonzero((clean.predicted != test.y) & (clean.predicted != scenario.target))

    def pick(batch: QueryBatch, idx: np.ndarray) -> QueryBatch:
        idx = np.sort(rng.permutation(idx)[:limit])
        f = batch.features
        from caltrain.accountability.fingerprints import Features

        return QueryBatch(batch.x[idx], Features(f.embeddings[idx], f.fingerprints[idx], f.probs[idx]),
                          batch.predicted[idx])

    return Queries(pick(attack_all, hit), pick(clean, natural), len(hit) / max(1, len(attack_in)),
                   float((clean.predicted == test.y).mean()))


def _average_precision(relevant: np.ndarray, total_relevant: int) -> float:
    if total_relevant == 0:
        return 0.0
    hits = np.cumsum(relevant)
    return float((hits / np.arange(1, len(relevant) + 1))[relevant].sum() / min(total_relevant, len(relevant)))


def _auroc(truth: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    inspected = np.argsort(-scores, kind="stable")[: max(1, round(0.05 * len(scores)))]
    return float(roc_auc_score(truth, scores)), float(truth[inspected].sum() / max(1, truth.sum()))


def score_method(
    method: AttributionMethod, ts: TrainingSet, scenario: Scenario, queries: Queries, *, seed: int = 0,
    draws: int = 20,
) -> dict[str, Any]:
    """Every metric of issue 4 item 5 for one fitted method."""
    truth, malicious = scenario.poison_mask, set(scenario.malicious)
    start = time.perf_counter()
    answers = method.trace(queries.attack, k=100) if len(queries.attack) else []
    latency = (time.perf_counter() - start) / max(1, len(queries.attack))
    rel_by_label = {c: int(truth[ts.y == c].sum()) for c in range(ts.num_classes)}
    p10 = [float(truth[a.positions[:10]].mean()) for a in answers]
    ap = [_average_precision(truth[a.positions], rel_by_label[int(lbl)])
          for a, lbl in zip(answers, queries.attack.predicted, strict=True)]
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {
        "queries": len(answers), "p10": _mean(p10), "ap": _mean(ap), "query_latency_ms": 1000 * latency,
    }
    for n in (1, 5, 10):
        correct, prec, rec = [], [], []
        for _ in range(draws if len(answers) > n else 1):
            chosen = rng.permutation(len(answers))[:n]
            ranking = rank_contributors([answers[i] for i in chosen], ts.contributors, labels=ts.y)
            top = {c for c, _ in ranking[: len(malicious)]}
            correct.append(float(top == malicious))
            named = {c for c, s in ranking if s >= 0.25 * ranking[0][1]} if ranking else set()
            prec.append(len(named & malicious) / max(1, len(named)))
            rec.append(len(named & malicious) / len(malicious))
        out[f"contributor_top1_at_{n}"] = _mean(correct) if answers else 0.0
        out[f"contributor_precision_at_{n}"] = _mean(prec) if answers else 0.0
        out[f"contributor_recall_at_{n}"] = _mean(rec) if answers else 0.0
    susp = method.suspicion()
    out["auroc"], out["recall_at_5pct"] = _auroc(truth, susp) if susp is not None else (None, None)
    natural = method.trace(queries.natural, k=10) if len(queries.natural) else []
    out["natural_queries"] = len(natural)
    out["natural_blamed"] = _mean([float(a.responsible) for a in natural]) if natural else None
    return out


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def accountability_report(
    model: nn.Sequential,
    participants: Sequence[ArrayDataset],
    poison: Sequence[np.ndarray],
    malicious: Sequence[int],
    mispredicted: np.ndarray,
    *,
    method: str = "ours",
) -> dict[str, Any]:
    """The demo's `"accountability"` block: trace `mispredicted` inputs and score the answer against the truth."""
    x = np.concatenate([p.x for p in participants])
    y = np.concatenate([p.y for p in participants])
    contributors = np.concatenate([np.full(len(p), i) for i, p in enumerate(participants)])
    truth = np.concatenate(list(poison))
    ts = TrainingSet.build(model, x, y, contributors)
    m = get_host_method(method)
    m.fit(ts)
    answers = m.trace(QueryBatch.build(ts, mispredicted), k=10)
    ranking = rank_contributors(answers, contributors, labels=y)
    susp = m.suspicion()
    return {
        "method": method,
        "precision_at_10": _mean([float(truth[a.positions].mean()) for a in answers]),
        "contributor_top1_correct": bool(ranking) and {c for c, _ in ranking[: len(malicious)]} == set(malicious),
        "auroc": _auroc(truth, susp)[0] if susp is not None else None,
        "queries": len(answers),
    }
