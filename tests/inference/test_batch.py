"""Segmenting a whole manifest: one bad case does not take the others down; outputs are written whole."""

import json

import pytest

from conftest import BrightIsLesion, oblique_lps_case
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


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return [{k: float(v) if k != "id" else v for k, v in r.items()} for r in csv.DictReader(f)]
