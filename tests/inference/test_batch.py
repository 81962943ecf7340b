"""Prediction on grids unlike the training data: masks land on each case's own grid."""

import json

import numpy as np
import pytest
import torch

from conftest import write_nifti
from pipeline.inference.batch import segment_datalist
from pipeline.inference.predictor import Predictor
from pipeline.inference.settings import Settings


class BrightIsLesion(torch.nn.Module):
    """A fixed 'network' whose lesion logit is the normalised first channel minus 1: it finds bright blobs,
    so a right answer proves the predictor maps the model grid back onto the scanner grid correctly."""

    def __init__(self, spatial_dims: int = 3):
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, x):
        z = 8 * (x[:, :1] - 1.0)
        return torch.cat([-z, z], 1)


def oblique_lps_case(tmp_path, name="case", shape=(48, 44, 14), spacing=(1.1, 1.3, 4.5), degrees=12.0):
    """An LPS, oblique, anisotropic 2-channel case: a head with a bright blob, and the blob's mask."""
    angle = np.deg2rad(degrees)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = [30.0, 25.0, -20.0]
    i, j, k = np.indices(shape)
    head = ((i - 24) / 20) ** 2 + ((j - 22) / 18) ** 2 + ((k - 7) / 6.5) ** 2 < 1
    blob = ((i - 30) / 6) ** 2 + ((j - 16) / 5) ** 2 + ((k - 7) / 2.2) ** 2 < 1
    rng = np.random.default_rng(0)
    dwi = np.where(head, 100 + rng.normal(0, 3, shape), 0) + 250 * blob
    paths = [write_nifti(tmp_path / f"{name}_dwi.nii.gz", dwi.astype(np.float32), affine),
             write_nifti(tmp_path / f"{name}_adc.nii.gz", np.where(head, 800.0, 0).astype(np.float32), affine)]
    label = write_nifti(tmp_path / f"{name}_msk.nii.gz", blob.astype(np.uint8), affine)
    return dict(id=name, image=[str(p) for p in paths], label=str(label)), blob


def test_one_bad_case_is_reported_and_the_others_are_written_never_overwritten(tmp_path):
    good, _ = oblique_lps_case(tmp_path / "in", "good")
    bad, _ = oblique_lps_case(tmp_path / "in", "bad")
    raw = open(bad["image"][1], "rb").read()
    open(bad["image"][1], "wb").write(raw[: len(raw) // 3])
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [bad, good]}))
    predictor = Predictor(BrightIsLesion(), Settings(roi_size=[32, 32, 32], channels=2, spacing=[2.0, 2.0, 2.0]))
    report = segment_datalist(predictor, manifest, tmp_path / "out", progress=False)
    assert report.written == ["good"] and [c for c, _ in report.failures] == ["bad"]
    assert not (tmp_path / "out" / "bad.nii.gz").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no half-written temp files
    stamp = (tmp_path / "out" / "good.nii.gz").stat().st_mtime_ns
    again = segment_datalist(predictor, manifest, tmp_path / "out", progress=False)
    assert again.skipped == ["good"] and (tmp_path / "out" / "good.nii.gz").stat().st_mtime_ns == stamp


def test_output_folder_holding_inputs_is_refused(tmp_path):
    case, _ = oblique_lps_case(tmp_path)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [case]}))
    predictor = Predictor(BrightIsLesion(), Settings(roi_size=[32, 32, 32], channels=2))
    with pytest.raises(Exception, match="output folder holds this input file"):
        segment_datalist(predictor, manifest, tmp_path, progress=False)


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return [{k: float(v) if k != "id" else v for k, v in r.items()} for r in csv.DictReader(f)]
