"""Figure helpers shared by every layer: a headless pyplot, the slice through a lesion, overlays, atomic PNGs.

Example:
    >>> plt = pyplot()
    >>> z = lesion_slice(np.zeros((4, 4, 6), bool))  # the middle slice when there is no lesion
    >>> z
    3
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["pyplot", "lesion_slice", "draw_overlay", "overlay_grid", "save_figure"]


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lesion_slice(*masks: np.ndarray | None, axis: int = -1) -> int:
    """The slice along ``axis`` with the most voxels of the first non-empty mask (truth, then prediction),
    else the middle one."""
    shape = next(m.shape for m in masks if m is not None)
    for mask in masks:
        if mask is not None and np.any(mask):
            other = tuple(i for i in range(mask.ndim) if i != axis % mask.ndim)
            return int(np.argmax(np.asarray(mask).sum(other)))
    return shape[axis] // 2


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
    plt = pyplot()
    fig, axes = plt.subplots(1, len(pictures), figsize=(2.8 * len(pictures), 3.1), squeeze=False)
    for i, (ax, (image, truth, pred)) in enumerate(zip(axes[0], pictures, strict=False)):
        draw_overlay(ax, image, truth, pred, names[i] if names else f"case {i}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG atomically (no reader sees half a file) and close it."""
    from pipeline.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return Path(path)
