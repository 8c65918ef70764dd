"""`assess`: attack the IR at every candidate cut of a model and recommend where to cut (issue 6)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from caltrain import __version__
from caltrain.data import ArrayDataset
from caltrain.errors import ExposureError
from caltrain.exposure.attacks import class_mean_prior, decode, global_mean_prior, rmle, train_decoder
from caltrain.exposure.collect import EnclaveCost, assessable_layers, collect_irs, enclave_cost
from caltrain.exposure.config import TIERS, AssessConfig
from caltrain.exposure.decision import (
    AttackOutcome,
    LayerVerdict,
    recommend,
    seed_rule_layer,
    seed_rule_misses,
)
from caltrain.exposure.metrics import Estimate, bootstrap, reidentification, ssim_psnr
from caltrain.exposure.seed_rule import SeedRuleResult, seed_rule
from caltrain.exposure.summary import summarise
from caltrain.models import candidate_cuts, partition
from caltrain.models.fit import accuracy
from caltrain.training.core import state_digest

FSHA_NOTE = (
    "Training-time hijacking (Pasquini et al., CCS 2021, FSHA): when gradients computed by the untrusted host "
    "update the FrontNet, the host can steer the FrontNet into an invertible encoder of its choosing. No cut "
    "protects against it; only training the FrontNet without host-supplied gradients (or detecting the hijack) does."
)


@dataclass
class LayerResult:
    verdict: LayerVerdict
    ir_shape: tuple[int, ...]
    cost: EnclaveCost
    seed: SeedRuleResult
    seed_margin: dict[str, Estimate]
    gallery: dict[str, np.ndarray] = field(default_factory=dict)  # attack → first reconstructions
    gallery_ssim: dict[str, list[float]] = field(default_factory=dict)  # attack → SSIM of each of those

    def to_json(self, config: AssessConfig, full: EnclaveCost) -> dict[str, Any]:
        v = self.verdict
        return {
            "name": v.name,
            "ir_shape": list(self.ir_shape),
            "enclave_cost": asdict(self.cost),
            "cost_share": _share(self.cost, full),
            "seed_rule": {
                "fraction_safe": float(self.seed.safe.mean()),
                "safe": v.seed_safe,
                "kl_margin": {k: e.to_json() for k, e in self.seed_margin.items()},
            },
            "attacks": {
                a: {**o.to_json(config), "gallery_ssim": self.gallery_ssim.get(a, [])} for a, o in v.attacks.items()
            },
            "safe": {t: v.safe(t, config) for t in config.tiers},
        }


def _share(cost: EnclaveCost, full: EnclaveCost) -> dict[str, float]:
    """What fraction of the whole model's parameters and compute a cut puts in the enclave."""
    return {
        "params": cost.frontnet_params / max(full.frontnet_params, 1),
        "flops": cost.flops / max(full.flops, 1),
    }


