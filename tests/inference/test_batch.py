"""Segmenting a whole manifest: one bad case does not take the others down; outputs are written whole."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BrightIsLesion, oblique_lps_case, run_cli, write_nifti
from pipeline.data.manifest import load_manifest
from pipeline.data.scan_range import voxel_size
from pipeline.inference.batch import segment_datalist
from pipeline.inference.predictor import Predictor
from pipeline.inference.settings import Settings


def test_one_bad_case_is_reported_and_the_others_are_written_never_overwritten(tmp_path):
    good, _ = oblique_lps_case(tmp_path / "in", "good")
    bad, _ = oblique_lps_case(tmp_path / "in", "bad")
    gone, _ = oblique_lps_case(tmp_path / "in", "gone")
    gone["image"][0] = str(tmp_path / "in" / "deleted_dwi.nii.gz")
    raw = open(bad["image"][1], "rb").read()
    open(bad["image"][1], "wb").write(raw[: len(raw) // 3])
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [bad, gone, good]}))
    predictor = Predictor(BrightIsLesion(), Settings(roi_size=[32, 32, 32], channels=2, spacing=[2.0, 2.0, 2.0]))
    report = segment_datalist(predictor, manifest, tmp_path / "out", progress=False)
    assert report.written == ["good"] and [c for c, _ in report.failures] == ["bad", "gone"]
    assert report.failures[0][1].startswith(f"{bad['image'][1]}: unreadable")  # the damaged file, not the first
    assert report.failures[1][1] == f"{gone['image'][0]}: missing file"
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


def test_a_scan_coarser_than_the_training_cases_is_noted_by_infer_and_evaluate(synth_set, tiny_checkpoint, tmp_path):
    trained = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]["training_scans"]
    cases = load_manifest(synth_set[1])["training"]
    sizes = [voxel_size(nib.load(c["image"][0]).affine) for c in cases]
    assert 0 < trained["cases"] < len(cases)  # the training split, not its validation fold
    assert trained["slice_mm"][1] == round(max(s[1] for s in sizes), 2)
    case = load_manifest(synth_set[1])["testing"][0]
    thick = []  # the same images, their slices stretched to 3x the thickest trained
    for i, path in enumerate([*case["image"], case["label"]]):
        img = nib.load(path)
        affine = img.affine.copy()
        axis = int(np.argmax(np.linalg.norm(affine[:3, :3], axis=0)))
        affine[:3, axis] *= 3 * trained["slice_mm"][1] / np.linalg.norm(affine[:3, axis])
        thick.append(str(write_nifti(tmp_path / f"thick_{i}.nii.gz", np.asarray(img.dataobj), affine)))
    thick, thick_label = thick[:-1], thick[-1]
    for name, images in (("as_trained", case["image"]), ("thick", thick)):
        result = run_cli("infer", "--model", str(tiny_checkpoint), "--image", *images, "--id", name, "--output",
                         str(tmp_path / "out"), "--no-mni")
        assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "out" / "volumes.csv", newline="") as f:
        notes = {r["id"]: r["notes"] for r in csv.DictReader(f)}
    top = trained["slice_mm"][1]
    assert notes["as_trained"] == ""
    assert notes["thick"].startswith(f"slices {3 * top:.1f} mm thick (trained on ")
    assert f"thick: {thick[0]}: slices {3 * top:.1f} mm thick" in result.stderr  # and a warning naming the file
    manifest = tmp_path / "both.json"
    manifest.write_text(json.dumps({"testing": [dict(case, id="as_trained"),
                                                dict(id="thick", image=thick, label=thick_label)]}))
    result = run_cli("evaluate", "--datalist", str(manifest), "--predictions", str(tmp_path / "out"), "--output",
                     str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "scans coarser than every training case: 1 (Dice " in result.stdout
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert list(summary["coarser_than_trained"]["cases"]) == ["thick"]
    assert notes["thick"] in (tmp_path / "eval" / "report.html").read_text()
