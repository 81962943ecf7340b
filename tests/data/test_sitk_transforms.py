"""SimpleITK resampling of the other channels onto the first one's grid, checked against MONAI."""

import numpy as np
from monai import transforms as mt

from conftest import lps_affine, write_nifti
from pipeline.data.checks import LoadCheckedd
from pipeline.data.sitk_transforms import ResampleToGridd, covers


def test_simpleitk_channel_resampling_matches_monai_on_oblique_grids(tmp_path):
    rng = np.random.default_rng(1)
    i, j, k = np.indices((40, 36, 12))
    smooth = (np.sin(i / 5) + np.cos(j / 4) + k / 6).astype(np.float32) * 100 + 300
    noise = rng.random((32, 30, 10)).astype(np.float32)
    dst = write_nifti(tmp_path / "dwi.nii.gz", noise, lps_affine((1.5, 1.5, 3.5)))
    src = write_nifti(tmp_path / "flair.nii.gz", smooth, lps_affine((1.1, 1.2, 2.8), degrees=9))
    d = LoadCheckedd(["a", "b"])({"a": str(dst), "b": str(src)})
    ours = ResampleToGridd(["b"], key_dst="a")(dict(d))["b"]
    monai = mt.ResampleToMatchd(["b"], key_dst="a", mode="bilinear", padding_mode="zeros")(dict(d))["b"]
    assert ours.shape == monai.shape == d["a"].shape
    assert np.allclose(np.asarray(ours.affine), np.asarray(d["a"].affine))
    # the same values inside the source's field of view; they differ only in the half voxel at its edge,
    # which MONAI blends with the zero padding and SimpleITK leaves out
    from scipy.ndimage import binary_erosion

    inside = binary_erosion(((ours[0] > 0) & (monai[0] > 0)).numpy())
    assert inside.mean() > 0.3 and float(((ours[0] > 0) ^ (monai[0] > 0)).float().mean()) < 0.05
    assert float((ours[0] - monai[0]).abs().numpy()[inside].max()) < 1e-3 * float(smooth.max())




def test_a_coverage_map_only_for_a_channel_that_does_not_cover_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    dst = write_nifti(tmp_path / "dwi.nii.gz", rng.random((32, 30, 10), np.float32), lps_affine((1.5, 1.5, 3.5)))
    wide = write_nifti(tmp_path / "wide.nii.gz", rng.random((70, 70, 24), np.float32),  # its own tilted grid,
                       lps_affine((1.1, 1.2, 2.8), degrees=9, origin=(52.0, 42.0, -22.0)))  # around the DWI's
    small = write_nifti(tmp_path / "small.nii.gz", rng.random((20, 30, 10), np.float32), lps_affine((1.5, 1.5, 3.5)))
    d = LoadCheckedd(["a", "wide", "small"])({"a": str(dst), "wide": str(wide), "small": str(small)})
    out = ResampleToGridd(["wide", "small"], key_dst="a")(dict(d))
    assert "wide_coverage" not in out  # covers the reference: nothing to carry or blank
    covered = out["small_coverage"][0].numpy()
    assert 0.5 < covered.mean() < 0.75 and set(np.unique(covered)) == {0.0, 1.0}  # 20 of 32 columns
    assert covers(d["wide"].affine, d["wide"].shape[1:], d["a"].affine, d["a"].shape[1:])
    assert not covers(d["small"].affine, d["small"].shape[1:], d["a"].affine, d["a"].shape[1:])


def test_a_channel_that_misses_the_reference_field_of_view_is_refused_naming_it(tmp_path):
    """Half a field of view covered is resampled (the rest blank); none covered is a wrong file or header."""
    import pytest

    from pipeline.data.sitk_transforms import coverage_fraction
    from pipeline.errors import InputError

    rng = np.random.default_rng(0)
    shape, affine = (32, 30, 10), lps_affine((1.5, 1.5, 3.5))
    half, far = affine.copy(), affine.copy()
    half[:3, 3] += affine[:3, 2] * 5  # five slices on: half of the slices overlap
    far[:3, 3] += [300.0, 0.0, 0.0]
    paths = {name: write_nifti(tmp_path / f"{name}.nii.gz", rng.random(shape, np.float32) + 1, a)
             for name, a in (("dwi", affine), ("half", half), ("far", far))}
    assert coverage_fraction(half, shape, affine, shape) == pytest.approx(5 / 9, abs=0.12)
    assert coverage_fraction(far, shape, affine, shape) == 0.0
    d = LoadCheckedd(["a", "b"])({"id": "c1", "a": str(paths["dwi"]), "b": str(paths["half"])})
    assert ResampleToGridd(["b"], key_dst="a")(d)["b"].shape == d["a"].shape
    d = LoadCheckedd(["a", "b"])({"id": "c1", "a": str(paths["dwi"]), "b": str(paths["far"])})
    with pytest.raises(InputError, match="does not overlap the first channel's field of view") as info:
        ResampleToGridd(["b"], key_dst="a")(d)
    assert info.value.case == "c1" and info.value.path.endswith("far.nii.gz")