@dataclass
class AssessmentReport:
    config: AssessConfig
    model_name: str
    model_hash: str | None  # the spec's canonical hash, when the model came from one
    weights_digest: str  # SHA-256 over the assessed weights (training.core.state_digest)
    accuracy: float  # on the whole target pool (the held-out set)
    dataset: str
    test_records: int
    targets: int
    auxiliary: int
    input_shape: tuple[int, ...]
    cuts: list[str]
    layers: list[LayerResult]
    baselines: dict[str, dict[str, dict[str, Estimate]]]  # prior → metric → stats
    gallery_originals: np.ndarray
    gallery_priors: dict[str, np.ndarray]
    gallery_prior_ssim: dict[str, list[float]]
    full_enclave_cost: EnclaveCost
    seconds: float
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def full_enclave(self) -> str:
        return self.cuts[-1]

    def recommended(self, tier: str) -> str:
        return recommend([lr.verdict for lr in self.layers], tier, self.config, self.full_enclave)

    @property
    def recommended_layer(self) -> str:
        return self.recommended(self.config.strongest_tier)

    @property
    def seed_rule_layer(self) -> str:
        return seed_rule_layer([lr.verdict for lr in self.layers], self.full_enclave)

    def cost_of(self, layer: str) -> EnclaveCost:
        return next((lr.cost for lr in self.layers if lr.verdict.name == layer), self.full_enclave_cost)

    def to_json(self) -> dict[str, Any]:
        """Every number the HTML page shows, and the page's sentences (`summary`), which are made from them."""
        cfg = self.config
        data = {
            "caltrain_version": __version__,
            "created": self.created,
            "seed": cfg.seed,
            "model": {
                "name": self.model_name,
                "hash": self.model_hash,
                "weights_digest": self.weights_digest,
                "test_accuracy": self.accuracy,
                "input_shape": list(self.input_shape),
                "cuts": self.cuts,
            },
            "dataset": self.dataset,
            "test_records": self.test_records,
            "targets": self.targets,
            "auxiliary_images": self.auxiliary,
            "thresholds": {
                "max_ssim_gain": cfg.max_ssim_gain,
                "max_p95_ssim": cfg.max_p95_ssim,
                "candidates_k": cfg.candidates_k,
                "chance": 1.0 / cfg.candidates_k,
                "reid_slack": cfg.reid_slack,
                "max_reid": 1.0 / cfg.candidates_k + cfg.reid_slack,
                "seed_safe_fraction": cfg.seed_safe_fraction,
            },
            "recommended_layer": self.recommended_layer,
            "recommended_tier": cfg.strongest_tier,
            "recommended_enclave_cost": asdict(self.cost_of(self.recommended_layer)),
            "recommendation_by_tier": {t: self.recommended(t) for t in cfg.tiers},
            "seed_rule_layer": self.seed_rule_layer,
            "full_enclave_layer": self.full_enclave,
            "full_enclave_cost": asdict(self.full_enclave_cost),
            "seed_rule_misses": seed_rule_misses([lr.verdict for lr in self.layers], cfg),
            "layers": [lr.to_json(cfg, self.full_enclave_cost) for lr in self.layers],
            "baselines": {
                p: {
                    **{m: {k: e.to_json() for k, e in s.items()} for m, s in d.items()},
                    "gallery_ssim": self.gallery_prior_ssim[p],
                }
                for p, d in self.baselines.items()
            },
            "training_time_hijacking": {"applies": cfg.untrusted_gradients, "note": FSHA_NOTE},
            "tiers": {t: list(TIERS[t]) for t in cfg.tiers},
            "config": cfg.to_json(),
            "seconds": round(self.seconds, 2),
        }
        data["summary"] = summarise(data)
        return data

    def write(self, out_dir: Path) -> list[Path]:
        """report.json, PNG plots and a self-contained HTML page under `out_dir`."""
        from caltrain.exposure.report import write_report

        out_dir.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        path = out_dir / "report.json"
        path.write_text(json.dumps(data, indent=2))
        return [path, *write_report(self, data, out_dir)]


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _ssims(originals: np.ndarray, images: np.ndarray) -> list[float]:
    return [float(v) for v in ssim_psnr(originals, images)[0]]


def _pick(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(n)[:k]


class _Scorer:
    """Scores reconstructions of the targets against the originals, the class-mean prior and re-identification."""

    def __init__(self, targets: ArrayDataset, index: np.ndarray, prior: np.ndarray, config: AssessConfig) -> None:
        self.pool, self.index, self.config = targets, index, config
        self.originals = targets.x[index]
        self.prior_ssim, _ = ssim_psnr(self.originals, prior)
        self.resamples = config.resolved_budget.bootstrap

    def rng(self, salt: str) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, *salt.encode()])

    def similarity(self, recon: np.ndarray, salt: str) -> tuple[dict[str, Estimate], dict[str, Estimate], np.ndarray]:
        ssim, psnr = ssim_psnr(self.originals, recon)
        rng = self.rng(salt)
        return bootstrap(ssim, self.resamples, rng), bootstrap(psnr, self.resamples, rng), ssim

    def outcome(self, attack: str, layer: str, recon: np.ndarray) -> AttackOutcome:
        salt = f"{layer}/{attack}"
        ssim, psnr, per_target = self.similarity(recon, salt)
        rng = self.rng(salt)
        hits = reidentification(recon, self.index, self.pool.x, self.pool.y, self.config.candidates_k, rng)
        reid = bootstrap(hits.astype(float), self.resamples, rng)["mean"]
        gain = bootstrap(per_target - self.prior_ssim, self.resamples, rng)
        return AttackOutcome(attack, ssim, psnr, gain, reid, float(np.percentile(self.prior_ssim, 95)))


