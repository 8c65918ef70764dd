"""The assessment in plain words: what to do, what it costs, and why. Made from report.json's numbers only, so
the page, the command line and the JSON say the same thing."""

from __future__ import annotations

from typing import Any

# What each tier assumes the untrusted host has, in the words a model owner decides with.
TIER_HOST = {
    "no-data": "a host with no data of its own (it can only train a decoder on random noise)",
    "black-box": "a host with images like yours (decoders trained on 10% and on all of an auxiliary set)",
    "white-box": "a host that also knows the FrontNet's weights (it inverts them by optimisation: rMLE)",
}
ATTACK_WORDS = {
    "decoder-noise": "a decoder trained on noise",
    "decoder-10pct": "a decoder trained on 10% of the auxiliary images",
    "decoder-full": "a decoder trained on all the auxiliary images",
    "rmle": "rMLE inversion with the FrontNet's weights",
}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 else "under 1%"


def cost_words(cost: dict[str, Any], full: dict[str, Any], *, whole: bool) -> str:
    mflops, ms = cost["flops"] / 1e6, cost["latency_ms"]
    if whole:
        return f"all {cost['frontnet_params']:,} parameters and {mflops:.3g} MFLOPs, about {ms:.2g} ms per input here"
    params = cost["frontnet_params"] / max(full["frontnet_params"], 1)
    flops = cost["flops"] / max(full["flops"], 1)
    return (
        f"{cost['frontnet_params']:,} parameters ({_pct(params)} of the model) and {mflops:.3g} MFLOPs "
        f"({_pct(flops)} of its compute), about {ms:.2g} ms per input here"
    )


def _worst(layer: dict[str, Any], attacks: list[str]) -> tuple[str, list[str]] | None:
    """The attack of `attacks` that reconstructs most at this layer (by re-identification), and why."""
    failing = [(a, layer["attacks"][a]) for a in attacks if layer["attacks"][a]["failures"]]
    if not failing:
        return None
    name, outcome = max(failing, key=lambda item: item[1]["reidentification_top1"]["value"])
    return name, outcome["failures"]


def _why_unsafe(layer: dict[str, Any], attacks: list[str], thresholds: dict[str, Any]) -> str:
    worst = _worst(layer, attacks)
    if worst is not None:
        name, reasons = worst
        return f"{ATTACK_WORDS[name]} still reconstructs the input: {'; '.join(reasons)}"
    seed = layer["seed_rule"]
    return (
        f"the attacks stay at the prior's level, but the seed rule passes only {_pct(seed['fraction_safe'])} of the "
        f"targets (it needs {_pct(thresholds['seed_safe_fraction'])})"
    )


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    """headline, cost, reason, one line per tier and the seed rule's answer, from a report's JSON."""
    cuts, full = data["model"]["cuts"], data["full_enclave_layer"]
    tier, chosen = data["recommended_tier"], data["recommended_layer"]
    attacks = data["tiers"][tier]
    layers = {layer["name"]: layer for layer in data["layers"]}
    assessed = [layer["name"] for layer in data["layers"]]
    whole = chosen == full
    if whole:
        headline = "No cut is safe for this model: run it whole in the enclave."
        deepest = assessed[-1]
        why = _why_unsafe(layers[deepest], attacks, data["thresholds"])
        reason = f"Even at the deepest cut assessed (after {deepest}), {why}."
    else:
        m = cuts.index(chosen) + 1
        headline = (
            f"Cut after {chosen}: blocks 1–{m} run in the enclave, and from there on every attack of the {tier} "
            "tier stays at the prior's level."
        )
        before = assessed[: assessed.index(chosen)]
        reason = (
            f"One cut earlier (after {before[-1]}), {_why_unsafe(layers[before[-1]], attacks, data['thresholds'])}."
            if before
            else "Every cut assessed is safe; the shallowest costs the enclave least."
        )
    cost = f"Enclave cost: {cost_words(data['recommended_enclave_cost'], data['full_enclave_cost'], whole=whole)}."
    by_tier = []
    for t, cut in data["recommendation_by_tier"].items():
        advice = "run the whole model in the enclave" if cut == full else f"cut after {cut}"
        by_tier.append({"tier": t, "host": TIER_HOST[t], "cut": cut, "advice": advice})
    seed_cut = data["seed_rule_layer"]
    if seed_cut == chosen:
        seed = "DeepEnclave's seed rule alone gives the same answer."
    else:
        n = len({m["layer"] for m in data["seed_rule_misses"]})
        seed = (
            f"DeepEnclave's seed rule alone would cut after {seed_cut}: too early, since attacks still reconstruct "
            f"at {n} cut{'s' if n > 1 else ''} it calls safe (listed below)."
        )
    return {"headline": headline, "cost": cost, "reason": reason, "by_tier": by_tier, "seed_rule": seed}
