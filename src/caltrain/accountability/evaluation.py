"""Scoring attribution against a scenario's ground truth; shared by the benchmark, the tests and the demo.

Host-side only (it reaches the research baselines through their registry). Three query sets per trained model:
the attack's own mispredictions (triggered inputs the model sends to the target although their clean version is
not sent there), natural mispredictions into other classes, and natural mispredictions *into the target class*.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from caltrain.accountability.attacks import Scenario, deal, device_shift
from caltrain.accountability.attribution import (
    Attribution,
    AttributionMethod,
    QueryBatch,
    TrainingSet,
    name_contributors,
)
from caltrain.accountability.baselines import get_host_method
from caltrain.data.datasets import ArrayDataset
from caltrain.models.zoo import spec_for_dataset
from caltrain.training.config import TrainConfig
from caltrain.training.core import build_split, loss_fn, make_optimizer, steps_per_epoch, training_batch


def train_model(
    train: ArrayDataset, *, dataset: str, epochs: int, seed: int, batch_size: int = 128, lr: float = 1e-3,
    augment: bool = False,
) -> tuple[nn.Sequential, list[dict[str, object]]]:
    """Adam with a cosine learning-rate decay over the same seeded batches and augmentation (one-pixel shifts, when
    asked) as the enclave's trainer; returns the model in eval mode and one checkpoint per epoch (TracIn replays
    them)."""
    config = TrainConfig(model=spec_for_dataset(dataset).name, epochs=epochs, batch_size=batch_size,
                         optimizer="adam", lr=lr, seed=seed, augment=augment)
    model, _ = build_split(config)
    optimizer = make_optimizer(list(model.parameters()), config)
    spe = steps_per_epoch(len(train), batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * spe)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    checkpoints: list[dict[str, object]] = []
    model.train()
    for step in range(epochs * spe):
        xb, yb = training_batch(x, y, config, step)
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % spe == 0:
            checkpoints.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert isinstance(model, nn.Sequential)
    model.eval()
    return model, checkpoints


@dataclass(frozen=True)
class Queries:
    attack: QueryBatch  # triggered inputs sent to the target whose clean version is not (label flips: the source)
    natural: QueryBatch  # clean test inputs mispredicted into a class the attack does not target
    natural_into_target: QueryBatch  # clean test inputs of other classes mispredicted *as* the target
    attack_success: float | None  # share of the attack's inputs predicted as the target (None: no attack)
    clean_accuracy: float
    # test inputs through a shifted participant's device that the model gets wrong, all of them: one device's
    # failures audited together, where a few false answers resting on that participant add up (None: no device)
    other_device: QueryBatch | None = None


def collect_queries(ts: TrainingSet, scenario: Scenario, test: ArrayDataset, *, limit: int, seed: int) -> Queries:
    """At most `limit` queries of each kind, drawn at random; every misprediction of the other device's inputs."""
    rng = np.random.default_rng(seed)
    clean = QueryBatch.build(ts, test.x)
    wanted = scenario.attack_indexes(test)
    attack_all = QueryBatch.build(ts, scenario.attack_inputs(test).x)
    sent = attack_all.predicted == scenario.target
    # a triggered input counts when its clean version is not sent there anyway (label flips have no trigger)
    hit = np.flatnonzero(sent & ((clean.predicted[wanted] != scenario.target) | (not scenario.triggers)))
    wrong = clean.predicted != test.y
    not_attacked = test.y != (scenario.source if scenario.source is not None else scenario.target)
    natural = np.flatnonzero(wrong & (clean.predicted != scenario.target))
    into_target = np.flatnonzero(wrong & (clean.predicted == scenario.target) & not_attacked)

    def pick(batch: QueryBatch, idx: np.ndarray) -> QueryBatch:
        return batch.select(np.sort(rng.permutation(idx)[:limit]))

    other_device = None
    if scenario.shifted:
        shifted = QueryBatch.build(ts, device_shift(test.x, seed=seed))
        other_device = shifted.select(np.flatnonzero(shifted.predicted != test.y))
    return Queries(pick(attack_all, hit), pick(clean, natural), pick(clean, into_target),
                   float(sent.mean()) if len(wanted) else None, float((clean.predicted == test.y).mean()), other_device)


