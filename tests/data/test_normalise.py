"""Normalisation gives the network the same input whatever the scanner stored: dtype, gain, units, background."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from pipeline.data.normalise import head_mask, normalisation
from pipeline.data.synthetic import synthesize_subject
from pipeline.data.transforms import val_transforms


@pytest.fixture(scope="module")
def head():
    """A smooth ellipsoidal 'head' with a bright blob, 2 mm voxels, zero background; and its mask."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in (60, 70, 56)], indexing="ij")
    r = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2
    inside = r < 1
    tissue = np.where(inside, 100 + 20 * np.sin(6 * x) * np.cos(5 * y), 0.0)
    tissue[(x - 0.2) ** 2 + y ** 2 + z ** 2 < 0.02] *= 2.0
    return tissue.astype(np.float32), inside


def _normalise(channels: list[np.ndarray], **settings) -> torch.Tensor:
    image = MetaTensor(torch.from_numpy(np.stack(channels)), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    from monai.transforms import Compose

    return Compose(normalisation("image", crop_margin=None, **settings))({"image": image})["image"].as_tensor()


def test_same_input_whatever_the_gain_dtype_or_units(head):
    tissue, _ = head
    reference = _normalise([tissue])
    for stored in (tissue * 1e-6, np.rint(tissue * 37).astype(np.int16).astype(np.float32), tissue * 1e4):
        differ = (_normalise([stored]) - reference).abs() > 2e-2
        assert differ.float().mean() < 1e-3  # a head-edge block at the threshold may tip either way


def test_without_clip_a_lesion_above_the_top_percentile_keeps_its_core_to_edge_contrast(head):
    """An infarct is the brightest thing on DWI: clipping at the 99.5th percentile flattens the top 0.5% of the
    head, the core of a larger lesion, to one value; ``clip: false`` keeps the ordering and the
    z-scale of the percentile-clipped statistics (the hot voxels do not set it)."""
    tissue, inside = head
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in tissue.shape], indexing="ij")
    r2 = (x + 0.3) ** 2 + y**2 + z**2
    lesion = inside & (r2 < 0.06)  # ~3% of the head: far more than the 0.5% above the 99.5th percentile
    dwi = np.where(lesion, 260.0 - 200 * r2, tissue).astype(np.float32)  # graded: core 260, edge ~250
    edge, core = lesion & (r2 > 0.04), lesion & (r2 < 0.01)
    clipped, kept = _normalise([dwi], clip=True)[0].numpy(), _normalise([dwi], clip=False)[0].numpy()
    assert np.ptp(clipped[core]) < 1e-6 and clipped[core].min() == clipped.max()  # the core is one flat value
    assert kept[core].mean() > kept[edge].mean() + 0.1 and kept[lesion].max() > clipped.max()
    between = (kept != 0) & (clipped > clipped.min() + 1e-3) & (clipped < clipped.max() - 1e-3)
    assert between.sum() > 0.9 * inside.sum() and np.allclose(kept[between], clipped[between])  # same z-scale


def test_median_scale_reads_a_lesion_as_its_ratio_to_tissue_with_or_without_a_bright_scalp(head):
    """``scale: median``: (value - median) / median inside the head, so a lesion reads as its ratio to the head's
    typical tissue, minus one, whether the file is skull-stripped or keeps a bright scalp shell; a z-score's
    std is dominated by the scalp and reads the same lesion several times lower."""
    tissue, inside = head
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in tissue.shape], indexing="ij")
    r = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2
    shell = inside & (r > 0.85)  # a fifth of the head
    lesion = inside & ((x - 0.2) ** 2 + y**2 + z**2 < 0.01)
    expected = tissue[lesion].mean() / np.median(tissue[inside & ~shell]) - 1
    with_scalp, stripped = (np.where(shell, fill, tissue).astype(np.float32) for fill in (300.0, 0.0))
    ratio = [_normalise([img], clip=False, scale="median")[0].numpy()[lesion].mean() for img in (with_scalp, stripped)]
    z = [_normalise([img], clip=False)[0].numpy()[lesion].mean() for img in (with_scalp, stripped)]
    assert np.allclose(ratio, expected, rtol=0.15), (ratio, expected)
    assert z[0] < z[1] / 3


def test_noise_over_the_field_of_view_is_zeroed_and_the_head_looks_the_same(head):
    tissue, inside = head
    rng = np.random.default_rng(0)
    noisy = np.hypot(tissue + rng.normal(0, 5, tissue.shape), rng.normal(0, 5, tissue.shape)).astype(np.float32)
    clean, out = _normalise([tissue])[0].numpy(), _normalise([noisy])[0].numpy()
    far = ~ndimage.binary_dilation(inside, iterations=2)  # the mask works on 4 mm blocks: its edge is that coarse
    assert np.count_nonzero(out[far]) < 1e-3 * np.count_nonzero(far)  # the background is exactly 0
    core = inside & (out != 0) & (clean != 0)
    assert np.corrcoef(out[core], clean[core])[0, 1] > 0.9
    assert abs(out[core].mean()) < 0.1 and abs(out[core].std() - 1) < 0.1


def test_head_mask_finds_the_head_in_noise_and_skull_stripped(head):
    tissue, inside = head
    rng = np.random.default_rng(1)
    noisy = np.hypot(tissue + rng.normal(0, 8, tissue.shape), rng.normal(0, 8, tissue.shape))
    for volume in (tissue, noisy):
        mask = head_mask(volume, (2.0, 2.0, 2.0))
        dice = 2 * np.sum(mask & inside) / (mask.sum() + inside.sum())
        assert dice > 0.95


def test_other_channels_use_the_first_channels_head(head):
    """An ADC map with fitted noise outside the head would fool a mask of its own: the DWI's head is used."""
    tissue, inside = head
    rng = np.random.default_rng(2)
    adc = np.where(inside, 800.0, rng.uniform(0, 4000, tissue.shape)).astype(np.float32)
    out = _normalise([tissue, adc])
    far = ~ndimage.binary_dilation(inside, iterations=2)
    assert np.count_nonzero(out[1].numpy()[far]) < 1e-3 * np.count_nonzero(far)


def test_fixed_and_noisy_synthetic_cases_give_z_scored_heads(tmp_path):
    from pipeline.data.anatomy import load_anatomy
    from pipeline.data.synthetic import isles22_paths
    from pipeline.io import save_nifti_atomic

    anat = load_anatomy()
    case = synthesize_subject(anat, 0, seed=0, domain="random", spacing=4.0)
    paths = {k: tmp_path / rel for k, rel in isles22_paths("sub-x").items()}
    for key, path in paths.items():
        save_nifti_atomic(case[key], path)
    out = val_transforms(3, [4.0, 4.0, 4.0], with_label=False)({"image": [str(paths[k]) for k in ("dwi", "adc",
                                                                                              "flair")]})["image"]
    for c in range(3):
        values = out[c][out[c] != 0]
        assert abs(float(values.mean())) < 0.15 and abs(float(values.std()) - 1) < 0.15
