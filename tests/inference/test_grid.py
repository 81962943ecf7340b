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


