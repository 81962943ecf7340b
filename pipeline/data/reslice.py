"""Thick-slice copies of a data set: each file averaged along its slice axis into slices of a given thickness.

What a clinical 4-5 mm protocol would have acquired from the same heads: along the slice axis (the voxel axis
closest to the scanner's z) each thick slice is the average of the thin slices it covers, weighted by how much
of each it covers (a box slice profile; each thin slice stands for its own slab), the in-plane grid is kept,
and a label becomes the averaged lesion fraction above one half. Files whose slices are
already that thick are copied as they are. Used to measure how a model holds up on thick slices
(``make bench``), and by users to check their own data the same way.

Example:
    >>> reslice_manifest("data_manifests/synthetic.json", "data/thick", thickness_mm=4.5)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["slice_axis", "reslice_image", "reslice_manifest"]


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis that points most along the scanner's z (head-foot) axis."""
    directions = np.asarray(affine, float)[:3, :3] / np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    return int(np.argmax(np.abs(directions[2])))


def _overlap_weights(n_old: int, ratio: float) -> tuple[np.ndarray, int]:
    """(n_new, n_old) weights: the share of thick slice i that thin slice j covers (rows sum to 1)."""
    n_new = int(np.ceil(n_old / ratio - 1e-6))
    lo = np.arange(n_new)[:, None] * ratio
    edges = np.arange(n_old)[None]
    overlap = np.clip(np.minimum(lo + ratio, edges + 1) - np.maximum(lo, edges), 0, None)
    return overlap / overlap.sum(1, keepdims=True), n_new


def reslice_image(img: nib.Nifti1Image, thickness_mm: float, label: bool = False) -> nib.Nifti1Image:
    """``img`` with slices of ``thickness_mm`` along its slice axis (a label: fraction > 0.5, uint8)."""
    affine = np.asarray(img.affine, float)
    axis = slice_axis(affine)
    ratio = thickness_mm / float(np.linalg.norm(affine[:3, axis]))
    if ratio <= 1.0 + 1e-3:
        return img
    data = np.asanyarray(img.dataobj).astype(np.float32)
    weights, n_new = _overlap_weights(data.shape[axis], ratio)
    thick = np.moveaxis(np.tensordot(weights.astype(np.float32), np.moveaxis(data, axis, 0), axes=1), 0, axis)
    new_affine = affine.copy()
    new_affine[:3, axis] = affine[:3, axis] * ratio
    # the first thick slice starts where the first thin one did
    new_affine[:3, 3] = affine[:3, 3] + affine[:3, axis] * (ratio - 1) / 2
    if label:
        thick = (thick > 0.5).astype(np.uint8)
    elif np.issubdtype(img.get_data_dtype(), np.integer):
        info = np.iinfo(img.get_data_dtype())
        thick = np.clip(np.rint(thick), info.min, info.max).astype(img.get_data_dtype())
    new = nib.Nifti1Image(thick, new_affine)
    new.set_qform(new_affine, code=int(img.header["qform_code"]) or 1)
    new.set_sform(new_affine, code=int(img.header["sform_code"]) or 1)
    new.header.set_xyzt_units(*img.header.get_xyzt_units())
    return new


def reslice_manifest(manifest: str | Path, out: str | Path, thickness_mm: float = 4.5, split: str = "testing",
                     out_manifest: str | Path | None = None) -> dict:
    """Write thick-slice copies of every file of ``split`` under ``out`` and a manifest of them (every case
    in its ``testing`` list); returns that manifest."""
    from pipeline.data.manifest import load_manifest, write_manifest
    from pipeline.io import save_nifti_atomic

    data = load_manifest(manifest)
    out = Path(out).resolve()
    cases = []
    for case in data.get(split, []):
        cid = str(case["id"])
        images = []
        for i, path in enumerate(case["image"]):
            if path is None:  # a channel the case lacks stays missing
                images.append(None)
                continue
            target = out / cid / f"image_{i}.nii.gz"
            save_nifti_atomic(reslice_image(nib.load(path), thickness_mm), target)
            images.append(target.relative_to(out).as_posix())
        entry = dict(id=cid, image=images)
        if case.get("label"):
            target = out / cid / "label.nii.gz"
            save_nifti_atomic(reslice_image(nib.load(case["label"]), thickness_mm, label=True), target)
            entry["label"] = target.relative_to(out).as_posix()
        cases.append(entry)
    result = dict(name=f"{Path(manifest).stem} re-sliced to {thickness_mm:g} mm", dataset_dir=str(out),
                  channels=data.get("channels"), training=[], testing=cases)
    write_manifest(result, out_manifest or out / "manifest.json")
    return result
