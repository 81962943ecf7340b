"""The independent simulator's cases (``benchmarks/independent_cases.py``, ``make independent``): files a user's
``validate`` accepts, stored as a scanner writes them, with lesions that show restricted diffusion."""

import json
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "benchmarks"))
from independent_cases import generate  # noqa: E402


@pytest.mark.slow  # nilearn's templates and a subprocess: about 20 s
def test_cases_validate_and_their_lesions_are_bright_on_dwi_and_dark_on_adc(tmp_path):
    manifest = generate(tmp_path / "cases", cases=2, seed=3, manifest=tmp_path / "independent.json")
    result = run_cli("validate", str(manifest))
    assert result.returncode == 0 and f"{manifest}: 0 error(s)" in result.stdout, result.stdout + result.stderr
    data = json.loads(manifest.read_text())
    assert data["dataset_dir"] == "cases" and len(data["testing"]) == 2  # relative: the folder can move
    for case in data["testing"]:
        dwi, adc, flair, mask = (nib.load(tmp_path / data["dataset_dir"] / p) for p in [*case["image"], case["label"]])
        assert dwi.get_data_dtype() == adc.get_data_dtype() == np.int16  # scanner storage, ADC in 1e-6 mm^2/s
        assert np.allclose(mask.affine, dwi.affine) and mask.shape == dwi.shape
        assert not np.allclose(flair.affine, dwi.affine)  # FLAIR on a grid of its own
        zooms = dwi.header.get_zooms()
        assert zooms[2] >= 4.0 and zooms[0] < 2.0  # thick slices
        truth = np.asarray(mask.dataobj) > 0
        assert np.isclose(case["lesion_ml"], truth.sum() * np.prod(zooms) / 1000, rtol=1e-3)
        assert truth.any()  # cases 0 and 1 have lesions (one in six is lesion-free: 5, 11, ...)
        dwi_v, adc_v = np.asarray(dwi.dataobj, float), np.asarray(adc.dataobj, float)
        ring = ndimage.binary_dilation(truth, iterations=3) & ~ndimage.binary_dilation(truth) & (adc_v > 0)
        assert np.median(dwi_v[truth]) > 1.1 * np.median(dwi_v[ring])
        assert np.median(adc_v[truth]) < 0.85 * np.median(adc_v[ring])
        assert 300 < np.median(adc_v[ring]) < 3000  # 1e-6 mm^2/s units
