"""What a user runs for issue #9: the classic U-Net trained and applied through the usual commands, the
explain command, and a normalisation study from one command."""


import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli
from pipeline.data.manifest import load_manifest
from pipeline.training.experiment import DEFAULT_CONFIG

CLASSIC = DEFAULT_CONFIG.replace("train.yaml", "classic_unet.yaml")
NORMS = DEFAULT_CONFIG.replace("train.yaml", "norm")


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


