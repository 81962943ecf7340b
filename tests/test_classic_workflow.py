"""What a user runs for issue #9: the classic U-Net trained and applied through the usual commands, the
explain command, and a normalisation study from one command."""

import csv
import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import ROOT, run_cli, tiny_overrides
from pipeline.data.manifest import load_manifest
from pipeline.experiment import DEFAULT_CONFIG

CLASSIC = DEFAULT_CONFIG.replace("train.yaml", "classic_unet.yaml")
NORMS = DEFAULT_CONFIG.replace("train.yaml", "norm")


@pytest.mark.slow
@pytest.mark.parametrize("dims, patch", [(3, "[60, 60, 60]"), (2, "[60, 60]")])
def test_classic_unet_trains_and_infers_through_the_usual_commands(synth_set, tmp_path, dims, patch):
    _, manifest = synth_set
    overrides = tiny_overrides(manifest, tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db", epochs=1)
    result = run_cli("train", "--config", DEFAULT_CONFIG, CLASSIC, "--spatial_dims", str(dims), *overrides,
                     f"--patch_size_{dims}d", patch, "--network_def#strides", "[2]", "--network_def#channels",
                     "[8, 16, 32]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = (tmp_path / "out" / "config.yaml").read_text()
    assert "classic_unet" in config and "dice_wce" in config
    ckpt = next((tmp_path / "out" / "checkpoints").glob("best-*.ckpt"))
    result = run_cli("infer", "--model", str(ckpt), "--datalist", str(manifest), "--output", str(tmp_path / "pred"),
                     "--split", "testing", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    case = load_manifest(manifest)["testing"][0]
    dwi = nib.load(case["image"][0])
    mask = nib.load(tmp_path / "pred" / f"{case['id']}.nii.gz")
    assert mask.shape == dwi.shape and np.allclose(mask.affine, dwi.affine)  # overlap-tile covers the whole grid
    if dims == 3:  # and it deploys as a bundle: TorchScript, ONNX, metadata with the smaller output
        bundle = tmp_path / "bundle" / "stroke_mri_segmentation"
        shutil.copytree(ROOT / "bundles" / "stroke_mri_segmentation", bundle, ignore=shutil.ignore_patterns("models"))
        result = run_cli("export", "--checkpoint", str(ckpt), "--bundle", str(bundle), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        assert meta["network_data_format"]["outputs"]["pred"]["spatial_shape"] == [20, 20, 20]  # 60^3 -> 20^3
        run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                              str(bundle / "configs" / "inference.yaml"), "--bundle_root", str(bundle), "--datalist",
                              str(manifest), "--output_dir", str(tmp_path / "bundle_pred")], capture_output=True,
                             text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert nib.load(tmp_path / "bundle_pred" / f"{case['id']}.nii.gz").shape == dwi.shape


@pytest.mark.slow
def test_explain_writes_non_empty_maps_on_the_case_grid(synth_set, tiny_checkpoint, tmp_path):
    _, manifest = synth_set
    case = load_manifest(manifest)["training"][0]
    result = run_cli("explain", "--model", str(tiny_checkpoint), "--datalist", str(manifest), "--case", case["id"],
                     "--output", str(tmp_path / "explain"), "--occlusion-size", "12", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dwi = nib.load(case["image"][0])
    for name in ("gradcam", "occlusion"):
        img = nib.load(tmp_path / "explain" / f"{case['id']}_{name}.nii.gz")
        data = np.asarray(img.dataobj)
        assert img.shape == dwi.shape and np.allclose(img.affine, dwi.affine)
        assert np.isfinite(data).all() and (data > 0).sum() > 100
    assert (tmp_path / "explain" / f"{case['id']}_explain.png").stat().st_size > 10_000
    wrong = run_cli("explain", "--model", str(tiny_checkpoint), "--datalist", str(manifest), "--case", case["id"],
                    "--output", str(tmp_path / "x"), "--layer", "no.such.layer", cwd=tmp_path)
    assert wrong.returncode == 2 and "for example" in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.mark.slow
def test_normalisation_study_from_one_command(synth_set, tmp_path):
    _, manifest = synth_set
    overrides = tiny_overrides(manifest, tmp_path / "unused", f"sqlite:///{tmp_path}/mlflow.db", epochs=1)
    overrides = [a for i, a in enumerate(overrides) if "--output_dir" not in (a, overrides[i - 1])]
    result = run_cli("study", "--variants", f"{NORMS}/batch.yaml", f"{NORMS}/none.yaml", "--output",
                     str(tmp_path / "study"), *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "study" / "study.csv") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"batch", "none"} and all(r["status"] == "ok" for r in rows.values())
    assert all(0 <= float(r["best_val_dice"]) <= 1 and float(r["peak_rss_mb"]) > 100 for r in rows.values())
    for variant in rows:  # each variant really trained with its own normalisation
        assert f"norm: {variant}" in (tmp_path / "study" / variant / "config.yaml").read_text()
    assert "| batch |" in result.stdout and (tmp_path / "study" / "study.png").is_file()
