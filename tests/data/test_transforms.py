import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as mt

from conftest import write_nifti
from pipeline.data.manifest import load_manifest
from pipeline.data.transforms import DEFAULT_AUGMENT, train_transforms, val_transforms
from pipeline.errors import find_pipeline_error

AUGMENT_ALL = {k: {"prob": 1.0} for k in DEFAULT_AUGMENT}


@pytest.fixture(scope="module")
def case(synth_set):
    return load_manifest(synth_set[1])["training"][0]


def test_val_chain_aligns_channels_on_other_grids_and_normalises_inside_brain(case):
    out = val_transforms(channels=3, spacing=[4.0, 4.0, 4.0])(dict(case))
    image, label = out["image"], out["label"]
    assert image.shape[0] == 3 and image.shape[1:] == label.shape[1:]
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    brain = image[0] != 0
    for c in range(3):  # z-scored on non-zero voxels, FLAIR resampled from its own grid
        values = image[c][image[c] != 0]
        assert abs(float(values.mean())) < 0.05 and abs(float(values.std()) - 1) < 0.05
        assert (image[c] != 0).float().mean() > 0.1
    assert set(np.unique(label.numpy())) <= {0.0, 1.0}
    assert brain.float().mean() > 0.2  # cropped to the head


def test_lps_anisotropic_input_comes_out_ras_at_target_spacing(tmp_path):
    rng = np.random.default_rng(0)
    vol = np.zeros((40, 30, 12), np.float32)
    vol[5:35, 5:25, 2:10] = rng.random((30, 20, 8)) + 1
    affine = np.diag([-1.0, -1.0, 5.0, 1.0])
    write_nifti(tmp_path / "img.nii.gz", vol, affine)
    write_nifti(tmp_path / "lab.nii.gz", (vol > 1.5).astype(np.uint8), affine)
    out = val_transforms(channels=1, spacing=[2.0, 2.0, 2.0])({"image": [str(tmp_path / "img.nii.gz")],
                                                               "label": str(tmp_path / "lab.nii.gz")})
    assert nib.aff2axcodes(out["image"].affine.numpy()) == ("R", "A", "S")
    assert np.allclose(np.abs(np.diag(out["image"].affine.numpy())[:3]), [2, 2, 2])


@pytest.mark.parametrize("dims, patch", [(3, [32, 32, 32]), (2, [48, 48])])
def test_training_patches_have_the_patch_size_and_a_lesion_when_positive(case, dims, patch):
    t = train_transforms(channels=3, spatial_dims=dims, spacing=[4.0, 4.0, 4.0], patch_size=patch,
                         augment=AUGMENT_ALL, pos=1.0, neg=0.0, num_samples=3)
    t.set_random_state(1)
    samples = t(dict(case))
    assert len(samples) == 3
    for s in samples:
        assert tuple(s["image"].shape) == (3, *patch) and tuple(s["label"].shape) == (1, *patch)
        assert torch.isfinite(s["image"]).all()
        assert set(np.unique(s["label"].numpy())) <= {0.0, 1.0}
    # pos=1: every patch is centred on a lesion voxel (an elastic/affine warp may move it a little)
    assert sum(float(s["label"].sum()) > 0 for s in samples) >= 2


def test_training_patches_are_plain_tensors_and_metadata_tracking_comes_back_on(case):
    """The patch augmentation runs without MONAI's metadata (faster, same values); the whole volumes validation
    and inference load afterwards in the same process keep their affine."""
    from monai.data import MetaTensor, get_track_meta

    t = train_transforms(channels=3, spatial_dims=3, spacing=[4.0, 4.0, 4.0], patch_size=[32, 32, 32],
                         augment=AUGMENT_ALL, num_samples=2)
    t.set_random_state(0)
    samples = t(dict(case))
    assert all(type(s["image"]) is torch.Tensor and type(s["label"]) is torch.Tensor for s in samples)
    assert get_track_meta()
    out = val_transforms(channels=3, spacing=[4.0, 4.0, 4.0])(dict(case))
    assert isinstance(out["image"], MetaTensor) and nib.aff2axcodes(out["image"].affine.numpy()) == ("R", "A", "S")


def test_metadata_tracking_comes_back_on_when_a_training_step_raises(case):
    """Tracking is process-wide: a patch that fails mid-augmentation must not leave it off for validation."""
    from monai.data import get_track_meta

    t = train_transforms(channels=3, spatial_dims=3, spacing=[4.0, 4.0, 4.0], patch_size=[32, 32, 32],
                         augment=AUGMENT_ALL, num_samples=2)

    def fail(data):
        raise RuntimeError("a damaged patch")

    steps = list(t.transforms)
    at = next(i for i, step in enumerate(steps) if type(step).__name__ == "TrackMeta") + 1  # tracking just off
    t.transforms = [*steps[:at], mt.Lambda(fail), *steps[at:]]
    with pytest.raises(RuntimeError) as info:  # MONAI wraps it in "applying transform ..."
        t(dict(case))
    err, causes = info.value, []
    while err is not None:
        causes.append(str(err))
        err = err.__cause__
    assert any("damaged patch" in c for c in causes)
    assert get_track_meta()


