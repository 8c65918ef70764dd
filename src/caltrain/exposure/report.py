"""Plots (PNG) and one self-contained HTML page for an assessment; JSON is written by the report itself."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from caltrain.exposure.assess import AssessmentReport


def _plot_similarity(report: AssessmentReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = [lr.verdict.name for lr in report.layers]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("ssim", "psnr"), strict=True):
        attacks = list(report.layers[0].verdict.attacks)
        for j, attack in enumerate(attacks):
            stats = [getattr(lr.verdict.attacks[attack], metric)["mean"] for lr in report.layers]
            mean = np.array([s.value for s in stats])
            err = np.array([[s.value - s.lo for s in stats], [s.hi - s.value for s in stats]])
            ax.errorbar(x + (j - len(attacks) / 2) * 0.06, mean, yerr=err, marker="o", capsize=3, label=attack)
        for prior, style in (("class-mean", "--"), ("global-mean", ":")):
            ax.axhline(report.baselines[prior][metric]["mean"].value, color="grey", linestyle=style, label=prior)
        if metric == "ssim":
            ax.axhline(report.config.max_p95_ssim, color="red", linewidth=0.8, label="unrecognisable below")
        ax.set_xticks(x, names)
        ax.set_xlabel("cut after layer")
        ax.set_ylabel(f"mean {metric.upper()} (95% CI)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Reconstruction from the IR at each cut: {report.model_name} on {report.dataset}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_seed_margin(report: AssessmentReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = [lr.verdict.name for lr in report.layers]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.boxplot([lr.seed.margin for lr in report.layers], tick_labels=names, showfliers=False)
    ax.axhline(0.0, color="red", linewidth=0.8)
    for i, lr in enumerate(report.layers, start=1):
        ax.annotate(
            f"{lr.seed.safe.mean():.0%} safe",
            (i, 0),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.set_ylabel("seed KL margin m_l(x) − δ(x)  (safe ≥ 0)")
    ax.set_xlabel("cut after layer")
    ax.set_title("Seed rule (DeepEnclave) per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_gallery(report: AssessmentReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [("original", report.gallery_originals)]
    rows += [(f"prior: {k}", v) for k, v in report.gallery_priors.items()]
    rows += [(f"{lr.verdict.name}: {a}", r) for lr in report.layers for a, r in lr.gallery.items()]
    cols = len(report.gallery_originals)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols + 1.6, 1.2 * len(rows)), squeeze=False)
    for (label, images), row in zip(rows, axes, strict=True):
        for image, ax in zip(images, row, strict=True):
            ax.imshow(
                np.clip(
                    image.transpose(1, 2, 0).squeeze(-1) if image.shape[0] == 1 else image.transpose(1, 2, 0), 0, 1
                ),
                cmap="gray",
                vmin=0,
                vmax=1,
            )
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _html(report: AssessmentReport, images: list[Path]) -> str:
    data = report.to_json()
    esc = html.escape
    rows = []
    for layer in data["layers"]:
        for attack, o in layer["attacks"].items():
            s, g, r = o["ssim"]["mean"], o["ssim_gain_over_prior"]["mean"], o["reidentification_top1"]
            rows.append(
                f"<tr><td>{esc(layer['name'])}</td><td>{esc(attack)}</td>"
                f"<td>{s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]</td><td>{o['ssim']['p95']['value']:.3f}</td>"
                f"<td>{o['psnr']['mean']['value']:.1f}</td><td>{g['value']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]</td>"
                f"<td>{r['value']:.2f}</td><td>{layer['seed_rule']['fraction_safe']:.0%}</td>"
                f"<td>{'reconstructs' if o['reconstructs'] else 'no'}</td></tr>"
            )
    misses = (
        "".join(
            f"<li><b>{esc(m['layer'])}</b> / {esc(m['attack'])}: {esc('; '.join(m['reasons']))}</li>"
            for m in data["seed_rule_misses"]
        )
        or "<li>none</li>"
    )
    cost = data["recommended_enclave_cost"]
    figures = "".join(
        f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{esc(p.stem)}</figcaption></figure>"
        for p in images
    )
    fsha = data["training_time_hijacking"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Exposure assessment</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}td,th{{border:1px solid #ccc;padding:2px 6px}}
table{{border-collapse:collapse;font-size:13px}}img{{max-width:100%}}.warn{{color:#a00}}</style></head><body>
<h1>Information-exposure assessment: {esc(report.model_name)} on {esc(report.dataset)}</h1>
<p>Seed {data["seed"]}, budget {esc(report.config.budget)}, tiers {esc(", ".join(report.config.tiers))},
{data["seconds"]:.0f} s.</p>
<h2>Recommendation</h2>
<p>Cut after <b>{esc(data["recommended_layer"])}</b> (tier {esc(data["recommended_tier"])}; by tier:
{esc(str(data["recommendation_by_tier"]))}). The seed rule alone would cut after
<b>{esc(data["seed_rule_layer"])}</b>. Enclave cost: {cost["frontnet_params"]:,} FrontNet parameters,
{cost["activation_bytes"]:,} bytes of activations, {cost["flops"]:,} FLOPs, {cost["latency_ms"]:.3f} ms per input.</p>
<h2 class="warn">Layers the seed rule calls safe but an attack reconstructs</h2><ul>{misses}</ul>
{f'<p class="warn"><b>Training-time hijacking applies.</b> {esc(fsha["note"])}</p>' if fsha["applies"] else ""}
<h2>Per layer and attack</h2>
<table><tr><th>layer</th><th>attack</th><th>SSIM mean [95% CI]</th><th>SSIM p95</th><th>PSNR</th>
<th>SSIM gain over class-mean prior</th><th>re-id top-1 (K={report.config.candidates_k})</th><th>seed: safe</th>
<th>verdict</th></tr>{"".join(rows)}</table>
{figures}</body></html>"""


def write_report(report: AssessmentReport, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    images = [out_dir / "ssim_psnr.png", out_dir / "seed_kl_margin.png", out_dir / "gallery.png"]
    for plot, path in zip((_plot_similarity, _plot_seed_margin, _plot_gallery), images, strict=True):
        plot(report, path)
    page = out_dir / "report.html"
    page.write_text(_html(report, images), encoding="utf-8")
    return [*images, page]
