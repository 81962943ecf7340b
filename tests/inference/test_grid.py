"""Putting the probability map back onto the scanner grid: a voxel copy where it can be, MONAI otherwise."""

import nibabel as nib
import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from conftest import lps_affine
from pipeline.data.transforms import RAS_LABELS
from pipeline.inference.grid import aligned_copy, to_grid


def test_reoriented_and_cropped_map_is_copied_back_exactly_as_monai_resamples_it():
    rng = np.random.default_rng(0)
    native = MetaTensor(torch.as_tensor(rng.random((1, 30, 26, 9), dtype=np.float32)), affine=lps_affine())
    ras = mt.Orientation(axcodes="RAS", labels=RAS_LABELS)(native)
    cropped = mt.SpatialCrop(roi_start=[3, 2, 1], roi_end=[25, 20, 8])(ras)
    reference = nib.Nifti1Image(np.zeros((30, 26, 9), np.float32), lps_affine())
    fast = aligned_copy(cropped[0].numpy(), np.asarray(cropped.affine), reference.affine, reference.shape)
    dst = MetaTensor(torch.zeros((1, 30, 26, 9)), affine=torch.as_tensor(reference.affine))
    slow = mt.ResampleToMatch(mode="bilinear", padding_mode="zeros")(cropped, dst)[0].numpy()
    assert fast is not None and np.abs(fast - slow).max() < 1e-5
    inside = np.zeros_like(fast, dtype=bool)
    inside[5:27, 6:24, 1:8] = True  # the kept region in LPS voxel order: x = 29 - x_ras, y = 25 - y_ras
    assert np.array_equal(fast[inside], native[0].numpy()[inside]) and not fast[~inside].any()
    # an oblique destination is no copy: to_grid falls back to resampling
    oblique = nib.Nifti1Image(np.zeros((30, 26, 9), np.float32), lps_affine(degrees=10))
    assert aligned_copy(cropped[0].numpy(), np.asarray(cropped.affine), oblique.affine, oblique.shape) is None
    assert to_grid(cropped[0].numpy(), np.asarray(cropped.affine), oblique).shape == (30, 26, 9)


def test_lesions_on_the_first_and_last_thick_slices_come_back():
    """The model grid ends near the centre of the outermost slices: a slice is averaged over the part of it
    the model grid covers (counting the rest as zero dropped lesions that touched the first or last slice)."""
    tilt = np.deg2rad(15)  # about x, as an oblique axial DWI: the slab edges are not planes of the model grid
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[1:3, 1:3] = [[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]]
    reference = nib.Nifti1Image(np.zeros((24, 20, 8), np.float32), affine @ lps_affine((2.0, 2.0, 6.5)))
    label = np.zeros(reference.shape, np.float32)
    label[8:14, 6:12, 0] = label[8:14, 6:12, -1] = label[10:16, 8:14, 4] = 1
    native = MetaTensor(torch.as_tensor(label)[None], affine=torch.as_tensor(reference.affine))
    ras = mt.Orientation(axcodes="RAS", labels=RAS_LABELS)(native)
    model = mt.Spacing(pixdim=(2.0, 2.0, 2.0), mode="nearest", padding_mode="zeros")(ras)
    back = to_grid(model[0].numpy(), np.asarray(model.affine), reference)
    for z in (0, 4, 7):  # each slice's lesion comes back whole, where it was, at nearly full probability
        lesion = label[..., z] > 0
        assert back[..., z][lesion].mean() > 0.8, z  # counted as zero: 0.6 on the outer slices
        assert ((back[..., z] >= 0.5) == lesion).mean() > 0.98, z
