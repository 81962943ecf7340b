"""Acquisition-shift augmentation: each keeps the patch's shape, is the identity at probability 0, and does its
one thing (coarser axes, per-channel draws, background left at 0)."""

import numpy as np
import pytest
import torch

from pipeline.data.augment import ForegroundOnlyd, RandLowResolutiond, RandPerChanneld
from pipeline.data.transforms import DEFAULT_AUGMENT, acquisition_shift, augment_settings, raw_intensity
from pipeline.errors import ConfigError

RAW = ["bias_field", "gamma"]  # on raw intensities, before normalisation
INTENSITY = ["low_resolution", "contrast", "brightness", "shift", "blur", "noise", *RAW]


def _patch(dims: int = 3, raw: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    size = (3, 24, 20, 16) if dims == 3 else (3, 24, 20)
    image = torch.rand(size, generator=g) * 900 + 100 if raw else torch.randn(size, generator=g)
    image[:, :4] = 0  # background: 0 as stored (raw) or as the normalisation leaves it
    return {"image": image}


def _chain(name: str, prob: float):
    from monai.transforms import Compose

    settings = augment_settings({name: {"prob": prob}})
    return Compose(raw_intensity(settings) if name in RAW else acquisition_shift(settings))


@pytest.mark.parametrize("name", INTENSITY)
@pytest.mark.parametrize("dims", [2, 3])
def test_each_keeps_the_shape_and_probability_0_is_the_identity(name, dims):
    data = _patch(dims, raw=name in RAW)
    on = _chain(name, 1.0).set_random_state(3)(dict(data))["image"]
    assert tuple(on.shape) == tuple(data["image"].shape) and torch.isfinite(torch.as_tensor(on)).all()
    assert not torch.allclose(torch.as_tensor(on), data["image"])
    off = _chain(name, 0.0)
    assert len(off.transforms) == 0 or torch.equal(torch.as_tensor(off(dict(data))["image"]), data["image"])


@pytest.mark.parametrize("name", INTENSITY)
def test_background_stays_exactly_zero(name):
    out = torch.as_tensor(_chain(name, 1.0).set_random_state(5)(_patch(raw=name in RAW))["image"])
    assert torch.count_nonzero(out[:, :3]) == 0  # a voxel from the head's edge may blur into row 3, no further


def test_low_resolution_coarsens_only_the_chosen_axis():
    x = torch.randn(1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    out = RandLowResolutiond.coarsen(x, [4.0, 1.0, 1.0])
    # averaged along axis 0 over blocks of 4: neighbours along it become alike, the others stay independent
    along = (out[0, 1:] - out[0, :-1]).abs().mean()
    across = (out[0, :, 1:] - out[0, :, :-1]).abs().mean()
    assert along < 0.5 * across
    assert torch.allclose(out[0].mean(0), x[0].mean(0), atol=0.1)


def test_low_resolution_draws_one_axis_most_often():
    t = RandLowResolutiond("image", prob=1.0, max_factor=4.0)
    t.set_random_state(0)
    counts = [sum(f > 1 for f in t._draw(3)) for _ in range(300)]
    assert np.mean(np.array(counts) == 1) > 0.45 and max(counts) == 3


def test_low_resolution_coarsens_dwi_and_adc_alike_and_flair_on_its_own():
    """DWI and the ADC computed from it share one acquisition grid: a simulated thick slice must coarsen both
    alike, while FLAIR, acquired on its own, draws its own axes and factors."""
    x = torch.randn(1, 24, 24, 24, generator=torch.Generator().manual_seed(2)).repeat(3, 1, 1, 1)
    t = RandLowResolutiond("image", prob=1.0, channel_groups=[[0, 1], [2]])
    t.set_random_state(0)
    flair_differs = 0
    for _ in range(10):
        out = t({"image": x.clone()})["image"]
        assert torch.equal(out[0], out[1])
        assert not torch.equal(out[0], x[0])
        flair_differs += not torch.allclose(out[2], out[0])
    assert flair_differs >= 5
    assert t.groups(2) == [[0, 1]] and t.groups(4) == [[0, 1], [2], [3]]
    assert RandLowResolutiond("image", channel_wise=True).groups(3) == [[0], [1], [2]]


def test_per_channel_draws_differ_between_channels():
    from monai.transforms import RandAdjustContrast

    x = torch.rand(3, 16, 16, 16) + 0.1
    t = RandPerChanneld("image", RandAdjustContrast(prob=1.0, gamma=(0.5, 2.0)))
    t.set_random_state(0)
    out = t({"image": x.clone()})["image"]
    gammas = [float(torch.log(out[c]).flatten()[:100].div(torch.log(x[c]).flatten()[:100]).median()) for c in range(3)]
    assert max(gammas) - min(gammas) > 0.1


def test_foreground_only_restores_the_background():
    from monai.transforms import RandGaussianNoised

    data = _patch()
    out = ForegroundOnlyd("image", [RandGaussianNoised("image", prob=1.0, std=1.0)]).set_random_state(0)(data)
    assert torch.count_nonzero(torch.as_tensor(out["image"])[:, :4]) == 0
    assert not torch.equal(torch.as_tensor(out["image"])[:, 4:], data["image"][:, 4:])


def test_a_bias_field_brightens_tissue_before_normalisation():
    """Multiplying raw intensities and normalising with the volume's statistics shifts a region's z-scores, as a
    coil's field does; the same field applied after normalisation would only rescale them about 0."""
    from pipeline.data.normalise import apply_stats, channel_stats

    raw = 500 + 100 * torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    head = np.ones((16, 16, 16), bool)
    stats = channel_stats(raw, head)
    field = torch.linspace(1.0, 1.3, 16).view(1, 16, 1, 1)
    shifted = apply_stats(raw * field, head, stats)
    assert float(shifted[0, -1].mean()) > float(shifted[0, 0].mean()) + 1.0  # 1.5 z-units brighter


def test_unknown_augmentation_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match="unknown smooth; known: elastic"):
        augment_settings({"smooth": {"prob": 0.1}})
    assert set(augment_settings({})) == set(DEFAULT_AUGMENT)


def test_channel_dropout_blanks_only_the_listed_channel_and_probability_0_is_the_identity():
    from pipeline.data.augment import RandChannelDropoutd

    data = _patch()
    out = torch.as_tensor(RandChannelDropoutd("image", prob=1.0, channels=[2]).set_random_state(0)(dict(data))["image"])
    assert tuple(out.shape) == tuple(data["image"].shape)
    assert torch.count_nonzero(out[2]) == 0 and torch.equal(out[:2], data["image"][:2])  # DWI and ADC untouched
    off = RandChannelDropoutd("image", prob=0.0, channels=[2])(dict(data))["image"]
    assert torch.equal(torch.as_tensor(off), data["image"])
    t = RandChannelDropoutd("image", prob=0.3, channels=[2]).set_random_state(1)
    blanked = sum(int(torch.count_nonzero(torch.as_tensor(t(dict(data))["image"])[2]) == 0) for _ in range(400))
    assert 90 < blanked < 150  # about 30% of patches


def test_channel_dropout_draws_a_repeated_channel_more_often_and_never_blanks_a_single_channel():
    from pipeline.data.augment import RandChannelDropoutd

    data = _patch()
    t = RandChannelDropoutd("image", prob=1.0, channels=[0, 2, 2, 2]).set_random_state(2)
    outs = [torch.as_tensor(t(dict(data))["image"]) for _ in range(400)]
    dwi, flair = (sum(int(torch.count_nonzero(o[c]) == 0) for o in outs) for c in (0, 2))
    assert dwi + flair == 400 and 70 < dwi < 130  # one channel a patch, DWI a quarter of the time
    one = {"image": data["image"][:1]}  # a T1w-only model: its one channel stays
    t1 = RandChannelDropoutd("image", prob=1.0, channels=[0, 2]).set_random_state(0)
    assert all(torch.equal(torch.as_tensor(t1(dict(one))["image"]), one["image"]) for _ in range(20))
