"""One row per predicted lesion (26-connected): size, place, signal and confidence, as ``lesions.csv`` lists it.

Scanner coordinates are RAS mm of the mask's grid (the case's first image). MNI coordinates and the hemisphere
come from :mod:`pipeline.inference.mni` and stay empty when that registration failed its check. With a truth
mask, each predicted lesion says whether it overlaps a true one (``detected``), and each true lesion that no
prediction touches gets a row of its own (``kind = missed``).

Example:
    >>> rows = lesion_rows("sub-01", mask, reference, prob=prob)  # doctest: +SKIP
"""

from __future__ import annotations

import cc3d
import nibabel as nib
import numpy as np

from pipeline.inference.diffusion_check import bounding_box

__all__ = ["lesion_rows", "LESION_COLUMNS", "max_diameter_mm", "channel_on_grid"]

LESION_COLUMNS = ["id", "lesion", "kind", "volume_ml", "x_mm", "y_mm", "z_mm", "mni_x", "mni_y", "mni_z",
                  "hemisphere", "max_diameter_mm", "mean_dwi", "mean_adc", "mean_prob", "max_prob", "mean_tta_var",
                  "detected", "mni_overlap"]


def max_diameter_mm(points_mm: np.ndarray) -> float:
    """Largest distance between two voxel centres of a lesion (mm); over its convex hull's vertices."""
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) > 8:
        from scipy.spatial import ConvexHull, QhullError

        try:
            points_mm = points_mm[ConvexHull(points_mm).vertices]
        except (QhullError, ValueError):  # flat lesions (one slice): all points
            pass
    if len(points_mm) > 4000:  # an all-points fallback on a huge flat lesion: its bounding-box diagonal
        return float(np.linalg.norm(points_mm.max(0) - points_mm.min(0)))
    diff = points_mm[:, None, :] - points_mm[None, :, :]
    return float(np.sqrt((diff ** 2).sum(-1)).max())


def channel_on_grid(path, reference: nib.Nifti1Image, order: int = 1) -> np.ndarray:
    """A channel's values on the reference grid (itself when it already is on it; else interpolated with
    spline ``order``: 1 for images, 0 for masks)."""
    img = nib.load(path)
    if img.shape[:3] == reference.shape[:3] and np.allclose(img.affine, reference.affine, atol=1e-3):
        data = np.asarray(img.dataobj, dtype=np.float32)
        return data[..., -1] if data.ndim == 4 else data
    from nibabel.processing import resample_from_to

    if img.ndim == 4:
        img = img.slicer[..., -1]
    return np.asarray(resample_from_to(img, (reference.shape[:3], reference.affine), order=order).dataobj, np.float32)


def _round(value, digits=2):
    return None if value is None else round(float(value), digits)


def lesion_rows(case_id: str, mask: np.ndarray, reference: nib.Nifti1Image, prob: np.ndarray | None = None,
                tta_var: np.ndarray | None = None, dwi: np.ndarray | None = None, adc: np.ndarray | None = None,
                truth: np.ndarray | None = None, mni=None) -> list[dict]:
    """The rows of one case: its predicted lesions, then (with ``truth``) the true lesions it missed.

    ``mni``: a :class:`~pipeline.inference.mni.MniMapping` (or None: no MNI columns).
    """
    affine = np.asarray(reference.affine, float)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    truth = None if truth is None else truth > 0
    found = mask > 0 if truth is None else (mask > 0) | truth
    if not found.any():
        return []
    # every map cut to the box around the lesions: a few lesions fill a sliver of a 1 mm volume
    around = bounding_box(found, [0] * found.ndim)
    offset = np.array([s.start for s in around])
    mask, prob, tta_var, dwi, adc, truth = (None if a is None else a[around]
                                            for a in (mask, prob, tta_var, dwi, adc, truth))
    rows = []
    labels = cc3d.connected_components(mask > 0, connectivity=26)
    for kind, lab in [("predicted", labels)] + ([("missed", _missed(truth, mask > 0))] if truth is not None else []):
        number = 0
        for index, box in enumerate(cc3d.statistics(lab)["bounding_boxes"][1:], start=1):
            voxels = np.argwhere(lab[box] == index) + [s.start for s in box]
            if not len(voxels):
                continue
            number += 1
            points = (voxels + offset) @ affine[:3, :3].T + affine[:3, 3]
            centre = points.mean(0)
            where = tuple(voxels.T)
            row = dict(id=case_id, lesion=number, kind=kind,
                       volume_ml=round(len(voxels) * voxel_ml, 4),
                       **{f"{a}_mm": round(float(v), 1) for a, v in zip("xyz", centre, strict=True)},
                       max_diameter_mm=round(max_diameter_mm(points), 1),
                       mean_dwi=_round(dwi[where].mean(), 4) if dwi is not None else None,
                       mean_adc=_round(adc[where].mean(), 6) if adc is not None else None,
                       mean_prob=_round(prob[where].mean(), 3) if prob is not None and kind == "predicted" else None,
                       max_prob=_round(prob[where].max(), 3) if prob is not None and kind == "predicted" else None,
                       mean_tta_var=_round(tta_var[where].mean(), 5) if tta_var is not None and kind == "predicted"
                       else None,
                       detected=(bool(truth[where].any()) if kind == "predicted" else False) if truth is not None
                       else None)
            row.update(_location(centre, mni))
            rows.append(row)
    return rows


def _missed(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Truth components that no predicted voxel touches, labelled 1..n."""
    labels = cc3d.connected_components(truth, connectivity=26)
    hit = np.unique(labels[pred & truth])
    labels[np.isin(labels, hit[hit > 0])] = 0
    return cc3d.connected_components(labels > 0, connectivity=26)


def _location(centre: np.ndarray, mni) -> dict:
    """MNI coordinates, hemisphere (MNI x > 0: right) and the registration check; empty when it failed."""
    if mni is None:
        return dict(mni_x=None, mni_y=None, mni_z=None, hemisphere=None, mni_overlap=None)
    point = mni.to_mni(centre)
    out = dict(mni_overlap=round(float(mni.overlap), 3))
    if point is None:
        return dict(out, mni_x=None, mni_y=None, mni_z=None, hemisphere=None)
    x, y, z = (round(float(v), 1) for v in point[0])
    return dict(out, mni_x=x, mni_y=y, mni_z=z, hemisphere="right" if x > 0 else "left")
