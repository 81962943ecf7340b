"""lesions.csv: one row per lesion with volume, place (scanner and MNI), size, signal and confidence."""

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from conftest import BrightIsLesion, lps_affine, oblique_lps_case, write_nifti
from pipeline.inference.batch import segment_datalist
from pipeline.inference.lesions import lesion_rows, max_diameter_mm
from pipeline.inference.mni import MniMapping, cached_mapping
from pipeline.inference.predictor import Predictor
from pipeline.inference.settings import Settings

SCANNER_IS_MNI = MniMapping(np.eye(4), overlap=1.0, ok=True)


def _two_lesions():
    """An LPS 2 mm grid whose voxel x runs right -> left: a 10 mm cube on the right, a 6 mm one on the left."""
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    affine[:3, 3] = [60.0, 60.0, -40.0]          # voxel (30, 30, 20) is the scanner origin
    mask = np.zeros((60, 60, 40), np.uint8)
    mask[10:15, 28:33, 18:23] = 1                # x = 60 - 2i: +40..+32 mm, right
    mask[45:48, 28:31, 18:21] = 1                # x = -30..-34 mm, left
    return mask, nib.Nifti1Image(mask, affine)


def test_rows_give_volume_hemisphere_diameter_signal_and_detection():
    mask, ref = _two_lesions()
    prob = mask * 0.9
    dwi, adc = mask * 500.0 + 100.0, 800.0 - mask * 400.0
    truth = np.zeros_like(mask)
    truth[10:15, 28:33, 18:23] = 1               # the right lesion is real
    truth[30:33, 5:8, 5:8] = 1                   # a true lesion nothing touches
    rows = lesion_rows("c1", mask, ref, prob=prob, dwi=dwi, adc=adc, truth=truth, mni=SCANNER_IS_MNI)
    predicted = [r for r in rows if r["kind"] == "predicted"]
    missed = [r for r in rows if r["kind"] == "missed"]
    assert len(predicted) == 2 and len(missed) == 1
    by_side = {r["hemisphere"]: r for r in predicted}
    right, left = by_side["right"], by_side["left"]
    assert right["volume_ml"] == pytest.approx(125 * 0.008) and left["volume_ml"] == pytest.approx(27 * 0.008)
    assert right["x_mm"] == pytest.approx(36.0) and left["x_mm"] == pytest.approx(-32.0)
    assert right["mni_x"] == pytest.approx(36.0)
    assert right["max_diameter_mm"] == pytest.approx(np.sqrt(3) * 8.0, abs=0.1)   # corner to corner centres
    assert right["mean_dwi"] == pytest.approx(600.0) and right["mean_adc"] == pytest.approx(400.0)
    assert right["mean_prob"] == pytest.approx(0.9) and right["max_prob"] == pytest.approx(0.9)
    assert right["detected"] is True and left["detected"] is False
    assert missed[0]["volume_ml"] == pytest.approx(27 * 0.008) and missed[0]["detected"] is False


def test_failed_registration_leaves_location_empty_not_wrong():
    mask, ref = _two_lesions()
    failed = MniMapping(np.eye(4), overlap=0.2, ok=False)
    for row in lesion_rows("c1", mask, ref, mni=failed):
        assert row["mni_x"] is None and row["hemisphere"] is None and row["mni_overlap"] == 0.2
        assert row["x_mm"] is not None  # scanner coordinates do not depend on the registration


def test_max_diameter_of_a_line_and_of_a_single_voxel():
    line = np.stack([np.arange(20) * 1.5, np.zeros(20), np.zeros(20)], axis=1)
    assert max_diameter_mm(line) == pytest.approx(19 * 1.5)
    assert max_diameter_mm(line[:1]) == 0.0


def _template_case(tmp_path, mni_centre):
    """The ICBM152 T1 as a DWI-like scan: contrast inverted, noisy, LPS, tilted 12 degrees, 1.5 x 1.5 x 4 mm,
    with a 12 mm lesion centred at ``mni_centre``; the head lies in the scanner turned 10 degrees and 25 mm
    away from where it lies in MNI space (so no registration at all would be 25 mm off)."""
    from nibabel.processing import resample_from_to
    from nilearn import datasets

    rotation = Rotation.from_euler("xyz", [12, -5, 8], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ rotation @ np.diag([1.5, 1.5, 4.0])
    shape = (140, 160, 40)
    affine[:3, 3] = np.array([5.0, -10.0, 20.0]) - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    scanner_to_mni = np.eye(4)
    scanner_to_mni[:3, :3] = Rotation.from_euler("z", 10, degrees=True).as_matrix()
    scanner_to_mni[:3, 3] = [15.0, -20.0, 0.0]
    to_mni = scanner_to_mni @ affine
    t1 = resample_from_to(datasets.load_mni152_template(resolution=1), (shape, to_mni), order=1).get_fdata()
    rng = np.random.default_rng(0)
    dwi = np.where(t1 > 0.05, 1.2 - t1, 0) * 1000 + np.abs(rng.normal(0, 20, shape))
    points = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1) @ to_mni[:3, :3].T + to_mni[:3, 3]
    mask = (np.linalg.norm(points - mni_centre, axis=-1) < 6).astype(np.uint8)
    path = write_nifti(tmp_path / "dwi.nii.gz", dwi.astype(np.float32), affine)
    return path, mask, nib.load(path)


