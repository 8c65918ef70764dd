"""Plots (PNG) and one self-contained HTML page for an assessment, made for a model owner who has a minute:
the recommendation in words first, then cost against risk per cut, then how cuts are judged and the evidence.
Everything shown comes from the report's JSON (written beside it), so the page never says what the file does not.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from caltrain.exposure.summary import ATTACK_WORDS, TIER_HOST

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from caltrain.exposure.assess import AssessmentReport

SAFE, UNSAFE, NEUTRAL = "#1a7f37", "#c62828", "#555555"
ATTACK_COLOURS = {"decoder-noise": "#1f77b4", "decoder-10pct": "#ff7f0e", "decoder-full": "#2ca02c", "rmle": "#d62728"}


def _best(layer: dict[str, Any], attacks: list[str], key: str) -> tuple[float, str]:
    """The highest value of `key` among the tier's attacks at a layer, and which attack reached it."""
    values = {
        "gain": {a: layer["attacks"][a]["ssim_gain_over_prior"]["mean"]["hi"] for a in attacks},
        "reid": {a: layer["attacks"][a]["reidentification_top1"]["value"] for a in attacks},
    }[key]
    name = max(values, key=lambda a: values[a])
    return values[name], name


def _plot_cost_risk(data: dict[str, Any], path: Path) -> None:
    """Per cut (and the whole model): the strongest tier's best attack against the enclave's cost."""
    import matplotlib.pyplot as plt

    tier, th = data["recommended_tier"], data["thresholds"]
    attacks = data["tiers"][tier]
    layers = data["layers"]
    names = [f"after {layer['name']}" for layer in layers] + ["whole model\n(no cut)"]
    x = np.arange(len(names))
    chosen = [layer["name"] for layer in layers].index(data["recommended_layer"]) if not _whole(data) else len(layers)
    fig, (ax_gain, ax_reid, ax_cost) = plt.subplots(3, 1, figsize=(12, 8.6), sharex=True, height_ratios=[1, 1, 0.9])
    panels = [
        (
            ax_gain,
            "gain",
            th["max_ssim_gain"],
            "SSIM gain over the\nclass-mean prior",
            f"safe: gain ≤ {th['max_ssim_gain']:+.2f}",
        ),
        (ax_reid, "reid", th["max_reid"], "re-identification\n(top-1 among K)", f"safe: ≤ {th['max_reid']:.0%}"),
    ]
    for ax, key, limit, ylabel, safe_label in panels:
        best = [_best(layer, attacks, key) for layer in layers]
        values = [v for v, _ in best]
        top = max([*values, limit * 1.6, 0.1]) * 1.15
        bottom = min([*values, 0.0]) - 0.05 * top
        ax.axhspan(bottom, limit, color=SAFE, alpha=0.10, label=safe_label)
        ax.axhline(limit, color=SAFE, linewidth=1)
        if key == "reid":
            ax.axhline(
                th["chance"],
                color=NEUTRAL,
                linestyle=":",
                label=f"chance: 1/K = {th['chance']:.0%} (K={th['candidates_k']})",
            )
        ax.plot(x[: len(layers)], values, color=NEUTRAL, linewidth=1, zorder=1)
        for i, (layer, (value, attack)) in enumerate(zip(layers, best, strict=True)):
            ok = layer["safe"][tier]
            ax.scatter([i], [value], s=70, zorder=3, color=SAFE if ok else UNSAFE, marker="o" if ok else "X")
            ax.annotate(attack, (i, value), textcoords="offset points", xytext=(8, 4), fontsize=8, color=NEUTRAL)
        ax.annotate(
            "nothing crosses",
            (len(layers), bottom),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
            color=NEUTRAL,
        )
        ax.set_ylim(bottom, top)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    ax_reid.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax_gain.scatter([], [], color=SAFE, marker="o", label="cut safe (all criteria)")
    ax_gain.scatter([], [], color=UNSAFE, marker="X", label="cut not safe")
    for ax in (ax_gain, ax_reid):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    costs = [layer["enclave_cost"] for layer in layers] + [data["full_enclave_cost"]]
    full_flops = max(data["full_enclave_cost"]["flops"], 1)
    shares = [100 * c["flops"] / full_flops for c in costs]
    bars = ax_cost.bar(x, shares, color=["#90a4ae"] * len(layers) + ["#607d8b"], width=0.55)
    for bar, c in zip(bars, costs, strict=True):
        ax_cost.annotate(
            f"{c['flops'] / 1e6:.3g} MFLOPs\n{c['latency_ms']:.2g} ms · {c['frontnet_params']:,} params",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=7.5,
        )
    ax_cost.set_ylim(0, 135)
    ax_cost.set_ylabel("enclave cost\n(% of model FLOPs)")
    ax_cost.grid(axis="y", alpha=0.3)
    for ax in (ax_gain, ax_reid, ax_cost):
        ax.axvspan(chosen - 0.4, chosen + 0.4, color="#fff3c4", zorder=0)
    ax_gain.annotate(
        "recommended",
        (chosen, 1),
        xycoords=("data", "axes fraction"),
        xytext=(0, -12),
        textcoords="offset points",
        ha="center",
        fontsize=9,
        fontweight="bold",
    )
    ax_cost.set_xticks(x, names)
    ax_cost.set_xlabel("where the model is cut (FrontNet = everything before the cut, in the enclave)")
    fig.suptitle(f"Cost versus risk per cut: the {tier} tier's best attack at each cut", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _whole(data: dict[str, Any]) -> bool:
    return bool(data["recommended_layer"] == data["full_enclave_layer"])


def _plot_similarity(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    layers = data["layers"]
    names = [layer["name"] for layer in layers]
    x = np.arange(len(names))
    attacks = list(layers[0]["attacks"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in zip(
        axes, ("ssim", "psnr"), ("mean SSIM (1 = identical)", "mean PSNR (dB, higher = closer)"), strict=True
    ):
        for j, attack in enumerate(attacks):
            stats = [layer["attacks"][attack][metric]["mean"] for layer in layers]
            mean = np.array([s["value"] for s in stats])
            err = np.array([[s["value"] - s["lo"] for s in stats], [s["hi"] - s["value"] for s in stats]])
            offset = (j - (len(attacks) - 1) / 2) * 0.07
            ax.errorbar(
                x + offset, mean, yerr=err, marker="o", capsize=3, label=attack, color=ATTACK_COLOURS.get(attack)
            )
        for prior, style in (("class-mean", "--"), ("global-mean", ":")):
            ax.axhline(
                data["baselines"][prior][metric]["mean"]["value"],
                color="grey",
                linestyle=style,
                label=f"prior: {prior}",
            )
        if metric == "ssim":
            ax.axhline(
                data["thresholds"]["max_p95_ssim"], color=UNSAFE, linewidth=0.8, label="SSIM 0.3: unrecognisable below"
            )
        ax.set_xticks(x, [f"after {n}" for n in names])
        ax.set_xlabel("cut")
        ax.set_ylabel(f"{label}\nwith 95% CI")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"How close each attack's reconstructions come to the targets, per cut ({data['targets']} targets)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_seed_margin(report: AssessmentReport, data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    names = [f"after {lr.verdict.name}" for lr in report.layers]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([lr.seed.margin for lr in report.layers], tick_labels=names, showfliers=False)
    ax.axhline(0.0, color=UNSAFE, linewidth=0.8, label="safe for a target above 0")
    for i, layer in enumerate(data["layers"], start=1):
        ax.annotate(
            f"{layer['seed_rule']['fraction_safe']:.0%} of targets safe",
            (i, 0),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.set_ylabel("seed KL margin m_l(x) − δ(x) (nats)")
    ax.set_xlabel("cut")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("DeepEnclave's seed rule per cut (box: quartiles over targets)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _image(ax: Axes, image: np.ndarray) -> None:
    rgb = image.transpose(1, 2, 0)
    ax.imshow(np.clip(rgb[..., 0] if rgb.shape[-1] == 1 else rgb, 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_gallery(report: AssessmentReport, data: dict[str, Any], path: Path) -> None:
    """One row per target image set: the originals, the priors, then every attack at every cut, labelled, with
    each reconstruction's SSIM to its original underneath."""
    import matplotlib.pyplot as plt

    rows: list[tuple[str, np.ndarray, list[float] | None]] = [("original targets", report.gallery_originals, None)]
    rows += [
        (f"prior: {k} image\n(no IR used)", v, data["baselines"][k]["gallery_ssim"])
        for k, v in report.gallery_priors.items()
    ]
    for lr, layer in zip(report.layers, data["layers"], strict=True):
        rows += [
            (f"cut after {lr.verdict.name}\n{a}", r, layer["attacks"][a]["gallery_ssim"]) for a, r in lr.gallery.items()
        ]
    cols = len(report.gallery_originals)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.15 * cols + 2.2, 1.3 * len(rows)), squeeze=False)
    for r, ((label, images, ssims), row) in enumerate(zip(rows, axes, strict=True)):
        for c, (image, ax) in enumerate(zip(images, row, strict=True)):
            _image(ax, image)
            if ssims is not None:
                ax.set_xlabel(f"SSIM {ssims[c]:.2f}", fontsize=7, labelpad=1)
            if r == 0:
                ax.set_title(f"target {c + 1}", fontsize=8)
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8, labelpad=8)
    fig.tight_layout(h_pad=0.6)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _png(path: Path) -> str:
    return f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"


def _ci(e: dict[str, float], fmt: str = ".3f") -> str:
    return f"{e['value']:{fmt}} [{e['lo']:{fmt}}, {e['hi']:{fmt}}]"


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1080px;margin:24px auto;padding:0 16px}
body{color:#222;line-height:1.45}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.sub{color:#555;margin:0 0 16px}
.rec{border:2px solid #333;border-radius:8px;padding:14px 18px;background:#fafafa}
.rec.whole{border-color:#c62828;background:#fff5f5}.rec.cut{border-color:#1a7f37;background:#f3fbf4}
.headline{font-size:21px;font-weight:700;margin:0 0 8px}
.rec p{margin:6px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#f0f0f0;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.safe{color:#1a7f37;font-weight:600}.unsafe{color:#c62828;font-weight:600}
.warn{border-left:4px solid #c62828;padding:6px 10px;background:#fff5f5;margin:10px 0}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:14px;margin:14px 0}
dl.facts dt{color:#555}dl.facts dd{margin:0}code{font-size:12px;word-break:break-all}
figure{margin:10px 0 18px}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#444;margin-top:4px}
ul.tight li{margin:3px 0}
"""


def _html(report: AssessmentReport, data: dict[str, Any], images: dict[str, Path]) -> str:
    esc = html.escape
    s, th, cfg = data["summary"], data["thresholds"], data["config"]
    tier, model = data["recommended_tier"], data["model"]
    whole = _whole(data)
    tier_rows = "".join(
        f"<tr><td>{esc(t['tier'])}</td><td>{esc(t['host'])}</td><td><b>{esc(t['advice'])}</b></td></tr>"
        for t in s["by_tier"]
    )
    fsha = data["training_time_hijacking"]
    fsha_html = f'<p class="warn"><b>Also:</b> {esc(fsha["note"])}</p>' if fsha["applies"] else ""
    chance = f"{th['chance']:.0%}"
    budget = cfg["resolved_budget"]
    facts = [
        ("model", esc(model["name"])),
        ("spec hash", f"<code>{esc(model['hash'])}</code>" if model["hash"] else "— (not built from a spec)"),
        ("weights SHA-256", f"<code>{esc(model['weights_digest'])}</code>"),
        (
            "test accuracy",
            f"{model['test_accuracy']:.1%} on {data['test_records']:,} held-out images of {esc(data['dataset'])}",
        ),
        (
            "targets",
            f"{data['targets']} held-out images attacked; "
            f"{data['auxiliary_images']:,} auxiliary images for the attacker",
        ),
        (
            "budget",
            f"{esc(cfg['budget'])}: decoders {budget['decoder_epochs']} epochs, rMLE {budget['rmle_steps']} steps, "
            f"{budget['bootstrap']:,} bootstrap resamples",
        ),
        ("tiers", ", ".join(esc(t) for t in data["tiers"])),
        (
            "run",
            f"{esc(data['created'])} (UTC), seed {data['seed']}, {data['seconds']:.0f} s, "
            f"caltrain {esc(data['caltrain_version'])}",
        ),
    ]
    facts_html = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    tiers_html = "".join(
        f"<li><b>{esc(t)}</b>: {esc(TIER_HOST[t])}; attacks: {esc(', '.join(a))}</li>" for t, a in data["tiers"].items()
    )
    used = {a for attacks in data["tiers"].values() for a in attacks}
    attacks_html = "".join(f"<li><b>{esc(a)}</b>: {esc(w)}</li>" for a, w in ATTACK_WORDS.items() if a in used)
    misses = (
        "".join(
            f"<li>after <b>{esc(m['layer'])}</b>, {esc(m['attack'])}: {esc('; '.join(m['reasons']))}</li>"
            for m in data["seed_rule_misses"]
        )
        or "<li>none: every cut the seed rule calls safe resists every attack too</li>"
    )
    rows = []
    for layer in data["layers"]:
        for attack, o in layer["attacks"].items():
            verdict = (
                f'<span class="unsafe">reconstructs</span> ({esc(", ".join(o["failed_criteria"]))})'
                if o["reconstructs"]
                else '<span class="safe">at the prior\'s level</span>'
            )
            rows.append(
                f"<tr><td>after {esc(layer['name'])}</td><td>{esc(attack)}</td>"
                f"<td class=num>{_ci(o['ssim']['mean'])}</td>"
                f"<td class=num>{o['ssim']['p95']['value']:.3f} (&lt; {o['p95_bar']:.3f})</td>"
                f"<td class=num>{o['psnr']['mean']['value']:.1f} dB</td>"
                f"<td class=num>{_ci(o['ssim_gain_over_prior']['mean'], '+.3f')}</td>"
                f"<td class=num>{o['reidentification_top1']['value']:.0%}</td><td>{verdict}</td></tr>"
            )
    cost_rows = []
    for layer in data["layers"]:
        c, share = layer["enclave_cost"], layer["cost_share"]
        safe = " / ".join(
            f'<span class="{"safe" if ok else "unsafe"}">{esc(t)}: {"safe" if ok else "not safe"}</span>'
            for t, ok in layer["safe"].items()
        )
        seed = layer["seed_rule"]
        cost_rows.append(
            f"<tr><td>after {esc(layer['name'])}</td><td>{'×'.join(map(str, layer['ir_shape']))}</td>"
            f"<td class=num>{c['frontnet_params']:,} ({share['params']:.0%})</td>"
            f"<td class=num>{c['flops'] / 1e6:.3g} ({share['flops']:.0%})</td>"
            f"<td class=num>{c['activation_bytes'] / 1024:,.0f}</td><td class=num>{c['latency_ms']:.3f}</td>"
            f"<td class=num>{seed['fraction_safe']:.0%} ({'safe' if seed['safe'] else 'not safe'})</td>"
            f"<td>{safe}</td></tr>"
        )
    fc = data["full_enclave_cost"]
    cost_rows.append(
        f"<tr><td>whole model (no cut)</td><td>nothing crosses</td><td class=num>{fc['frontnet_params']:,} (100%)</td>"
        f"<td class=num>{fc['flops'] / 1e6:.3g} (100%)</td><td class=num>{fc['activation_bytes'] / 1024:,.0f}</td>"
        f"<td class=num>{fc['latency_ms']:.3f}</td><td>—</td><td>—</td></tr>"
    )
    prior = data["baselines"]["class-mean"]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Where to cut {esc(model["name"])}: exposure assessment</title><style>{STYLE}</style></head><body>
<h1>Where to cut {esc(model["name"])}</h1>
<p class="sub">Information-exposure assessment on {esc(data["dataset"])}: what an untrusted host could reconstruct
from what crosses each cut, and what keeping more of the model in the enclave costs.</p>

<div class="rec {"whole" if whole else "cut"}">
<p class="headline">{esc(s["headline"])}</p>
<p>{esc(s["cost"])}</p>
<p>{esc(s["reason"])}</p>
<table><tr><th>tier</th><th>if the host is…</th><th>then</th></tr>{tier_rows}</table>
<p>{esc(s["seed_rule"])}</p>
</div>
{fsha_html}
<dl class="facts">{facts_html}</dl>

<h2>Cost versus risk per cut</h2>
<figure><img alt="cost versus risk per cut" src="{_png(images["cost_risk"])}">
<figcaption>For each place the model can be cut (left to right: more of the model in the enclave), the
{esc(tier)} tier's most successful attack on what crosses the cut. Top: its SSIM gain over the class-mean prior
(the image a host guesses from the predicted class alone; upper end of the 95% confidence interval). Middle: how
often it picks its target out of K={th["candidates_k"]} held-out images of the same class (chance {chance}).
Green bands: the safe region of each criterion. A cut is safe (green circle) when every attack of the tier stays in
both bands, keeps its 95th-percentile SSIM low, and the seed rule agrees (next section); a red cross fails at
least one. Bottom: what the enclave then runs per input: compute as a share of the whole model, with MFLOPs, latency
on this machine and parameters. Highlighted: the recommendation.</figcaption></figure>

<h2>How a cut is judged</h2>
<p>Threat tiers (what the host is assumed to have):</p><ul class="tight">{tiers_html}</ul>
<p>Attacks:</p><ul class="tight">{attacks_html}</ul>
<p>An attack <b>stays at the prior's level</b> at a cut when all three hold (each with its threshold):</p>
<ul class="tight">
<li><b>gain</b>: its mean SSIM gain over the class-mean prior is at most {th["max_ssim_gain"]:+.2f} at the upper end
of its 95% bootstrap confidence interval (SSIM: 1 = identical images, 0 = unrelated; the class-mean prior itself scores
{prior["ssim"]["mean"]["value"]:.3f} here, PSNR {prior["psnr"]["mean"]["value"]:.1f} dB);</li>
<li><b>p95</b>: its 95th-percentile SSIM is below {th["max_p95_ssim"]} (unrecognisable), or below the prior's own
95th percentile + {th["max_ssim_gain"]:.2f} where the prior alone already exceeds {th["max_p95_ssim"]};</li>
<li><b>re-identification</b>: it picks the true image among K={th["candidates_k"]} same-class candidates at most
{th["max_reid"]:.0%} of the time: chance level 1/K = {chance}, plus {th["reid_slack"]:.0%} slack.</li></ul>
<p>A cut is <b>safe under a tier</b> when every attack of the tier stays at the prior's level there <i>and</i>
DeepEnclave's seed rule calls it safe for at least {th["seed_safe_fraction"]:.0%} of the targets. The recommendation
is the shallowest cut from which every deeper cut is safe under the strongest tier requested ({esc(tier)}); when
none is, the whole model stays in the enclave. PSNR is in decibels (dB): higher means closer to the original.</p>

<h2>Where the seed rule errs</h2>
<p>Cuts DeepEnclave's seed rule calls safe where an attack still reconstructs:</p><ul class="tight">{misses}</ul>

<h2>Every cut: what crosses, what it costs, verdicts</h2>
<table><tr><th>cut</th><th>IR per input</th><th>FrontNet parameters</th><th>MFLOPs per input</th>
<th>activations (KiB)</th><th>latency (ms)</th><th>seed rule: targets safe</th><th>verdict per tier</th></tr>
{"".join(cost_rows)}</table>

<h2>Every cut and attack</h2>
<table><tr><th>cut</th><th>attack</th><th>SSIM, mean [95% CI]</th><th>SSIM p95 (safe below)</th><th>PSNR, mean</th>
<th>SSIM gain over class-mean prior, mean [95% CI] (safe ≤ {th["max_ssim_gain"]:+.2f})</th>
<th>re-identification (chance {chance}; safe ≤ {th["max_reid"]:.0%})</th><th>verdict (criteria failed)</th></tr>
{"".join(rows)}</table>

<h2>Reconstructions</h2>
<figure><img alt="reconstructions per cut and attack" src="{_png(images["gallery"])}">
<figcaption>The first {len(report.gallery_originals)} targets (top row), the priors (what a host guesses without the
IR), and each attack's reconstruction from the IR after each cut, with its SSIM to the original underneath.
</figcaption></figure>

<h2>Similarity per cut</h2>
<figure><img alt="SSIM and PSNR per cut" src="{_png(images["ssim_psnr"])}">
<figcaption>Mean SSIM (left) and PSNR in dB (right) of each attack's reconstructions over {data["targets"]} targets,
with bootstrap 95% confidence intervals; grey lines: the priors; red line: SSIM {th["max_p95_ssim"]}, below which
images count as unrecognisable.</figcaption></figure>

<h2>Seed rule per cut</h2>
<figure><img alt="seed rule KL margin per cut" src="{_png(images["seed_kl_margin"])}">
<figcaption>DeepEnclave's rule: each IR channel, scaled to an image, is classified by the model; the cut is safe for a
target when the smallest KL divergence from the target's own prediction reaches log N − H(P), i.e. the margin is
at least 0 (nats). Boxes: quartiles over targets; above each, the share of targets for which the cut is safe.
</figcaption></figure>
<p class="sub">report.json beside this page holds every number shown here.</p>
</body></html>"""


def write_report(report: AssessmentReport, data: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG plots and report.html under `out_dir`, from the report and its JSON `data`."""
    import matplotlib

    matplotlib.use("Agg")
    images = {name: out_dir / f"{name}.png" for name in ("cost_risk", "ssim_psnr", "seed_kl_margin", "gallery")}
    _plot_cost_risk(data, images["cost_risk"])
    _plot_similarity(data, images["ssim_psnr"])
    _plot_seed_margin(report, data, images["seed_kl_margin"])
    _plot_gallery(report, data, images["gallery"])
    page = out_dir / "report.html"
    page.write_text(_html(report, data, images), encoding="utf-8")
    return [*images.values(), page]
