"""The fast inference path gives what the plain MONAI path gives: grid copies, SimpleITK resampling,
ONNX runtimes, and 8-fold mirroring."""

import nibabel as nib
import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from pipeline.data.transforms import RAS_LABELS
from pipeline.inference.grid import aligned_copy, to_grid


def _lps_affine(spacing=(1.2, 0.9, 3.0), degrees=0.0):
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = [40.0, 30.0, -12.0]
    return affine


def test_reoriented_and_cropped_map_is_copied_back_exactly_as_monai_resamples_it():
    rng = np.random.default_rng(0)
    native = MetaTensor(torch.as_tensor(rng.random((1, 30, 26, 9), dtype=np.float32)), affine=_lps_affine())
    ras = mt.Orientation(axcodes="RAS", labels=RAS_LABELS)(native)
    cropped = mt.SpatialCrop(roi_start=[3, 2, 1], roi_end=[25, 20, 8])(ras)
    reference = nib.Nifti1Image(np.zeros((30, 26, 9), np.float32), _lps_affine())
    fast = aligned_copy(cropped[0].numpy(), np.asarray(cropped.affine), reference.affine, reference.shape)
    dst = MetaTensor(torch.zeros((1, 30, 26, 9)), affine=torch.as_tensor(reference.affine))
    slow = mt.ResampleToMatch(mode="bilinear", padding_mode="zeros")(cropped, dst)[0].numpy()
    assert fast is not None and np.abs(fast - slow).max() < 1e-5
    inside = np.zeros_like(fast, dtype=bool)
    inside[5:27, 6:24, 1:8] = True  # the kept region in LPS voxel order: x = 29 - x_ras, y = 25 - y_ras
    assert np.array_equal(fast[inside], native[0].numpy()[inside]) and not fast[~inside].any()
    # an oblique destination is no copy: to_grid falls back to resampling
    oblique = nib.Nifti1Image(np.zeros((30, 26, 9), np.float32), _lps_affine(degrees=10))
    assert aligned_copy(cropped[0].numpy(), np.asarray(cropped.affine), oblique.affine, oblique.shape) is None
    assert to_grid(cropped[0].numpy(), np.asarray(cropped.affine), oblique).shape == (30, 26, 9)


