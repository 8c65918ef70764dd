"""What an assessment runs: attacks grouped into threat tiers, budgets, and the decision thresholds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from caltrain.errors import ExposureError

# Attacks on the IR a host sees. "decoder-10pct" has a tenth of the auxiliary data of "decoder-full".
ATTACKS = ("decoder-noise", "decoder-10pct", "decoder-full", "rmle")
# A tier is what the host is assumed to have: nothing but queries, auxiliary data, or the FrontNet weights too.
TIERS: dict[str, tuple[str, ...]] = {
    "no-data": ("decoder-noise",),
    "black-box": ("decoder-noise", "decoder-10pct", "decoder-full"),
    "white-box": ATTACKS,
}


@dataclass(frozen=True)
class Budget:
    """How much work each attack gets. Targets are held-out images; `aux` is the attacker's full data budget."""

    targets: int
    aux: int
    decoder_epochs: int
    rmle_steps: int
    bootstrap: int
    latency_runs: int


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(targets=48, aux=800, decoder_epochs=6, rmle_steps=60, bootstrap=300, latency_runs=5),
    "quick": Budget(targets=200, aux=6000, decoder_epochs=3, rmle_steps=100, bootstrap=1000, latency_runs=20),
    "full": Budget(targets=1000, aux=60000, decoder_epochs=10, rmle_steps=400, bootstrap=2000, latency_runs=100),
}


@dataclass(frozen=True)
class AssessConfig:
    """One assessment run. Thresholds are issue 6's decision rule; the seed's own rule is always applied too."""

    budget: str = "quick"
    tiers: tuple[str, ...] = ("no-data", "black-box", "white-box")
    seed: int = 0
    layers: tuple[str, ...] | None = None  # None: every distinct candidate cut but full-enclave
    candidates_k: int = 10  # re-identification among K same-class candidates (chance 1/K)
    max_ssim_gain: float = 0.05  # upper 95% CI of the mean SSIM gain over the class-mean prior
    max_p95_ssim: float = 0.3  # SSIM below 0.3 counts as unrecognisable
    reid_slack: float = 0.05  # re-identification must stay within chance + slack
    seed_safe_fraction: float = 0.5  # the seed calls a layer safe when this fraction of targets is safe
    tv_weight: float = 0.02
    untrusted_gradients: bool = True  # FrontNet updated by gradients from the host (CalTrain): FSHA applies
    budget_overrides: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ExposureError(f"unknown budget {self.budget!r}; choose one of {sorted(BUDGETS)}")
        unknown = [t for t in self.tiers if t not in TIERS]
        if unknown or not self.tiers:
            raise ExposureError(f"unknown tiers {unknown}; choose from {list(TIERS)}")
        bad = set(self.budget_overrides) - set(Budget.__dataclass_fields__)
        if bad:
            raise ExposureError(f"unknown budget fields {sorted(bad)}")

    @property
    def resolved_budget(self) -> Budget:
        return Budget(**{**asdict(BUDGETS[self.budget]), **self.budget_overrides})

    @property
    def attacks(self) -> tuple[str, ...]:
        """Attacks the requested tiers need, in the fixed order of `ATTACKS`."""
        wanted = {a for t in self.tiers for a in TIERS[t]}
        return tuple(a for a in ATTACKS if a in wanted)

    @property
    def strongest_tier(self) -> str:
        return max(self.tiers, key=lambda t: len(TIERS[t]))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["tiers"] = list(self.tiers)
        out["layers"] = list(self.layers) if self.layers is not None else None
        out["resolved_budget"] = asdict(self.resolved_budget)
        return out
