"""A file stored with an intensity offset (z-scored, or shifted below 0) gives the network the input its plain
file gives, and files without one are left exactly as they are."""

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import write_nifti
from pipeline.data.manifest import load_manifest
from pipeline.data.signal_zero import zero_level
from pipeline.data.transforms import val_transforms

SHIPPED = {"clip": False, "scale": "median"}  # train.yaml's normalisation


@pytest.fixture(scope="module")
def case(synth_set):
    return load_manifest(synth_set[1])["training"][0]


def _rewritten(case: dict, folder, change) -> dict:
    images = []
    for i, path in enumerate(case["image"]):
        img = nib.load(path)
        data = change(np.asanyarray(img.dataobj).astype(np.float64))  # float64: an ADC in mm^2/s keeps its digits
        images.append(str(write_nifti(folder / f"image_{i}.nii.gz", data, img.affine)))
    return dict(case, image=images)


def _network_input(case: dict) -> torch.Tensor:
    return val_transforms(channels=3, spacing=[4.0, 4.0, 4.0], normalise=SHIPPED)(dict(case))["image"].as_tensor()


@pytest.mark.parametrize("name, change", [("offset -5000", lambda v: v - 5000.0),
                                          ("z-scored over the field of view", lambda v: (v - v.mean()) / v.std())])
def test_a_file_with_an_offset_gives_the_input_of_the_plain_file(case, tmp_path, name, change):
    plain = _network_input(case)
    shifted = _network_input(_rewritten(case, tmp_path, change))
    assert shifted.shape == plain.shape, name
    for c in range(3):
        close = (shifted[c] - plain[c]).abs() < 0.02
        assert close.float().mean() > 0.995, (name, c, float(close.float().mean()))


def test_the_channels_kept_on_the_scans_grid_get_their_zero_back_too(case, tmp_path):
    """The border refinement reads the ADC on the scan's own grid (``native``) as a ratio to its tissue: an ADC file
    with an offset gives the values its plain file gives there too (the offset found from its air)."""
    def native_adc(c):
        chain = val_transforms(channels=3, spacing=[4.0, 4.0, 4.0], normalise=SHIPPED, keep_native=True)
        return np.asarray(chain(dict(c))["native"][1])

    plain, shifted = native_adc(case), native_adc(_rewritten(case, tmp_path, lambda v: v - 5000.0))
    close = np.abs(shifted - plain) < 0.001 * np.median(np.abs(plain[plain != 0]))
    assert close.mean() > 0.995, float(close.mean())


def test_files_without_offset_are_left_alone(case):
    """Magnitude images (noise floor above 0) and an ADC whose air is fitted noise as large as tissue, centred
    on 0: no offset to remove."""
    dwi = torch.from_numpy(np.asanyarray(nib.load(case["image"][0]).dataobj).astype(np.float32))
    assert zero_level(dwi) == 0.0
    head = dwi > dwi[dwi > 0].median() * 0.3
    adc = torch.where(head, 800.0 + 50 * torch.randn(dwi.shape), 800.0 * torch.randn(dwi.shape))
    assert zero_level(adc, head) == 0.0


def test_the_level_is_the_air_or_the_darkest_head_voxels():
    rng = np.random.default_rng(0)
    head = torch.zeros(40, 40, 40, dtype=torch.bool)
    head[8:32, 8:32, 8:32] = True
    tissue = torch.from_numpy(rng.normal(1000, 100, head.shape)).float()
    air = torch.from_numpy(np.abs(rng.normal(0, 20, head.shape))).float()
    offset = torch.where(head, tissue, air) - 5000
    assert abs(zero_level(offset, head) - (np.percentile(air[~head].numpy(), 0.5) - 5000)) < 1
    assert abs(zero_level(offset) - float(np.percentile(offset.numpy(), 0.5))) < 1e-3
    brain_z = torch.where(head, (tissue - 1000) / 100, torch.zeros(()))  # z-scored in the brain, 0 outside
    assert zero_level(brain_z, head) == pytest.approx(float(np.percentile(brain_z[head].numpy(), 0.5)), abs=0.05)
    assert zero_level(brain_z, head) < -2
