import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli, write_nifti
from pipeline.data.validation import validate_manifest


@pytest.fixture
def damaged(synth_set, tmp_path):
    """A copy of the synthetic set with one kind of damage per case; returns (manifest, {kind: file})."""
    data_dir, manifest = synth_set
    shutil.copytree(data_dir, tmp_path / "data")
    shutil.copy(manifest, tmp_path / "m.json")
    cases = json.loads((tmp_path / "m.json").read_text())
    cases = cases["training"] + cases["testing"]
    root = tmp_path / "data"
    files = {}

    def path(i, key):
        return root / (cases[i]["label"] if key == "label" else cases[i]["image"][key])

    files["truncated"] = path(0, 0)  # truncated gzip of a DWI
    raw = files["truncated"].read_bytes()
    files["truncated"].write_bytes(raw[: len(raw) // 2])

    files["label_two"] = path(1, "label")  # label with a 2
    img = nib.load(files["label_two"])
    data = np.asarray(img.dataobj).copy()
    data.flat[0] = 2
    write_nifti(files["label_two"], data, img.affine)

    files["shape"] = path(2, "label")  # label on another shape
    img = nib.load(files["shape"])
    write_nifti(files["shape"], np.zeros(np.array(img.shape) - 1, np.uint8), img.affine)

    files["nan"] = path(3, 1)  # NaN in the ADC
    img = nib.load(files["nan"])
    data = img.get_fdata(dtype=np.float32)
    data[5, 5, 5] = np.nan
    write_nifti(files["nan"], data, img.affine)

    files["not_nifti"] = path(4, 2)
    files["not_nifti"].write_bytes(gzip.compress(b"this is a text file, not an image"))
    return tmp_path / "m.json", files


def test_clean_set_has_no_errors_and_flair_grid_is_a_warning(synth_set):
    problems = validate_manifest(synth_set[1], progress=False)
    assert [p for p in problems if p.severity == "error"] == []
    assert any("FLAIR" in p.path and "another grid" in p.message for p in problems)


def test_every_damaged_file_is_named_in_one_run(damaged):
    manifest, files = damaged
    errors = [p for p in validate_manifest(manifest, progress=False) if p.severity == "error"]
    by_path = {Path(p.path).name: p.message for p in errors}
    assert "truncated or corrupt" in by_path[files["truncated"].name]
    assert "not binary" in by_path[files["label_two"].name] and "2" in by_path[files["label_two"].name]
    assert "label shape" in by_path[files["shape"].name]
    assert "NaN/Inf" in by_path[files["nan"].name]
    assert "not a NIfTI" in by_path[files["not_nifti"].name]
    assert all(p.case.startswith("sub-strokecase") for p in errors)


def test_cli_exits_1_and_prints_each_damaged_file_with_its_case(damaged):
    manifest, files = damaged
    result = run_cli("validate", str(manifest))
    assert result.returncode == 1, result.stderr
    for path in files.values():
        line = next(x for x in result.stderr.splitlines() if str(path) in x)
        assert line.startswith("ERROR: sub-strokecase")


def test_missing_all_zero_4d_and_duplicate_ids(tmp_path):
    good = np.ones((5, 5, 5), np.float32)
    write_nifti(tmp_path / "a.nii.gz", good)
    write_nifti(tmp_path / "zero.nii.gz", np.zeros((5, 5, 5), np.float32))
    write_nifti(tmp_path / "four_d.nii.gz", np.ones((5, 5, 5, 3), np.float32))
    write_nifti(tmp_path / "lab.nii.gz", np.zeros((5, 5, 5), np.uint8))
    write_nifti(tmp_path / "moved.nii.gz", np.zeros((5, 5, 5), np.uint8), np.diag([1, 1, 1.5, 1]))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"training": [
        {"id": "c1", "image": ["a.nii.gz", "missing.nii.gz"], "label": "lab.nii.gz"},
        {"id": "c1", "image": ["zero.nii.gz"], "label": "lab.nii.gz"},
        {"id": "c3", "image": ["four_d.nii.gz"], "label": "lab.nii.gz"},
        {"id": "c4", "image": ["a.nii.gz"], "label": "moved.nii.gz"},
        {"id": "c5", "image": ["a.nii.gz"]}]}))
    found = {(p.case, Path(p.path).name, p.message.split(":")[0].split(" (")[0])
             for p in validate_manifest(manifest, progress=False) if p.severity == "error"}
    assert ("c1", "missing.nii.gz", "missing file") in found
    assert ("c1", "m.json", "duplicate case id") in found
    assert ("c1", "zero.nii.gz", "image is all zero") in found
    assert ("c3", "four_d.nii.gz", "4D image with 3 volumes") in found
    assert ("c4", "moved.nii.gz", "label affine differs from the image's by up to 0.5 mm") in found
    assert ("c5", "m.json", "training case has no 'label'") in found


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"),
                                           ('{"training": [{"id": "x"}]}', "has no 'image'")])
def test_broken_manifest_is_one_line_and_exit_2(tmp_path, text, message):
    (tmp_path / "m.json").write_text(text)
    result = run_cli("validate", str(tmp_path / "m.json"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
