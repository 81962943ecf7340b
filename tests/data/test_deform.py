"""One-resampling affine + elastic deformation: same geometry for image and label, reproducible, and the
fast grid upsampling equal to torch's."""

import numpy as np
import torch
from monai.transforms import CenterSpatialCrop

from pipeline.data.deform import RandDeformd, upsample_centre


def _blob(shape):
    grids = np.indices(shape)
    centre = [s / 2 + 3 for s in shape]
    r2 = sum(((g - c) / (s / 5)) ** 2 for g, c, s in zip(grids, centre, shape, strict=True))
    return (r2 < 1).astype(np.float32)


def test_upsampled_grid_equals_interpolate_then_centre_crop():
    coarse = torch.randn(4, 7, 6, 8)
    full = torch.nn.functional.interpolate(coarse[None], scale_factor=[16] * 3, mode="trilinear",
                                           align_corners=False, recompute_scale_factor=True)[0]
    expected = CenterSpatialCrop([64, 64, 64])(full)
    assert torch.allclose(upsample_centre(coarse, [16] * 3, [64, 64, 64]), expected, atol=1e-5)


def test_no_deformation_is_the_centre_crop():
    x = torch.arange(40 * 40 * 40, dtype=torch.float32).reshape(1, 40, 40, 40)
    out = RandDeformd(["image"], [32, 32, 32], ["bilinear"])({"image": x})["image"]
    assert torch.equal(out, x[:, 4:36, 4:36, 4:36])


def test_image_and_label_move_together_and_runs_repeat_with_the_seed():
    for shape, patch in (((48, 48, 48), [40, 40, 40]), ((60, 60), [48, 48])):
        blob = torch.as_tensor(_blob(shape))[None]
        data = {"image": blob * 100, "label": blob.clone()}
        t = RandDeformd(["image", "label"], patch, ["bilinear", "nearest"], elastic_prob=1.0, grid_spacing=8,
                        magnitude_range=(2.0, 3.0), affine_prob=1.0, rotate_deg=20, scale=0.1)
        a = t.set_random_state(7)(data)
        b = t.set_random_state(7)(data)
        c = t.set_random_state(8)(data)
        assert a["image"].shape[1:] == tuple(patch) and torch.equal(torch.as_tensor(a["image"]), b["image"])
        assert not torch.equal(torch.as_tensor(a["label"]), c["label"])  # another seed, another deformation
        label = torch.as_tensor(a["label"])
        assert set(label.unique().tolist()) <= {0.0, 1.0} and label.sum() > 0
        inside = torch.as_tensor(a["image"])[label > 0]
        assert float(inside.mean()) > 80  # the bright blob is where the label says
        assert not torch.equal(label, CenterSpatialCrop(patch)(blob))  # and it was deformed


def test_keys_resampled_together_get_their_own_channels_back_as_if_resampled_alone():
    """Keys of one interpolation mode share a resampling: each gets exactly what a resampling of its own gives."""
    rng = np.random.default_rng(0)
    data = {"image": torch.as_tensor(rng.random((2, 40, 40, 40), dtype=np.float32)),
            "label": torch.as_tensor(_blob((40, 40, 40)))[None],
            "head": torch.as_tensor(rng.random((1, 40, 40, 40)) > 0.3).to(torch.uint8)}
    modes = ["bilinear", "nearest", "nearest"]
    t = RandDeformd(list(data), [32, 32, 32], modes, elastic_prob=1.0, grid_spacing=8, magnitude_range=(2.0, 3.0),
                    affine_prob=1.0, rotate_deg=20)
    out = t.set_random_state(3)(data)
    t.set_random_state(3).randomize()
    grid = t._grid()
    for key, mode in zip(data, modes, strict=True):
        alone = t.resampler(data[key], grid, mode=mode, padding_mode="zeros")
        assert out[key].shape == alone.shape and torch.equal(out[key], alone), key
    assert not torch.equal(out["label"], out["head"])
