"""The training cases' voxel sizes, and the scans coarser than them."""

import nibabel as nib
import numpy as np

from conftest import lps_affine, write_nifti
from pipeline.data.scan_range import coarser_than_trained, scan_range, voxel_size


def _scan(path, spacing, degrees=0.0, axes=(0, 1, 2)):
    """A small file whose voxel axes run in ``axes`` order (the thick one need not be the last)."""
    affine = lps_affine(spacing, degrees)
    affine[:3, :3] = affine[:3, list(axes)]
    return write_nifti(path, np.zeros((6, 5, 4), np.float32), affine)


def test_voxel_size_reads_the_affine_whatever_the_axis_order_or_tilt(tmp_path):
    sagittal = _scan(tmp_path / "a.nii.gz", (0.9, 1.1, 5.0), degrees=14, axes=(2, 0, 1))
    inplane, thickness = voxel_size(nib.load(sagittal).affine)
    assert np.isclose(inplane, 1.0) and np.isclose(thickness, 5.0)


def test_range_spans_the_cases_and_notes_only_coarser_scans(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")  # left to the loader, which names it with its case
    trained = scan_range([_scan(tmp_path / "a.nii.gz", (0.9, 0.9, 2.0)), None, broken, tmp_path / "missing.nii.gz",
                          _scan(tmp_path / "b.nii.gz", (1.8, 1.8, 6.0), degrees=10)])
    assert trained == {"inplane_mm": [0.9, 1.8], "slice_mm": [2.0, 6.0], "cases": 2}
    thick = _scan(tmp_path / "thick.nii.gz", (1.0, 1.0, 8.0))
    assert coarser_than_trained(nib.load(thick).affine, trained) == ["slices 8.0 mm thick (trained on 2.0-6.0 mm)"]
    wide = _scan(tmp_path / "wide.nii.gz", (2.6, 2.6, 5.0))
    assert coarser_than_trained(nib.load(wide).affine, trained) == ["pixels 2.6 mm wide (trained on 0.9-1.8 mm)"]
    # finer voxels only bring detail (every case is resampled to the model's grid); 6.5 mm is within tolerance
    for spacing in [(0.5, 0.5, 1.0), (1.0, 1.0, 6.5)]:
        assert coarser_than_trained(nib.load(_scan(tmp_path / "ok.nii.gz", spacing)).affine, trained) == []
    assert coarser_than_trained(nib.load(thick).affine, None) == []  # a model from before ranges were stored
