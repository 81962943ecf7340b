"""The voxel sizes a model was trained on, and the scans that lie beyond them.

A model trained on 2-6 mm slices meets 8 mm slices, or 2.5 mm pixels, in a researcher's cohort: its lesions are
fainter there (partial volume) than anything it learnt, and its Dice is lower than the test figures say. Training
stores the range of its cases' voxel sizes (the first channel's, read from the headers only) in the checkpoint and
the bundle; inference notes each case whose voxels are coarser than that range (``notes`` in ``volumes.csv``, and
a warning in the log). Finer voxels are not noted: every case is resampled to the model's grid, so they only
bring more detail.

Example:
    >>> trained = scan_range(["dwi_a.nii.gz", "dwi_b.nii.gz"])  # doctest: +SKIP
    >>> coarser_than_trained(nib.load("dwi_c.nii.gz").affine, trained)  # doctest: +SKIP
    ['slices 8.0 mm thick (trained on 2.0-6.0 mm)']
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["voxel_size", "scan_range", "coarser_than_trained"]

# a scan is noted only beyond the trained maximum by more than this share (header rounding, a slice gap)
TOLERANCE = 0.1


def voxel_size(affine: np.ndarray) -> tuple[float, float]:
    """(in-plane, slice) voxel size in mm of an image's affine: the mean of the two finest axes, and the
    coarsest, whatever the axis order or tilt."""
    sizes = np.sort(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    return float(sizes[:2].mean()), float(sizes[2])


def scan_range(paths: Iterable[str | Path]) -> dict | None:
    """``{"inplane_mm": [lo, hi], "slice_mm": [lo, hi], "cases": n}`` over the files whose header reads; None
    for none (an unreadable file is left to the loader, which names it with its case)."""
    sizes = []
    for path in paths:
        try:
            sizes.append(voxel_size(nib.load(str(path)).affine))  # the header only
        except (OSError, ValueError, EOFError, TypeError, nib.filebasedimages.ImageFileError):
            continue
    sizes = np.array(sizes)
    if not len(sizes):
        return None
    lo, hi = sizes.min(0).round(2), sizes.max(0).round(2)
    return {"inplane_mm": [float(lo[0]), float(hi[0])], "slice_mm": [float(lo[1]), float(hi[1])],
            "cases": int(len(sizes))}


def coarser_than_trained(affine: np.ndarray, trained: dict | None, tolerance: float = TOLERANCE) -> list[str]:
    """What about the voxels of an image with this affine lies beyond ``trained`` (:func:`scan_range`), one phrase
    each; [] when nothing does or no range is known (a model from before ranges were stored)."""
    if not trained:
        return []
    inplane, thickness = voxel_size(affine)
    notes = []
    for name, value, (lo, hi) in (("slices", thickness, trained["slice_mm"]),
                                  ("pixels", inplane, trained["inplane_mm"])):
        if value > hi * (1 + tolerance):
            size = "thick" if name == "slices" else "wide"
            notes.append(f"{name} {value:.1f} mm {size} (trained on {lo:.1f}-{hi:.1f} mm)")
    return notes
