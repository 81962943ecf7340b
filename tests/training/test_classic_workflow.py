"""What a user runs for issue #9: the classic U-Net trained and applied through the usual commands, the
explain command, and a normalisation study from one command."""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import ROOT, run_cli, tiny_overrides
from pipeline.data.manifest import load_manifest
from pipeline.training.experiment import DEFAULT_CONFIG

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


