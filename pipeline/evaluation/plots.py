"""Figures: overlays of truth and prediction on image slices."""

from __future__ import annotations

import numpy as np

__all__ = ["overlay_grid", "draw_overlay"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_overlay(ax, image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray | None, title: str = "") -> None:
    """One RAS axial slice (X, Y) shown anterior-up, truth outlined green and prediction red."""
    ax.imshow(np.rot90(image), cmap="gray")
    for mask, colour in ((truth, "lime"), (pred, "red")):
        if mask is not None and np.any(mask):
            ax.contour(np.rot90(mask.astype(float)), levels=[0.5], colors=colour, linewidths=0.9)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_grid(pictures: list[tuple], title: str, names: list[str] | None = None):
    """A row of (image, truth, prediction) slices; returns the matplotlib figure."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(pictures), figsize=(2.8 * len(pictures), 3.1), squeeze=False)
    for i, (ax, (image, truth, pred)) in enumerate(zip(axes[0], pictures, strict=False)):
        draw_overlay(ax, image, truth, pred, names[i] if names else f"case {i}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