def _average_precision(relevant: np.ndarray, total_relevant: int) -> float:
    if total_relevant == 0:
        return 0.0
    hits = np.cumsum(relevant)
    return float((hits / np.arange(1, len(relevant) + 1))[relevant].sum() / min(total_relevant, len(relevant)))


def auroc(truth: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _named(answers: Sequence[Attribution], contributors: np.ndarray, labels: np.ndarray) -> set[int]:
    return {e.contributor for e in name_contributors(answers, contributors, labels) if e.named}


def _rates(named: set[int], malicious: Sequence[int], honest: Sequence[int]) -> tuple[float | None, float]:
    tpr = len(named & set(malicious)) / len(malicious) if malicious else None
    return tpr, len(named & set(honest)) / len(honest)


def redeal(labels: np.ndarray, honest: int, rng: np.random.Generator, skew: float | None) -> np.ndarray:
    """Every record dealt anew among `honest` participants (evenly, or Dirichlet(skew) label skew): by
    construction nobody is responsible for anything, so anyone named is a false positive."""
    out = np.empty(len(labels), np.int64)
    for who, share in enumerate(deal(labels, np.arange(len(labels)), honest, rng, skew)):
        out[share] = who
    return out


def score_method(
    method: AttributionMethod, ts: TrainingSet, scenario: Scenario, queries: Queries, *, seed: int = 0,
    draws: int = 20, redeals: int = 100, skew: float = 0.3,
) -> dict[str, Any]:
    """Every metric of the benchmark for one fitted method (None where a metric does not apply)."""
    truth, malicious, honest = scenario.poison_mask, scenario.malicious, scenario.honest
    start = time.perf_counter()
    answers = method.trace(queries.attack, k=100) if len(queries.attack) else []
    latency = (time.perf_counter() - start) / max(1, len(queries.attack))
    natural = method.trace(queries.natural, k=10) if len(queries.natural) else []
    into_target = method.trace(queries.natural_into_target, k=10) if len(queries.natural_into_target) else []
    answered = [a for a in answers if a.responsible]
    rel_by_label = {c: int(truth[ts.y == c].sum()) for c in range(ts.num_classes)}
    out: dict[str, Any] = {
        "queries": len(answers), "natural_queries": len(natural), "natural_into_target_queries": len(into_target),
        "answered": _mean([float(a.responsible) for a in answers]),
        "p10": _mean([float(truth[a.positions[:10]].mean()) for a in answered]),
        "ap": _mean([_average_precision(truth[a.positions], rel_by_label[int(ts.y[a.positions[0]])])
                     for a in answered if len(a.positions)]),
        "natural_answered": _mean([float(a.responsible) for a in natural]),
        "natural_into_target_answered": _mean([float(a.responsible) for a in into_target]),
        "query_latency_ms": 1000 * latency,
    }
    susp = method.suspicion()
    out["auroc"] = auroc(truth, susp) if susp is not None else None
    named = _named(answers, ts.contributors, ts.y)
    out["contributor_tpr"], out["contributor_fpr"] = _rates(named, malicious, honest)
    out["contributors_named"] = len(named)
    natural_named = _named([*natural, *into_target], ts.contributors, ts.y)
    out["natural_contributor_fpr"] = _rates(natural_named, malicious, honest)[1]
    if queries.other_device is not None:
        device = method.trace(queries.other_device, k=10)
        out["device_queries"] = len(device)
        out["device_natural_answered"] = _mean([float(a.responsible) for a in device])
        device_named = _named(device, ts.contributors, ts.y)
        out["device_contributor_fpr"] = _rates(device_named, malicious, honest)[1]
        out["device_owner_named"] = float(bool(device_named & set(scenario.shifted)))  # the device's participant
    rng = np.random.default_rng(seed)
    if malicious and len(answers) > 10:
        tprs = []
        for _ in range(draws):
            chosen = [answers[i] for i in rng.permutation(len(answers))[:10]]
            tprs.append(_rates(_named(chosen, ts.contributors, ts.y), malicious, honest)[0] or 0.0)
        out["contributor_tpr_at_10"] = _mean(tprs)
    everything = [*answers, *natural, *into_target]
    out.update(redeal_rates(lambda _: everything, ts.y, len(honest), rng, redeals=redeals, skew=skew))
    return out


def redeal_rates(
    answers_for: Callable[[np.ndarray], Sequence[Attribution]], labels: np.ndarray, honest: int,
    rng: np.random.Generator, *, redeals: int, skew: float, prefix: str = "redeal",
) -> dict[str, float]:
    """Measured false naming: every record dealt anew among `honest` participants `redeals` times, evenly and with
    Dirichlet(`skew`) label skew; the share of them named, and of re-deals naming anyone. `answers_for(contributors)`
    gives the answers under a dealing: the same ones for a method whose answers do not depend on who supplied what,
    a refit's otherwise (`refit_redeal_rates`)."""
    out = {}
    for scheme, alpha in (("even", None), ("dirichlet", skew)):
        counts = []
        for _ in range(redeals):
            who = redeal(labels, honest, rng, alpha)
            counts.append(len(_named(answers_for(who), who, labels)))
        out[f"{prefix}_fpr_{scheme}"] = float(np.sum(counts)) / (redeals * honest)
        out[f"{prefix}_fwer_{scheme}"] = float(np.mean([n > 0 for n in counts]))
    return out


def refit_redeal_rates(
    make: Callable[[], AttributionMethod], ts: TrainingSet, queries: Queries, honest: int, rng: np.random.Generator,
    *, redeals: int, skew: float = 0.3,
) -> dict[str, float]:
    """`redeal_rates` with the method fitted anew on each re-dealt set (`refit_redeal_*`): for a method whose fit
    reads who supplied what (`ours` sets aside by look-alikes from other contributors), reusing the answers of the
    real dealing would not measure its null. Each re-deal costs a fit."""
    batches = [b for b in (queries.attack, queries.natural, queries.natural_into_target) if len(b)]

    def answers_for(contributors: np.ndarray) -> list[Attribution]:
        method = make()
        method.fit(replace(ts, contributors=contributors))
        return [a for batch in batches for a in method.trace(batch, k=10)]

    return redeal_rates(answers_for, ts.y, honest, rng, redeals=redeals, skew=skew, prefix="refit_redeal")


def accountability_report(
    model: nn.Sequential,
    participants: Sequence[ArrayDataset],
    poison: Sequence[np.ndarray],
    malicious: Sequence[int],
    mispredicted: np.ndarray,
    *,
    method: str = "ours",
) -> dict[str, Any]:
    """Trace `mispredicted` inputs and score the answer against the truth (precision@10, who is named, AUROC)."""
    x = np.concatenate([p.x for p in participants])
    y = np.concatenate([p.y for p in participants])
    contributors = np.concatenate([np.full(len(p), i) for i, p in enumerate(participants)])
    truth = np.concatenate(list(poison))
    ts = TrainingSet.build(model, x, y, contributors)
    m = get_host_method(method)
    m.fit(ts)
    answers = m.trace(QueryBatch.build(ts, mispredicted), k=10)
    named = _named(answers, contributors, y)
    susp = m.suspicion()
    return {
        "method": method,
        "precision_at_10": _mean([float(truth[a.positions].mean()) for a in answers if a.responsible]) or 0.0,
        "answered": _mean([float(a.responsible) for a in answers]) or 0.0,
        "contributors_named": sorted(named),
        "all_guilty_named_no_innocent": named == set(malicious),
        "auroc": auroc(truth, susp) if susp is not None else None,
        "queries": len(answers),
    }
