"""How far the voxel probabilities can be trusted: reliability diagram and expected calibration error (ECE), and
how confident the model is in the lesions it finds (true vs false detections).

Voxel statistics pool every case (MONAI's ``calibration_binning`` per case, bins summed). Background voxels the
model is sure of (p < ``min_prob``) and that are not lesion are left out: they are over 99% of a brain and would
make any model look calibrated; ECE is the count-weighted mean |mean probability - lesion frequency| over the
bins of the rest. Detection confidence reads ``lesions.csv`` (written by ``infer`` with labels).

Example:
    >>> acc = CalibrationAccumulator()
    >>> acc.add(prob, truth)  # doctest: +SKIP
    >>> acc.result()["ece"]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from pipeline.figures import pyplot, save_figure

__all__ = ["CalibrationAccumulator", "detection_confidence", "calibration_figure"]


class CalibrationAccumulator:
    """Sums of probability, lesion frequency and count per probability bin over the cases added."""

    def __init__(self, num_bins: int = 10, min_prob: float = 0.01):
        self.num_bins, self.min_prob = num_bins, min_prob
        self.p_sum = np.zeros(num_bins)
        self.y_sum = np.zeros(num_bins)
        self.count = np.zeros(num_bins)

    def add(self, prob: np.ndarray, truth: np.ndarray) -> None:
        from monai.metrics import calibration_binning

        keep = (prob >= self.min_prob) | (truth > 0)
        if not keep.any():
            return
        p = torch.as_tensor(prob[keep], dtype=torch.float32).clamp(0, 1).view(1, 1, -1)
        y = torch.as_tensor(truth[keep] > 0, dtype=torch.float32).view(1, 1, -1)
        mean_p, mean_y, counts = (t[0, 0].double().numpy() for t in calibration_binning(p, y, self.num_bins,
                                                                                             right=False))
        filled = counts > 0
        self.p_sum[filled] += (mean_p * counts)[filled]
        self.y_sum[filled] += (mean_y * counts)[filled]
        self.count += counts

    def result(self) -> dict | None:
        """``ece``, the voxels counted and per bin: edges, mean probability, lesion frequency, count."""
        total = self.count.sum()
        if not total:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_p, freq = self.p_sum / self.count, self.y_sum / self.count
        filled = self.count > 0
        ece = float((self.count[filled] * np.abs(mean_p[filled] - freq[filled])).sum() / total)
        edges = np.linspace(0, 1, self.num_bins + 1)
        bins = [dict(lo=round(float(edges[i]), 3), hi=round(float(edges[i + 1]), 3),
                     mean_prob=float(mean_p[i]) if filled[i] else None, lesion_frequency=float(freq[i])
                     if filled[i] else None, count=int(self.count[i])) for i in range(self.num_bins)]
        return dict(ece=ece, voxels=int(total), min_prob=self.min_prob, bins=bins)


def detection_confidence(lesions_csv: str | Path, ids: set[str] | None = None) -> dict | None:
    """Maximum probability of each predicted lesion, split into true and false detections (``lesions.csv`` rows
    whose ``detected`` is known); None without such rows."""
    path = Path(lesions_csv)
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "predicted" and r["detected"] in ("True", "False")
                and r["max_prob"] and (ids is None or r["id"] in ids)]
    if not rows:
        return None
    split = {flag: [float(r["max_prob"]) for r in rows if r["detected"] == flag] for flag in ("True", "False")}
    return dict(true=split["True"], false=split["False"])


def calibration_figure(calibration: dict | None, confidence: dict | None, path: str | Path) -> Path | None:
    """Reliability diagram (bars: lesion frequency per bin, against the diagonal) and, with ``confidence``,
    histograms of the lesions' maximum probability for true and false detections."""
    panels = [p for p in (calibration, confidence) if p]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    ax = axes[0][0]
    if calibration:
        bins = [b for b in calibration["bins"] if b["count"]]
        ax.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["lesion_frequency"] for b in bins],
               width=1 / len(calibration["bins"]) * 0.9, color="tab:blue", alpha=0.8, label="lesion frequency")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.plot([b["mean_prob"] for b in bins], [b["lesion_frequency"] for b in bins], "o-", color="tab:red", ms=3,
                label="mean probability")
        ax.set(xlabel="predicted lesion probability", ylabel="observed lesion frequency", xlim=(0, 1), ylim=(0, 1),
               title=f"voxels (p >= {calibration['min_prob']} or lesion): ECE {calibration['ece']:.3f}")
        ax.legend(fontsize=7, loc="upper left")
        ax = axes[0][-1]
    if confidence:
        edges = np.linspace(0, 1, 11)
        ax.hist([confidence["true"], confidence["false"]], bins=edges, color=["tab:green", "tab:red"],
                label=[f"true detections ({len(confidence['true'])})", f"false ({len(confidence['false'])})"])
        ax.set(xlabel="lesion's maximum probability", ylabel="lesions", title="detection confidence")
        ax.legend(fontsize=7, loc="upper left")
    for a in axes[0]:
        a.title.set_fontsize(9)
    fig.tight_layout()
    return save_figure(fig, path)
