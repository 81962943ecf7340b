"""The evaluation report's figures: per-case scores, volumes (with Bland-Altman), best and worst cases."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.figures import draw_overlay, lesion_slice, pyplot, save_figure

__all__ = ["ras_slice", "report_figures"]


def ras_slice(image, truth, pred, affine):
    """The axial slice with the most truth (else prediction) in RAS display orientation."""
    ornt = nib.orientations.io_orientation(affine)
    to_ras = lambda a: nib.orientations.apply_orientation(a, ornt)  # noqa: E731
    image, truth, pred = to_ras(image), to_ras(truth), to_ras(pred)
    z = lesion_slice(truth, pred)
    return image[:, :, z], truth[:, :, z], pred[:, :, z]


def report_figures(rows: list[dict], slices: dict, out: Path) -> dict[str, Path]:
    """Per-case scores, predicted vs true volume with Bland-Altman, best and worst cases: PNG paths."""
    plt = pyplot()
    files = {}
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    for ax, col in zip(axes, ("dice", "lesion_f1"), strict=True):
        v = np.array([r[col] for r in rows], float)
        ax.boxplot(v[np.isfinite(v)], widths=0.5, showfliers=False)
        ax.scatter(1 + rng.uniform(-0.12, 0.12, len(v)), v, s=14, alpha=0.7, color="tab:blue", zorder=3)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks([1], [col])
        ax.set_title(f"{col}: median {np.nanmedian(v):.3f} (n={len(v)})", fontsize=9)
    fig.suptitle("Per-case scores (one dot per case)", fontsize=10)
    fig.tight_layout()
    files["scores"] = _save(fig, out / "per_case_scores.png")

    true_ml = np.array([r["true_ml"] for r in rows])
    pred_ml = np.array([r["pred_ml"] for r in rows])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.8))
    top = max(true_ml.max(initial=0), pred_ml.max(initial=0)) * 1.05 + 1e-3
    a1.plot([0, top], [0, top], "k--", lw=0.8)
    a1.scatter(true_ml, pred_ml, s=16)
    a1.set(xlabel="true lesion volume (mL)", ylabel="predicted volume (mL)", title="Predicted vs true volume")
    mean, diff = (true_ml + pred_ml) / 2, pred_ml - true_ml
    bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    a2.scatter(mean, diff, s=16)
    for y, style in ((bias, "-"), (bias + 1.96 * sd, "--"), (bias - 1.96 * sd, "--")):
        a2.axhline(y, color="tab:red", ls=style, lw=0.8)
    a2.set(xlabel="mean of true and predicted (mL)", ylabel="predicted - true (mL)",
           title=f"Bland-Altman: bias {bias:.2f} mL, limits ±{1.96 * sd:.2f}")
    for a in (a1, a2):
        a.title.set_fontsize(9)
    fig.tight_layout()
    files["volumes"] = _save(fig, out / "volumes.png")

    order = sorted(rows, key=lambda r: r["dice"])
    picks = order[-3:][::-1] + order[:3] if len(order) > 6 else order[::-1]
    fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks), 3.0), squeeze=False)
    for ax, r in zip(axes[0], picks, strict=True):
        draw_overlay(ax, *slices[r["id"]], title=f"{r['id']}\nDice {r['dice']:.2f}")
    fig.suptitle("Best (left) and worst (right) cases: truth green, prediction red", fontsize=10)
    fig.tight_layout()
    files["overlays"] = _save(fig, out / "best_worst_cases.png")
    return files


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=110)
