"""Dataset fingerprint: what a planner needs to know about a training set, each case read once.

Per case: voxel spacing and shape in RAS axis order (the order training resamples into), the shape of the head's
bounding box (what is left after cropping), per-channel intensity statistics inside the head, and the lesions'
count and volumes (26-connected). nnU-Net's fingerprint (``nnunetv2/experiment_planning``) is the model; the
head mask is the one normalisation uses, so "foreground" means the same thing in both.

Example:
    >>> fp = fingerprint_manifest("data_manifests/synthetic.json")  # doctest: +SKIP
    >>> fp["cases"][0]["spacing_mm"]  # doctest: +SKIP
    [2.0, 2.0, 2.0]
"""

from __future__ import annotations

from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np

from pipeline.data.checks import validate_manifest
from pipeline.data.manifest import load_manifest
from pipeline.data.normalise import head_mask
from pipeline.errors import InputError

__all__ = ["case_fingerprint", "fingerprint_manifest", "ras_spacing_and_shape"]

PERCENTILES = (0.5, 50.0, 99.5)


def _ras_order(img: nib.spatialimages.SpatialImage, per_voxel_axis) -> list:
    """Values given per voxel axis of ``img``, re-ordered to the RAS axes those voxel axes run along."""
    out = [None] * 3
    for voxel_axis, (world_axis, _) in enumerate(nib.orientations.io_orientation(img.affine).astype(int)):
        out[world_axis] = per_voxel_axis[voxel_axis]
    return out


def ras_spacing_and_shape(img: nib.spatialimages.SpatialImage) -> tuple[list[float], list[int]]:
    """Voxel size (mm) and shape along the RAS axes, whatever the file's voxel order."""
    return (_ras_order(img, [float(z) for z in img.header.get_zooms()[:3]]),
            _ras_order(img, [int(n) for n in img.shape[:3]]))


def case_fingerprint(case: dict) -> dict:
    """Spacing, shape, cropped shape, per-channel head statistics and lesions of one training case."""
    images = [nib.load(p) if p else None for p in case["image"]]  # None: a channel the case lacks
    spacing, shape = ras_spacing_and_shape(images[0])
    reference = np.asanyarray(images[0].dataobj, dtype=np.float32)
    head = head_mask(reference, images[0].header.get_zooms()[:3])
    extent = [np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    cropped = _ras_order(images[0], [int(ix[-1] - ix[0] + 1) if len(ix) else 0 for ix in extent])
    channels = []
    for index, img in enumerate(images):
        if img is None:
            channels.append(None)
            continue
        values = reference if index == 0 else np.asanyarray(img.dataobj, dtype=np.float32)
        inside = values[head] if values.shape[:3] == head.shape else values[values != 0]
        lo, mid, hi = (float(v) for v in np.percentile(inside, PERCENTILES)) if inside.size else (0.0, 0.0, 0.0)
        channels.append(dict(mean=float(inside.mean()) if inside.size else 0.0,
                             std=float(inside.std()) if inside.size else 0.0, p00_5=lo, median=mid, p99_5=hi))
    out = dict(id=str(case["id"]), spacing_mm=spacing, shape=shape, cropped_shape=cropped, channels=channels)
    if case.get("label"):
        label = nib.load(case["label"])
        mask = np.asanyarray(label.dataobj) > 0.5
        voxel_ml = float(np.prod(label.header.get_zooms()[:3])) / 1000
        labels, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
        sizes = cc3d.statistics(labels)["voxel_counts"][1:] if n else []
        out["lesions"] = dict(count=int(n), total_ml=float(mask.sum()) * voxel_ml,
                              volumes_ml=sorted((float(s) * voxel_ml for s in sizes), reverse=True))
    return out


def fingerprint_manifest(path: str | Path, dataset_dir: str | Path | None = None, progress: bool = True) -> dict:
    """The fingerprint of a manifest's training cases; a case that fails validation stops it with one line
    naming the case and the file (the rules of ``python -m pipeline validate``)."""
    from tqdm.auto import tqdm

    errors = [p for p in validate_manifest(path, dataset_dir, progress=progress, splits=("training",))
              if p.severity == "error"]
    if errors:
        raise InputError(f"{len(errors)} training file(s) fail validation, first: {errors[0]}; "
                         "fix them or run: python -m pipeline validate " + str(path))
    cases = load_manifest(path, dataset_dir).get("training", [])
    if not cases:
        raise InputError(f"{path}: no training cases to plan from (a plan is made from the data a model trains on)")
    rows = [case_fingerprint(c) for c in tqdm(cases, desc="fingerprint", unit="case", disable=not progress)]
    return dict(manifest=str(path), cases=rows)