def test_centroid_lands_within_5_mm_of_its_mni_position_and_the_registration_is_cached(tmp_path):
    centre = np.array([30.0, -20.0, 10.0])  # right putamen / insula
    path, mask, ref = _template_case(tmp_path, centre)
    mapping = cached_mapping(path, tmp_path / "registration", "t1case")
    assert mapping.ok and mapping.overlap > 0.7
    [row] = lesion_rows("t1case", mask, ref, mni=mapping)
    assert np.linalg.norm([row["mni_x"] - centre[0], row["mni_y"] - centre[1], row["mni_z"] - centre[2]]) < 5.0
    assert row["hemisphere"] == "right"
    scanner = np.array([row["x_mm"], row["y_mm"], row["z_mm"]])
    assert np.linalg.norm(scanner - centre) > 20  # the scanner position alone is far off
    saved = json.loads((tmp_path / "registration" / "t1case_mni.json").read_text())
    assert saved["ok"] and np.allclose(saved["matrix"], mapping.matrix)
    again = cached_mapping(path, tmp_path / "registration", "t1case")  # read back, not registered again
    assert np.array_equal(again.matrix, np.asarray(saved["matrix"]))


def test_an_image_that_is_not_a_head_fails_the_check_with_a_warning(tmp_path, caplog):
    rng = np.random.default_rng(1)
    noise = np.zeros((60, 60, 30), np.float32)
    noise[5:20, 40:55, 2:10] = 500 + rng.normal(0, 50, (15, 15, 8))  # a small bright box, nothing like a brain
    path = write_nifti(tmp_path / "box.nii.gz", noise, lps_affine(spacing=(3.0, 3.0, 3.0)))
    with caplog.at_level(logging.WARNING):
        mapping = cached_mapping(path, tmp_path / "registration", "box")
    assert not mapping.ok and mapping.to_mni(np.zeros((1, 3))) is None
    assert "box" in caplog.text and "registration to MNI failed its check" in caplog.text


def test_infer_writes_one_row_per_lesion_beside_volumes_csv(tmp_path):
    case, _ = oblique_lps_case(tmp_path / "in")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [case]}))
    settings = Settings(roi_size=[32, 32, 32], channels=2, spacing=[2.0, 2.0, 2.0],
                        diffusion_check=None)
    segment_datalist(Predictor(BrightIsLesion(), settings), manifest, tmp_path / "out", progress=False, mni=False)
    with open(tmp_path / "out" / "lesions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "out" / "volumes.csv", newline="") as f:
        [volume] = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["case"] * int(volume["components"])
    assert sum(float(r["volume_ml"]) for r in rows) == pytest.approx(float(volume["lesion_ml"]), rel=1e-3)
    assert rows[0]["detected"] == "True"  # the manifest's label marks the blob
    assert rows[0]["mni_x"] == ""        # --no-mni


def test_signal_columns_are_the_scan_s_own_values_over_each_lesion(tmp_path):
    """With the shipped post-processing (the channels kept on the scan's grid for the border refinement), a
    lesion's mean DWI and ADC are its voxels' values as the files store them."""
    from pipeline.inference.border import DEFAULT_BORDER
    from pipeline.inference.diffusion_check import DEFAULT_CHECK

    case, blob = oblique_lps_case(tmp_path / "in")
    adc = nib.load(case["image"][1])
    write_nifti(Path(case["image"][1]), np.where(blob, 350.0, np.asarray(adc.dataobj)).astype(np.float32), adc.affine)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [case]}))
    settings = Settings(roi_size=[32, 32, 32], channels=2, spacing=[2.0, 2.0, 2.0], diffusion_check=DEFAULT_CHECK,
                        border_refinement=DEFAULT_BORDER)
    segment_datalist(Predictor(BrightIsLesion(), settings), manifest, tmp_path / "out", progress=False, mni=False)
    with open(tmp_path / "out" / "lesions.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    mask = np.asarray(nib.load(tmp_path / "out" / "case.nii.gz").dataobj) > 0
    assert (mask & blob).sum() > 0.8 * blob.sum()
    for column, path in (("mean_dwi", case["image"][0]), ("mean_adc", case["image"][1])):
        stored = np.asarray(nib.load(path).dataobj, np.float32)
        assert float(row[column]) == pytest.approx(float(stored[mask].mean()), rel=1e-4), column


class _FindsNothing(torch.nn.Module):
    def forward(self, x):
        return torch.cat([torch.full_like(x[:, :1], 10.0), torch.full_like(x[:, :1], -10.0)], 1)


def test_a_lesion_the_model_missed_still_gets_its_mni_location(tmp_path):
    path, mask, ref = _template_case(tmp_path, np.array([-30.0, -20.0, 10.0]))
    label = write_nifti(tmp_path / "label.nii.gz", mask, ref.affine)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [dict(id="t1case", image=[str(path)], label=str(label))]}))
    settings = Settings(roi_size=[32, 32, 32], channels=1, spacing=[3.0, 3.0, 3.0], diffusion_check=None)
    segment_datalist(Predictor(_FindsNothing(), settings), manifest, tmp_path / "out", progress=False)
    with open(tmp_path / "out" / "lesions.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["kind"] == "missed" and row["hemisphere"] == "left"
    assert abs(float(row["mni_x"]) + 30.0) < 5.0
