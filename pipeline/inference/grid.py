"""Maps back onto the scanner's grid, and NIfTI files on exactly that grid.

The probability map is computed on the model's grid (RAS, training spacing, cropped to the head) and put
back once onto the grid of the case's first channel (DWI): a voxel copy when the grids differ only by
orientation and crop, else trilinear (SimpleITK: :func:`~pipeline.data.sitk_transforms.resample_linear`, MONAI's
``ResampleToMatch`` inside the map's grid at an eighth of the time), averaged over the covered part of thick
slices.

Example:
    >>> back = to_grid(prob, model_affine, nib.load("dwi.nii.gz"))  # doctest: +SKIP
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from pipeline.data.sitk_transforms import resample_linear
from pipeline.data.voxel_order import aligned_copy

__all__ = ["to_grid", "aligned_copy", "like_reference"]


def to_grid(data: np.ndarray, affine: np.ndarray, reference: nib.Nifti1Image) -> np.ndarray:
    """A 3D map with voxel-to-world ``affine`` on the grid of ``reference`` (trilinear, zeros outside).

    Where a reference voxel is longer than the map's along an axis (a thick slice), the map is averaged over
    it, as the scanner's slice profile averages tissue (one sample per map voxel, a box profile): sampling
    only each slice's centre would let a lesion's top or bottom slice hinge on one plane. The average is over
    the part of the voxel the map covers: the map's grid ends near the centre of the outermost slices, and
    counting the rest as zero halved their average and dropped every lesion that touched the first or last
    slice (a 0.3 mL one and a quarter of a 27.5 mL one in the shifted-domain test).
    """
    shape = reference.shape[:3]
    copied = aligned_copy(data, affine, reference.affine, shape)
    if copied is not None:
        return copied
    ref_affine = np.asarray(reference.affine, float)
    ratio = np.linalg.norm(ref_affine[:3, :3], axis=0) / np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0).min()
    steps = [int(np.ceil(r)) if r > 1.5 else 1 for r in ratio]
    fine = ref_affine.copy()
    for axis, k in enumerate(steps):  # k sub-samples centred in each reference voxel along this axis
        fine[:3, axis] = ref_affine[:3, axis] / k
        fine[:3, 3] -= ref_affine[:3, axis] * (k - 1) / (2 * k)
    fine_shape = [n * k for n, k in zip(shape, steps, strict=True)]
    data = np.asarray(data, np.float32)
    out = resample_linear(data, affine, fine, fine_shape)  # 0 beyond half a voxel outside the map's grid
    if all(k == 1 for k in steps):
        return out
    # the map's coverage (1 up to half a voxel beyond its grid's outermost centres): the two means over a thick
    # voxel's sub-samples give the map's mean over the covered part of it
    out, covered = (a.reshape(shape[0], steps[0], shape[1], steps[1], shape[2], steps[2]).mean((1, 3, 5))
                    for a in (out, resample_linear(np.ones_like(data), affine, fine, fine_shape)))
    return np.where(covered > 0.01, out / np.maximum(covered, 0.01), 0.0).astype(np.float32)


def like_reference(data: np.ndarray, reference: nib.Nifti1Image, dtype) -> nib.Nifti1Image:
    """A NIfTI on exactly the reference's grid: its affine, qform and sform (with their codes) and units (an MGH/MGZ
    reference: its affine as both, scanner codes).

    The header is new: no text field of the input (descrip, aux_file, intent name) is carried over.
    """
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine)
    if not hasattr(reference, "get_qform"):  # FreeSurfer's MGH/MGZ: its affine is the scanner's, in mm
        img.set_qform(reference.affine, code=1)
        img.set_sform(reference.affine, code=1)
        img.header.set_xyzt_units("mm")
        return img
    img.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    img.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    img.header.set_zooms(reference.header.get_zooms()[:3])
    img.header.set_xyzt_units(*reference.header.get_xyzt_units())
    return img