def test_wrong_channel_count_names_the_case(case):
    with pytest.raises(Exception) as info:
        val_transforms(channels=1, spacing=None)(dict(case))
    err = find_pipeline_error(info.value)
    assert err is not None and err.case == case["id"] and "3 image file(s) but the model takes 1" in str(err)


def test_patch_size_must_match_spatial_dims():
    with pytest.raises(ValueError, match="spatial_dims is 3"):
        train_transforms(channels=1, spatial_dims=3, spacing=None, patch_size=[32, 32])


def test_a_lesion_on_the_last_thick_slice_reaches_the_model_grid(tmp_path):
    """A thick slice stands for its whole slab: the model grid covers the first and last slices out to their outer
    faces, with their own values (not cut at their centres, nor blended with zeros)."""
    rng = np.random.default_rng(0)
    shape, thick = (60, 60, 12), 6.0
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    head = ((ijk[0] - 29.5) / 26) ** 2 + ((ijk[1] - 29.5) / 26) ** 2 < 1  # a head cut by the slab's ends
    vol = np.where(head, 100.0, 0.0) + rng.normal(0, 2, shape) ** 2
    lesion = head & ((ijk[0] - 30) ** 2 + (ijk[1] - 30) ** 2 < 25) & (ijk[2] == shape[2] - 1)
    vol[lesion] = 200.0
    affine = np.diag([1.5, 1.5, thick, 1.0])
    write_nifti(tmp_path / "dwi.nii.gz", vol.astype(np.float32), affine)
    write_nifti(tmp_path / "msk.nii.gz", lesion.astype(np.uint8), affine)
    out = val_transforms(channels=1, spacing=[2.0, 2.0, 2.0])({"image": [str(tmp_path / "dwi.nii.gz")],
                                                               "label": str(tmp_path / "msk.nii.gz")})
    image, label = out["image"][0].numpy(), out["label"][0].numpy() > 0.5
    assert label.sum() * 8 == pytest.approx(lesion.sum() * 1.5 * 1.5 * thick, rel=0.25)
    assert (image[label] > 2).mean() > 0.9  # bright, twice the tissue, z-scored: not cut off or zeroed
    z_mm = (np.asarray(out["image"].affine) @ [0, 0, np.nonzero(image.any(axis=(0, 1)))[0].max(), 1])[2]
    assert z_mm > (shape[2] - 1) * thick + thick / 2 - 2.0  # the head reaches the last slice's outer face


def test_a_channel_covering_part_of_the_head_is_blank_beyond_its_edge_not_dark(tmp_path):
    """An ADC on a grid of its own that stops inside the head: where it has no voxel it carries no value (0 after
    normalisation, the head's typical tissue), and its edge is not blended with zeros into a band of low ADC,
    which reads as restricted diffusion."""
    shape = (96, 96, 24)  # 1 x 1 x 2 mm: the 2 mm model grid is coarser in-plane (smoothed, then resampled)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    head = ((ijk[0] - 47.5) / 42) ** 2 + ((ijk[1] - 47.5) / 42) ** 2 + ((ijk[2] - 11.5) / 11) ** 2 < 1
    rng = np.random.default_rng(0)
    dwi_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    write_nifti(tmp_path / "dwi.nii.gz", (np.where(head, 100.0, 0) + rng.normal(0, 1, shape)).astype(np.float32),
                dwi_affine)
    adc_affine = np.diag([1.5, 1.5, 3.0, 1.0])  # its own grid, covering x < 48 mm only: half the head
    adc = (800 + rng.normal(0, 1, (32, 64, 16))).astype(np.float32)
    write_nifti(tmp_path / "adc.nii.gz", adc, adc_affine)
    out = val_transforms(channels=2, spacing=[2.0, 2.0, 2.0], with_label=False, normalise={"scale": "median"})(
        {"image": [str(tmp_path / "dwi.nii.gz"), str(tmp_path / "adc.nii.gz")]})  # as the shipped model
    image = out["image"].numpy()
    inside = image[0] != 0
    x_mm = (np.asarray(out["image"].affine) @ np.stack([np.arange(image.shape[1]), *[np.zeros(image.shape[1])] * 2,
                                                         np.ones(image.shape[1])]))[0]
    covered = x_mm < 44  # within the ADC's field of view, two model voxels from its edge
    assert np.abs(image[1][inside & covered[:, None, None]]).max() < 0.05  # uniform ADC: its own median
    assert image[1][inside].min() > -0.05  # no dark band at the edge
    assert (image[1][inside & ~covered[:, None, None]] == 0).mean() > 0.9  # beyond it: blank
