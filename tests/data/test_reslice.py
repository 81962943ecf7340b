"""Thick-slice copies: slices averaged along the axial axis, geometry consistent, labels as fractions; slab copies."""

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import write_nifti
from pipeline.data.reslice import reslice_image, reslice_manifest, slice_axis


def _oblique_lps(spacing=(1.0, 1.0, 1.5)) -> np.ndarray:
    angle = np.deg2rad(10)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = [40, 30, -20]
    return affine


def test_slices_are_averaged_and_the_world_position_kept():
    data = np.zeros((20, 22, 30), np.float32)
    data[:, :, 9:12] = 90.0  # 3 bright thin slices = one 4.5 mm slab
    img = nib.Nifti1Image(data, _oblique_lps())
    thick = reslice_image(img, 4.5)
    assert thick.shape == (20, 22, 10) and slice_axis(img.affine) == 2
    assert np.allclose(np.linalg.norm(thick.affine[:3, 2]), 4.5)
    assert np.allclose(np.asanyarray(thick.dataobj)[:, :, 3], 90.0, atol=1e-4)  # slab 3 = thin slices 9-11
    # the slab's centre lies where the middle thin slice's centre lay
    assert np.allclose(thick.affine @ [0, 0, 3, 1], img.affine @ [0, 0, 10, 1])
    # the mean intensity (total signal) is kept
    assert np.asanyarray(thick.dataobj).mean() == pytest.approx(data.mean(), rel=1e-3)


def test_label_is_the_averaged_fraction_above_one_half():
    label = np.zeros((8, 8, 12), np.uint8)
    label[:, :, 3:5] = 1  # 2 of the 3 thin slices of thick slice 1 (slices 3-5)
    label[:, :, 6] = 1  # 1 of 3 of thick slice 2
    thick = reslice_image(nib.Nifti1Image(label, np.diag([2.0, 2.0, 1.5, 1.0])), 4.5, label=True)
    values = np.asanyarray(thick.dataobj)
    assert thick.get_data_dtype() == np.uint8
    assert values[:, :, 1].all() and not values[:, :, 2].any()


def test_already_thick_files_are_kept_and_manifest_written(tmp_path):
    img = write_nifti(tmp_path / "in" / "a.nii.gz", np.ones((6, 6, 4), np.int16) * 5, np.diag([1.0, 1.0, 6.0, 1]))
    lab = write_nifti(tmp_path / "in" / "m.nii.gz", np.zeros((6, 6, 4), np.uint8), np.diag([1.0, 1.0, 6.0, 1]))
    (tmp_path / "in" / "d.json").write_text(
        '{"testing": [{"id": "c1", "image": ["a.nii.gz"], "label": "m.nii.gz"}]}')
    out = reslice_manifest(tmp_path / "in" / "d.json", tmp_path / "thick", 4.5)
    written = nib.load(tmp_path / "thick" / "c1" / "image_0.nii.gz")
    assert written.shape == (6, 6, 4) and written.get_data_dtype() == np.int16
    assert out["testing"][0]["label"] == "c1/label.nii.gz" and (tmp_path / "thick" / "manifest.json").is_file()
    assert nib.load(img).shape == written.shape and lab.is_file()


def test_slab_copies_keep_the_same_scanner_z_range_on_every_grid(tmp_path):
    """--coverage cuts every file to the slices within the coverage around the lesion, each on its own grid
    (DWI oblique 1.5 mm, FLAIR axial 5 mm): the same part of the head, nothing resampled."""
    from conftest import run_cli

    dwi_affine = _oblique_lps((1.0, 1.0, 1.5))
    dwi = np.arange(20 * 22 * 60, dtype=np.float32).reshape(20, 22, 60)
    label = np.zeros(dwi.shape, np.uint8)
    label[8:12, 9:13, 38:42] = 1
    flair_affine = np.diag([1.2, 1.2, 5.0, 1.0])
    flair_affine[:3, 3] = [20, -10, -40]
    paths = [write_nifti(tmp_path / "in" / "dwi.nii.gz", dwi, dwi_affine),
             write_nifti(tmp_path / "in" / "flair.nii.gz", np.ones((30, 30, 24), np.float32), flair_affine),
             write_nifti(tmp_path / "in" / "msk.nii.gz", label, dwi_affine)]
    (tmp_path / "in" / "d.json").write_text('{"testing": [{"id": "c1", "image": ["dwi.nii.gz", null, '
                                            '"flair.nii.gz"], "label": "msk.nii.gz"}]}')
    result = run_cli("reslice", "--datalist", str(tmp_path / "in" / "d.json"), "--coverage", "18",
                     "--out", str(tmp_path / "slab"))
    assert result.returncode == 0 and "cut to 18 mm around the lesion" in result.stdout, result.stderr
    centre = (dwi_affine @ [9.5, 10.5, 39.5, 1])[2]  # the lesion's centre of mass, scanner z
    slab = {name: nib.load(tmp_path / "slab" / "c1" / f"{name}.nii.gz") for name in ("image_0", "image_2", "label")}
    for img in slab.values():
        k = np.arange(img.shape[2])
        z = (img.affine @ np.stack([np.full_like(k, (img.shape[0] - 1) / 2, dtype=float),
                                     np.full_like(k, (img.shape[1] - 1) / 2, dtype=float), k, np.ones_like(k)]))[2]
        assert np.all(np.abs(z - centre) <= 9.0) and img.shape[:2] != (0, 0)
    # 12 DWI slices of 1.5 mm (z 27.5-45.5 around 36.5, tilted 10 degrees) and FLAIR's 4 of 5 mm (z 30-45)
    assert slab["image_0"].shape == (20, 22, 12) and slab["image_2"].shape == (30, 30, 4)
    first = int(np.rint(np.linalg.solve(dwi_affine, slab["image_0"].affine @ [0, 0, 0, 1])[2]))
    assert np.array_equal(np.asanyarray(slab["image_0"].dataobj), dwi[:, :, first:first + 12])  # not resampled
    assert np.asanyarray(slab["label"].dataobj).sum() == label.sum()  # the whole lesion is inside
    case = json.loads((tmp_path / "slab" / "manifest.json").read_text())["testing"][0]
    assert case["image"] == ["c1/image_0.nii.gz", None, "c1/image_2.nii.gz"]  # the missing channel stays null
    assert nib.load(paths[0]).shape == dwi.shape  # the original is untouched
