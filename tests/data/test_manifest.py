import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_nifti
from pipeline.data.manifest import build_manifest, load_manifest, stratified_split, write_manifest
from pipeline.errors import InputError


def fake_isles22(root: Path, n: int, unlabelled: int = 0) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n + unlabelled):
        sub, ses = f"sub-strokecase{i + 1:04d}", "ses-0001"
        stem = f"{sub}_{ses}"
        img = rng.random((8, 8, 8)).astype(np.float32)
        write_nifti(root / sub / ses / "dwi" / f"{stem}_dwi.nii.gz", img)
        write_nifti(root / sub / ses / "dwi" / f"{stem}_adc.nii.gz", img)
        write_nifti(root / sub / ses / "anat" / f"{stem}_FLAIR.nii.gz", rng.random((6, 7, 5)).astype(np.float32))
        if i < n:
            mask = np.zeros((8, 8, 8), np.uint8)
            mask.flat[: i * 3] = 1  # case i has 3 i voxels: distinct volumes
            write_nifti(root / "derivatives" / sub / ses / f"{stem}_msk.nii.gz", mask)
    return root


def fake_atlas(root: Path, n: int, testing: int = 2) -> Path:
    for i in range(n):
        site, sub = f"R00{i % 3 + 1}", f"sub-r00{i % 3 + 1}s{i:03d}"
        anat = root / "Training" / site / sub / "ses-1" / "anat"
        write_nifti(anat / f"{sub}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz", np.ones((6, 6, 6), np.float32))
        mask = np.zeros((6, 6, 6), np.uint8)
        mask[:2, :2, : i % 5 + 1] = 1
        write_nifti(anat / f"{sub}_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz", mask)
    for i in range(testing):
        anat = root / "Testing" / "R009" / f"sub-r009s{i:03d}" / "ses-1" / "anat"
        write_nifti(anat / f"sub-r009s{i:03d}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz", np.ones((6, 6, 6)))
    return root


def test_isles22_tree_to_manifest_with_relative_paths_and_folds(tmp_path):
    root = fake_isles22(tmp_path / "ISLES-2022", 20, unlabelled=1)
    data = build_manifest(root, "isles22", folds=5, test_fraction=0.2, seed=1, progress=False)
    assert len(data["training"]) == 16 and len(data["testing"]) == 5
    case = next(c for c in data["training"] if c["id"] == "sub-strokecase0002")
    assert case["image"] == ["sub-strokecase0002/ses-0001/dwi/sub-strokecase0002_ses-0001_dwi.nii.gz",
                             "sub-strokecase0002/ses-0001/dwi/sub-strokecase0002_ses-0001_adc.nii.gz",
                             "sub-strokecase0002/ses-0001/anat/sub-strokecase0002_ses-0001_FLAIR.nii.gz"]
    assert case["label"] == "derivatives/sub-strokecase0002/ses-0001/sub-strokecase0002_ses-0001_msk.nii.gz"
    counts = np.bincount([c["fold"] for c in data["training"]], minlength=5)
    assert len(counts) == 5 and counts.min() >= 3 and counts.max() <= 4
    unlabelled = [c for c in data["testing"] if "label" not in c]
    assert [c["id"] for c in unlabelled] == ["sub-strokecase0021"]
    assert data["channels"] == ["dwi", "adc", "flair"]


def test_manifest_is_a_monai_datalist_and_dataset_dir_is_relative(tmp_path):
    from monai.data import load_decathlon_datalist

    root = fake_isles22(tmp_path / "ISLES-2022", 6)
    out = tmp_path / "manifests" / "isles.json"
    write_manifest(build_manifest(root, "isles22", folds=2, test_fraction=0.2, progress=False), out)
    raw = json.loads(out.read_text())
    assert raw["dataset_dir"] == "../ISLES-2022"
    items = load_decathlon_datalist(out, data_list_key="training", base_dir=root)
    assert items and all(Path(p).is_file() for it in items for p in it["image"] + [it["label"]])
    ours = load_manifest(out)
    assert [c["image"] for c in ours["training"]] == [it["image"] for it in items]


def test_dataset_dir_absent_means_the_manifests_folder(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"training": [{"image": ["a.nii.gz"], "label": "b.nii.gz"}]}))
    data = load_manifest(tmp_path / "m.json")
    assert data["training"][0]["image"] == [str(tmp_path / "a.nii.gz")]
    assert data["training"][0]["id"] == "a"


def test_atlas_tree_one_channel_and_unlabelled_testing(tmp_path):
    root = fake_atlas(tmp_path / "ATLAS_2", 10, testing=2)
    data = build_manifest(root, "atlas", folds=5, test_fraction=0.0, progress=False)
    assert len(data["training"]) == 10 and data["channels"] == ["t1w"]
    assert all(len(c["image"]) == 1 and c["image"][0].endswith("_T1w.nii.gz") for c in data["training"])
    assert all(c["label"].endswith("label-L_desc-T1lesion_mask.nii.gz") for c in data["training"])
    assert sorted(c["id"] for c in data["testing"]) == ["sub-r009s000", "sub-r009s001"]
    assert all("label" not in c for c in data["testing"])


def test_folds_are_stratified_by_lesion_volume():
    volumes = np.arange(50, dtype=float)
    rng_volumes = np.random.default_rng(3).permutation(volumes)
    is_test, fold = stratified_split(rng_volumes, folds=5, test_fraction=0.2, seed=0)
    assert is_test.sum() == 10
    ranks = np.argsort(np.argsort(rng_volumes[~is_test]))
    for k in range(5):  # every fold holds one case from each run of 5 volume-sorted neighbours
        assert sorted(ranks[fold[~is_test] == k] // 5) == list(range(8))
    test_ranks = np.argsort(np.argsort(rng_volumes))[is_test]
    assert sorted(test_ranks // 5) == list(range(10))


def test_empty_tree_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no isles22 cases found"):
        build_manifest(tmp_path, "isles22", progress=False)


def test_isles22_case_without_flair_gets_null_and_reads_back_as_none(tmp_path):
    root = fake_isles22(tmp_path / "ISLES-2022", 6)
    (root / "sub-strokecase0003" / "ses-0001" / "anat" / "sub-strokecase0003_ses-0001_FLAIR.nii.gz").unlink()
    (root / "sub-strokecase0004" / "ses-0001" / "dwi" / "sub-strokecase0004_ses-0001_adc.nii.gz").unlink()
    out = tmp_path / "isles.json"
    write_manifest(build_manifest(root, "isles22", folds=2, test_fraction=0.2, progress=False), out)
    cases = {c["id"]: c for split in ("training", "testing") for c in json.loads(out.read_text())[split]}
    assert cases["sub-strokecase0003"]["image"][2] is None and cases["sub-strokecase0003"]["image"][1]
    assert cases["sub-strokecase0004"]["image"][1]  # a missing ADC stays a path: validate calls it missing
    back = {c["id"]: c for split in ("training", "testing") for c in load_manifest(out)[split]}
    assert back["sub-strokecase0003"]["image"][2] is None and Path(back["sub-strokecase0003"]["image"][0]).is_file()