def assess(
    model: nn.Module,
    *,
    train_data: ArrayDataset,
    targets: ArrayDataset,
    budget: str = "quick",
    tiers: tuple[str, ...] = ("no-data", "black-box", "white-box"),
    out_dir: Path | None = None,
    seed: int = 0,
    config: AssessConfig | None = None,
    model_name: str = "model",
    model_hash: str | None = None,
    progress: bool = True,
) -> AssessmentReport:
    """Attack every candidate cut of `model` and recommend one.

    `train_data` is the attacker's auxiliary data (disjoint from `targets`, the held-out images it tries to
    reconstruct). `config` overrides `budget`, `tiers` and `seed` when given. `model_hash` (a spec's hash) names
    the architecture on the page. With `out_dir`, writes the report.
    """
    cfg = config or AssessConfig(budget=budget, tiers=tiers, seed=seed)
    bud = cfg.resolved_budget
    started = time.perf_counter()
    model.eval()
    input_shape = targets.sample_shape
    if train_data.sample_shape != input_shape:
        raise ExposureError(f"auxiliary data {train_data.sample_shape} and targets {input_shape} differ in shape")
    cuts = candidate_cuts(model)
    layers = list(cfg.layers) if cfg.layers is not None else assessable_layers(model, input_shape)
    unknown = [name for name in layers if name not in cuts[:-1]]
    if unknown:
        raise ExposureError(f"layers {unknown} are not assessable cuts; choose from {cuts[:-1]}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    index = _pick(len(targets), bud.targets, rng)
    aux = train_data.subset(_pick(len(train_data), bud.aux, rng))
    aux_small = max(len(aux) // 10, 1)
    target_x, aux_x = _tensor(targets.x[index]), _tensor(aux.x)
    noise_x = torch.rand(len(aux), *input_shape, generator=torch.Generator().manual_seed(cfg.seed))
    steps = bud.decoder_epochs * math.ceil(len(aux) / 64)

    with torch.no_grad():
        predicted = model(target_x).argmax(1).numpy()
    priors = {
        "class-mean": class_mean_prior(aux.x, aux.y, predicted),
        "global-mean": global_mean_prior(aux.x, len(index)),
    }
    scorer = _Scorer(targets, index, priors["class-mean"], cfg)
    baselines = {}
    for name, prior in priors.items():
        ssim, psnr, _ = scorer.similarity(prior, name)
        baselines[name] = {"ssim": ssim, "psnr": psnr}

    target_irs = collect_irs(model, layers, target_x)
    aux_irs = collect_irs(model, layers, aux_x) if {"decoder-full", "decoder-10pct"} & set(cfg.attacks) else {}
    noise_irs = collect_irs(model, layers, noise_x) if "decoder-noise" in cfg.attacks else {}
    n_gallery = min(6, len(index))
    gallery_originals = targets.x[index[:n_gallery]]
    results: list[LayerResult] = []
    for layer in tqdm(layers, desc="layers", disable=not progress):
        ir = target_irs[layer]
        recon: dict[str, torch.Tensor] = {}
        for attack in cfg.attacks:
            desc = f"{layer}:{attack}"
            salt = cfg.seed + len(results)
            if attack == "rmle":
                start = _tensor(priors["global-mean"])
                recon[attack] = rmle(
                    partition(model, layer).front,
                    ir,
                    start,
                    steps=bud.rmle_steps,
                    tv_weight=cfg.tv_weight,
                    desc=desc,
                    progress=progress,
                )
                continue
            if attack == "decoder-noise":
                pairs = noise_irs[layer], noise_x
            else:
                n = len(aux) if attack == "decoder-full" else aux_small
                pairs = aux_irs[layer][:n], aux_x[:n]
            decoder = train_decoder(*pairs, steps=steps, seed=salt, desc=desc, progress=progress)
            recon[attack] = decode(decoder, ir)
        outcomes = {a: scorer.outcome(a, layer, r.numpy()) for a, r in recon.items()}
        seed_result = seed_rule(model, target_x, ir)
        results.append(
            LayerResult(
                verdict=LayerVerdict(layer, bool(seed_result.safe.mean() >= cfg.seed_safe_fraction), outcomes),
                ir_shape=tuple(ir.shape[1:]),
                cost=enclave_cost(model, layer, input_shape, bud.latency_runs),
                seed=seed_result,
                seed_margin=bootstrap(seed_result.margin, bud.bootstrap, scorer.rng(f"{layer}/seed")),
                gallery={a: r[:n_gallery].numpy() for a, r in recon.items()},
                gallery_ssim={a: _ssims(gallery_originals, r[:n_gallery].numpy()) for a, r in recon.items()},
            )
        )
    report = AssessmentReport(
        config=cfg,
        model_name=model_name,
        model_hash=model_hash,
        weights_digest=state_digest(model),
        accuracy=accuracy(model, targets.x, targets.y),
        dataset=targets.name,
        test_records=len(targets),
        targets=len(index),
        auxiliary=len(aux),
        input_shape=input_shape,
        cuts=cuts,
        layers=results,
        baselines=baselines,
        gallery_originals=gallery_originals,
        gallery_priors={k: v[:n_gallery] for k, v in priors.items()},
        gallery_prior_ssim={k: _ssims(gallery_originals, v[:n_gallery]) for k, v in priors.items()},
        full_enclave_cost=enclave_cost(model, cuts[-1], input_shape, bud.latency_runs),
        seconds=time.perf_counter() - started,
    )
    if out_dir is not None:
        report.write(out_dir)
    return report
