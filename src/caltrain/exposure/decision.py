"""The decision rule: which layers are safe under a threat tier, where to cut, and where the seed rule errs.

A layer is safe under a tier when every attack of the tier fails to beat the prior (upper CI of the SSIM gain),
stays unrecognisable (95th-percentile SSIM) and cannot re-identify its target better than chance plus slack, and
the seed rule calls it safe too, so this rule is never looser than the seed's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from caltrain.exposure.config import TIERS, AssessConfig
from caltrain.exposure.metrics import Estimate


@dataclass(frozen=True)
class AttackOutcome:
    attack: str
    ssim: dict[str, Estimate]
    psnr: dict[str, Estimate]
    ssim_gain: dict[str, Estimate]  # per-target SSIM minus the class-mean prior's, paired
    reid: Estimate  # top-1 re-identification rate among K same-class candidates
    prior_p95: float  # 95th-percentile SSIM of the class-mean prior on the same targets

    def p95_bar(self, config: AssessConfig) -> float:
        """The 95th-percentile SSIM an attack must stay below. Where the class-mean prior alone exceeds the absolute
        bar (grey digits, clothing silhouettes), matching what the label already tells is not a reconstruction: the
        bar is then the prior's own p95 plus the same slack the gain criterion allows."""
        return max(config.max_p95_ssim, self.prior_p95 + config.max_ssim_gain)

    def failed_checks(self, config: AssessConfig) -> list[tuple[str, str]]:
        """(criterion, why) for each criterion by which this attack counts as reconstructing (empty: it does not)."""
        chance = 1.0 / config.candidates_k
        p95_bar = self.p95_bar(config)
        failed = []
        if self.ssim_gain["mean"].hi > config.max_ssim_gain:
            failed.append(
                (
                    "gain",
                    f"SSIM gain over the class-mean prior up to {self.ssim_gain['mean'].hi:+.3f} "
                    f"(upper 95% CI; safe ≤ {config.max_ssim_gain:+.2f})",
                )
            )
        if self.ssim["p95"].value >= p95_bar:
            failed.append(("p95", f"95th-percentile SSIM {self.ssim['p95'].value:.3f} (safe < {p95_bar:.3f})"))
        if self.reid.value > chance + config.reid_slack:
            failed.append(
                (
                    "re-identification",
                    f"picks its target among {config.candidates_k} same-class images {self.reid.value:.0%} of the time "
                    f"(chance {chance:.0%}; safe ≤ {chance + config.reid_slack:.0%})",
                )
            )
        return failed

    def failures(self, config: AssessConfig) -> list[str]:
        """Why this attack counts as reconstructing (empty: it does not)."""
        return [why for _, why in self.failed_checks(config)]

    def to_json(self, config: AssessConfig) -> dict[str, Any]:
        return {
            "ssim": {k: v.to_json() for k, v in self.ssim.items()},
            "psnr": {k: v.to_json() for k, v in self.psnr.items()},
            "ssim_gain_over_prior": {k: v.to_json() for k, v in self.ssim_gain.items()},
            "reidentification_top1": self.reid.to_json(),
            "p95_bar": self.p95_bar(config),
            "reconstructs": bool(self.failures(config)),
            "failures": self.failures(config),
            "failed_criteria": [criterion for criterion, _ in self.failed_checks(config)],
        }


@dataclass(frozen=True)
class LayerVerdict:
    """What the decision rule needs to know about one layer."""

    name: str
    seed_safe: bool
    attacks: dict[str, AttackOutcome]

    def safe(self, tier: str, config: AssessConfig) -> bool:
        return self.seed_safe and not any(self.attacks[a].failures(config) for a in TIERS[tier])


def shallowest_safe_suffix(safe: list[bool], names: list[str], full_enclave: str) -> str:
    """The shallowest layer from which every deeper layer is safe; full-enclave when the deepest is not."""
    choice = full_enclave
    for name, ok in reversed(list(zip(names, safe, strict=True))):
        if not ok:
            break
        choice = name
    return choice


def recommend(layers: list[LayerVerdict], tier: str, config: AssessConfig, full_enclave: str) -> str:
    return shallowest_safe_suffix([v.safe(tier, config) for v in layers], [v.name for v in layers], full_enclave)


def seed_rule_layer(layers: list[LayerVerdict], full_enclave: str) -> str:
    return shallowest_safe_suffix([v.seed_safe for v in layers], [v.name for v in layers], full_enclave)


def seed_rule_misses(layers: list[LayerVerdict], config: AssessConfig) -> list[dict[str, Any]]:
    """Every (layer, attack) where the seed rule says safe but the attack still reconstructs."""
    return [
        {"layer": v.name, "attack": name, "reasons": outcome.failures(config)}
        for v in layers
        if v.seed_safe
        for name, outcome in v.attacks.items()
        if outcome.failures(config)
    ]
