"""The MONAI bundle in the model-zoo style: export, verify, and run it as clinical engineering would."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from nibabel.processing import resample_from_to

from conftest import ROOT, run_cli, write_nifti
from pipeline.data.manifest import load_manifest

pytestmark = pytest.mark.slow
BUNDLE = ROOT / "bundles" / "stroke_mri_segmentation"


def monai_bundle(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """A new bundle folder filled by `python -m pipeline export` from a tiny training (it starts as a copy of the
    repository's bundle)."""
    bundle = tmp_path_factory.mktemp("bundle") / "stroke_mri_segmentation"
    result = run_cli("export", "--checkpoint", str(tiny_checkpoint), "--bundle", str(bundle))
    assert result.returncode == 0, result.stderr[-3000:]
    return bundle


def test_export_fills_models_bumps_version_and_logs_to_mlflow(exported, tiny_checkpoint):
    assert all((exported / "models" / f).is_file() for f in ("model.pt", "model.ts", "model.onnx"))
    before = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    major, minor, patch = (int(p) for p in before["version"].split("."))
    assert meta["version"] == f"{major}.{minor}.{patch + 1}" and meta["version"] in meta["changelog"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32, 32]
    assert meta["network_data_format"]["inputs"]["image"]["channel_def"] == {"0": "dwi", "1": "adc", "2": "flair"}
    assert (exported / "docs" / "README.md").is_file() and (exported / "LICENSE").is_file()
    settings = yaml.safe_load((exported / "configs" / "inference.yaml").read_text())["settings"]
    assert settings["optional_channels"] == [2]  # FLAIR, which training dropped out
    from mlflow import MlflowClient

    out = tiny_checkpoint.parent.parent
    client = MlflowClient(f"sqlite:///{out.parent}/mlflow.db")
    run_id = (out / "mlflow_run_id.txt").read_text().strip()
    assert [a.path for a in client.list_artifacts(run_id, "bundle")] == [
        f"bundle/stroke_mri_segmentation_v{meta['version']}.zip"]


def test_torchscript_loads_and_matches_the_state_dict(exported):
    from pipeline.inference.loading import load_bundle

    network, settings = load_bundle(exported)
    scripted = torch.jit.load(str(exported / "models" / "model.ts"))
    x = torch.randn(2, 3, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(network(x), scripted(x), atol=1e-4)


def test_monai_verify_commands_pass_offline(exported):
    result = monai_bundle("verify_metadata", "--meta_file", str(exported / "configs" / "metadata.json"),
                          "--filepath", str(ROOT / "bundles" / "schemas" / "meta_schema.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    result = monai_bundle("verify_net_in_out", "network_def", "--meta_file", str(exported / "configs/metadata.json"),
                          "--config_file", str(exported / "configs/inference.yaml"), "--bundle_root", str(exported))
    assert result.returncode == 0, result.stderr[-2000:]


def _other_grids(case: dict, out):
    """The case re-written three ways: LPS voxel order, an oblique pose, and 1.5 x 1.5 x 5 mm slices."""
    imgs = [nib.load(p) for p in case["image"]]
    variants = {}
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = []
    for img in imgs:  # same anatomy in the world, stored with the first two axes reversed
        data = np.asanyarray(img.dataobj)[::-1, ::-1]
        shift = np.eye(4)
        shift[:2, 3] = np.array(img.shape[:2]) - 1
        lps.append((data, img.affine @ shift @ flip))
    variants["lps"] = lps
    a = np.deg2rad(15)
    rot = np.array([[np.cos(a), -np.sin(a), 0, 3], [np.sin(a), np.cos(a), 0, -2], [0, 0, 1, 4], [0, 0, 0, 1]])
    variants["oblique"] = [(np.asanyarray(img.dataobj), rot @ img.affine) for img in imgs]
    # the same field of view and orientation (whatever the case's), 1.5 x 1.5 x 5 mm voxels
    spacing = np.linalg.norm(imgs[0].affine[:3, :3], axis=0)
    thick = imgs[0].affine.copy()
    thick[:3, :3] = imgs[0].affine[:3, :3] @ np.diag(np.array([1.5, 1.5, 5.0]) / spacing)
    shape = tuple(int(n) for n in np.ceil(np.array(imgs[0].shape[:3]) * spacing / [1.5, 1.5, 5]))
    variants["thick"] = [(np.asanyarray(resample_from_to(img, (shape, thick), order=1).dataobj), thick)
                         if i < 2 else (np.asanyarray(img.dataobj), img.affine) for i, img in enumerate(imgs)]
    cases = []
    for name, channels in variants.items():
        paths = [str(write_nifti(out / f"{name}_{i}.nii.gz", data.astype(np.float32), aff))
                 for i, (data, aff) in enumerate(channels)]
        cases.append({"id": f"{case['id']}_{name}", "image": paths})
    return cases


def test_bundle_run_segments_other_orientations_and_spacings_on_their_own_grids(exported, synth_set, tmp_path):
    case = load_manifest(synth_set[1])["training"][0]
    cases = _other_grids(case, tmp_path / "cases")
    (tmp_path / "cases.json").write_text(json.dumps({"testing": cases}))
    result = monai_bundle("run", "--config_file", str(exported / "configs" / "inference.yaml"), "--bundle_root",
                          str(exported), "--datalist", str(tmp_path / "cases.json"),
                          "--output_dir", str(tmp_path / "out"), "--mni_location", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    lesions = (tmp_path / "out" / "lesions.csv").read_text().splitlines()
    assert lesions[0].startswith("id,lesion,kind,volume_ml,x_mm,y_mm,z_mm,mni_x")  # the bundle's option reached it
    assert not (tmp_path / "out" / "registration").exists()                       # --mni_location false
    for c in cases:
        ref, mask = nib.load(c["image"][0]), nib.load(tmp_path / "out" / f"{c['id']}.nii.gz")
        assert mask.shape == ref.shape and np.allclose(mask.affine, ref.affine)
        assert mask.get_data_dtype() == np.uint8
    assert len((tmp_path / "out" / "volumes.csv").read_text().splitlines()) == len(cases) + 1


def test_config_workflow_infer_has_every_property_and_runs(exported, synth_set, tmp_path):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(exported / "configs" / "inference.yaml"), workflow_type="infer",
                        bundle_root=str(exported), datalist=str(synth_set[1]), output_dir=str(tmp_path / "out"),
                        device="cpu")
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    ids = [c["id"] for c in load_manifest(synth_set[1])["testing"]]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == sorted(f"{i}.nii.gz" for i in ids)

    evaluation = ConfigWorkflow(config_file=str(exported / "configs" / "evaluate.yaml"), workflow_type=None,
                                bundle_root=str(exported), datalist=str(synth_set[1]),
                                predictions_dir=str(tmp_path / "out"), output_dir=str(tmp_path / "report"))
    evaluation.initialize()
    evaluation.run()
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["cases"] == len(ids) and (tmp_path / "report" / "report.html").is_file()


def test_config_workflow_train_with_overrides(synth_set, tmp_path):
    from monai.bundle import ConfigWorkflow

    from conftest import tiny_overrides
    from pipeline.training.experiment import parse_overrides

    overrides = parse_overrides(tiny_overrides(synth_set[1], tmp_path / "out", f"sqlite:///{tmp_path}/m.db", epochs=1))
    wf = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "train.yaml"), workflow_type=None, **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()


def test_bundle_run_exits_non_zero_when_a_case_fails(exported, tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"not an image")
    (tmp_path / "cases.json").write_text(json.dumps({"testing": [{"id": "bad", "image": ["bad.nii.gz"] * 3}]}))
    result = monai_bundle("run", "--config_file", str(exported / "configs" / "inference.yaml"), "--bundle_root",
                          str(exported), "--datalist", str(tmp_path / "cases.json"),
                          "--output_dir", str(tmp_path / "o"))
    assert result.returncode != 0 and "bad" in result.stderr
    assert not (tmp_path / "o" / "bad.nii.gz").exists()


def test_bundle_settings_are_overridden_from_the_command_line(exported, synth_set, tmp_path):
    """`--settings#NAME VALUE` reaches the one settings block: threshold 0 paints the head, a minimum lesion
    size no lesion reaches empties the mask again."""
    case = load_manifest(synth_set[1])["training"][0]
    (tmp_path / "cases.json").write_text(json.dumps({"testing": [case]}))
    painted = []
    for min_ml in ("0.0", "1e9"):
        out = tmp_path / min_ml
        result = monai_bundle("run", "--config_file", str(exported / "configs" / "inference.yaml"), "--bundle_root",
                              str(exported), "--datalist", str(tmp_path / "cases.json"), "--output_dir", str(out),
                              "--settings#threshold", "0.0", "--settings#min_lesion_ml", min_ml)
        assert result.returncode == 0, result.stderr[-3000:]
        painted.append(int(np.asarray(nib.load(out / f"{case['id']}.nii.gz").dataobj).sum()))
    assert painted[0] > 1000 and painted[1] == 0
