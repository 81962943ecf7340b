"""Per-case segmentation metrics: the ISLES'22 set plus surface metrics.

Dice, absolute volume difference (mL), absolute lesion-count difference and lesion-wise F1 follow the
ISLES'22 evaluation code: 26-connected components, a lesion is detected when it overlaps the other
mask by at least one voxel, F1 = TP / (TP + (FP + FN) / 2), and Dice and F1 are 1.0 when both masks
are empty. Overlap and surface metrics come from MONAI, components from cc3d.

Example:
    >>> import numpy as np
    >>> truth = np.zeros((8, 8, 8), bool); truth[1:3, 1:3, 1:3] = True
    >>> round(lesion_f1(truth, truth), 3), round(dice(truth, truth), 3)
    (1.0, 1.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import cc3d
import numpy as np
import torch

__all__ = ["dice", "lesion_counts", "lesion_f1", "case_metrics", "METRIC_COLUMNS"]

METRIC_COLUMNS = ["dice", "iou", "hd95_mm", "assd_mm", "nsd", "avd_ml", "lesion_count_diff", "lesion_f1",
                  "true_ml", "pred_ml"]
CONNECTIVITY = 26


def _t(mask: np.ndarray) -> torch.Tensor:
    """(X, Y, Z) mask as MONAI's one-hot-ish (B=1, C=1, X, Y, Z) tensor."""
    return torch.as_tensor(np.asarray(mask, bool))[None, None]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice; 1.0 when both are empty, 0.0 when only the truth is (MONAI ``ignore_empty=False``)."""
    from monai.metrics import compute_dice

    return float(compute_dice(_t(pred), _t(truth), include_background=True, ignore_empty=False))


def lesion_counts(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Lesion-wise TP, FN (truth components without overlap) and FP (prediction components without overlap).

    Counts overlapping labels at once, rather than looping over components as the challenge code does;
    the definitions are the same.
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    truth_cc, n_truth = cc3d.connected_components(truth, connectivity=CONNECTIVITY, return_N=True)
    pred_cc, n_pred = cc3d.connected_components(pred, connectivity=CONNECTIVITY, return_N=True)
    tp = len(np.unique(truth_cc[pred & truth]))
    fp = n_pred - len(np.unique(pred_cc[pred & truth]))
    return dict(tp=tp, fn=n_truth - tp, fp=fp, n_truth=int(n_truth), n_pred=int(n_pred))


def lesion_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """ISLES'22 lesion-wise F1; 1.0 when neither mask has a lesion."""
    c = lesion_counts(pred, truth)
    if c["tp"] + c["fp"] + c["fn"] == 0:
        return 1.0
    return c["tp"] / (c["tp"] + (c["fp"] + c["fn"]) / 2)


def _surface(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> dict:
    """HD95, ASSD (mm) and normalised surface Dice at ``tolerance_mm``; 0/0/1 when both are empty and
    NaN when exactly one is (no surface to measure from)."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    if not pred.any() and not truth.any():
        return dict(hd95_mm=0.0, assd_mm=0.0, nsd=1.0)
    if not pred.any() or not truth.any():
        return dict(hd95_mm=float("nan"), assd_mm=float("nan"), nsd=0.0)
    p, t, sp = _t(pred), _t(truth), [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI 1.5 warns about its own internal use of a deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        return dict(
            hd95_mm=float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=sp)),
            assd_mm=float(compute_average_surface_distance(p, t, include_background=True, symmetric=True,
                                                           spacing=sp)),
            nsd=float(compute_surface_dice(p, t, [tolerance_mm], include_background=True, spacing=sp)),
        )


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0,
                 surface: bool = True) -> dict:
    """Every metric of ``METRIC_COLUMNS`` for one case; volumes from the voxel size ``spacing`` (mm)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = lesion_counts(pred, truth)
    union = np.count_nonzero(pred | truth)
    out = dict(dice=dice(pred, truth),
               iou=np.count_nonzero(pred & truth) / union if union else 1.0,
               true_ml=np.count_nonzero(truth) * voxel_ml, pred_ml=np.count_nonzero(pred) * voxel_ml,
               lesion_count_diff=abs(counts["n_pred"] - counts["n_truth"]), lesion_f1=lesion_f1(pred, truth))
    out["avd_ml"] = abs(out["pred_ml"] - out["true_ml"])
    out.update(_surface(pred, truth, spacing, tolerance_mm) if surface else
               dict(hd95_mm=float("nan"), assd_mm=float("nan"), nsd=float("nan")))
    return {k: int(out[k]) if k == "lesion_count_diff" else float(out[k]) for k in METRIC_COLUMNS}
