"""Thick-slice and partial-coverage copies of a data set: each file averaged along its slice axis into slices of a
given thickness, and/or cut to a slab of a given coverage around the lesion.

What a clinical 4-5 mm protocol would have acquired from the same heads: along the slice axis (the voxel axis
closest to the scanner's z) each thick slice is the average of the thin slices it covers, weighted by how much
of each it covers (a box slice profile; each thin slice stands for its own slab), the in-plane grid is kept,
and a label becomes the averaged lesion fraction above one half. Files whose slices are
already that thick are copied as they are. Used to measure how a model holds up on thick slices
(``make bench``), and by users to check their own data the same way. A slab (``coverage_mm``) keeps the slices
whose centres lie within that many mm (scanner z) around the lesion's centre, in every file on its own grid: what a
scan covering only part of the head (a few thick slices) shows.

Example:
    >>> reslice_manifest("data_manifests/synthetic.json", "data/thick", thickness_mm=4.5)  # doctest: +SKIP
    >>> reslice_manifest("data_manifests/synthetic.json", "data/slab", None, coverage_mm=36)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["slice_axis", "reslice_image", "slab_image", "lesion_centre_z", "reslice_manifest"]


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


def _slice_centres_z(img: nib.Nifti1Image) -> np.ndarray:
    """Scanner z (mm) of each slice's centre along the slice axis, taken through the middle of the slice."""
    affine = np.asarray(img.affine, float)
    axis = slice_axis(affine)
    ijk = np.tile((np.asarray(img.shape[:3], float) - 1) / 2, (img.shape[axis], 1))
    ijk[:, axis] = np.arange(img.shape[axis])
    return ijk @ affine[2, :3] + affine[2, 3]


def lesion_centre_z(label: nib.Nifti1Image | None, reference: nib.Nifti1Image) -> float:
    """Scanner z (mm) of the lesion's centre of mass; the middle of ``reference`` when there is no lesion."""
    if label is not None:
        voxels = np.argwhere(np.asanyarray(label.dataobj) > 0)
        if len(voxels):
            return float(voxels.mean(0)[:3] @ np.asarray(label.affine, float)[2, :3] + label.affine[2, 3])
    return float(np.median(_slice_centres_z(reference)))


def slab_image(img: nib.Nifti1Image, centre_z_mm: float, coverage_mm: float) -> nib.Nifti1Image:
    """``img`` cut to the slices whose centres lie within ``coverage_mm / 2`` of ``centre_z_mm`` (scanner z), at
    least the one nearest to it; the grid of what is kept is unchanged."""
    z = _slice_centres_z(img)
    keep = np.flatnonzero(np.abs(z - centre_z_mm) <= coverage_mm / 2)
    if keep.size == 0:
        keep = np.array([int(np.argmin(np.abs(z - centre_z_mm)))])
    index = [slice(None)] * 3
    index[slice_axis(img.affine)] = slice(int(keep.min()), int(keep.max()) + 1)
    return img.slicer[tuple(index)]


def reslice_manifest(manifest: str | Path, out: str | Path, thickness_mm: float | None = 4.5,
                     split: str = "testing", out_manifest: str | Path | None = None,
                     coverage_mm: float | None = None) -> dict:
    """Write thick-slice (``thickness_mm``) and/or slab (``coverage_mm`` around each case's lesion) copies of
    every file of ``split`` under ``out`` and a manifest of them (every case in its ``testing`` list); returns
    that manifest."""
    from pipeline.data.manifest import load_manifest, write_manifest
    from pipeline.io import save_nifti_atomic

    if thickness_mm is None and coverage_mm is None:
        raise ValueError("reslice needs a slice thickness, a coverage or both")
    data = load_manifest(manifest)
    out = Path(out).resolve()

    def copy(img: nib.Nifti1Image, centre_z: float | None, label: bool = False) -> nib.Nifti1Image:
        img = reslice_image(img, thickness_mm, label=label) if thickness_mm else img
        return slab_image(img, centre_z, coverage_mm) if coverage_mm else img

    cases = []
    for case in data.get(split, []):
        cid = str(case["id"])
        label = nib.load(case["label"]) if case.get("label") else None
        first = next(p for p in case["image"] if p is not None)
        centre_z = lesion_centre_z(label, nib.load(first)) if coverage_mm else None
        images = []
        for i, path in enumerate(case["image"]):
            if path is None:  # a channel the case lacks stays missing
                images.append(None)
                continue
            target = out / cid / f"image_{i}.nii.gz"
            save_nifti_atomic(copy(nib.load(path), centre_z), target)
            images.append(target.relative_to(out).as_posix())
        entry = dict(id=cid, image=images)
        if label is not None:
            target = out / cid / "label.nii.gz"
            save_nifti_atomic(copy(label, centre_z, label=True), target)
            entry["label"] = target.relative_to(out).as_posix()
        cases.append(entry)
    what = [f"re-sliced to {thickness_mm:g} mm"] if thickness_mm else []
    what += [f"cut to {coverage_mm:g} mm around the lesion"] if coverage_mm else []
    result = dict(name=f"{Path(manifest).stem} {' and '.join(what)}", dataset_dir=str(out),
                  channels=data.get("channels"), training=[], testing=cases)
    write_manifest(result, out_manifest or out / "manifest.json")
    return result
