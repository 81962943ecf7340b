"""Anti-aliasing before down-sampling: MONAI's Gaussian, only along the axes that get coarser."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import GaussianSmooth

from pipeline.data.antialias import AntiAliasd, antialias_sigma, smooth


@pytest.mark.parametrize("sigma", [[0.5, 0.5, 0.5], [0.6, 0.6, 0.0], [1.2, 0.3, 2.0]])
def test_smooth_is_monai_gaussian_smooth(sigma):
    image = torch.from_numpy(np.random.default_rng(0).random((2, 23, 31, 17), dtype=np.float32))
    np.testing.assert_allclose(smooth(image, sigma).numpy(), GaussianSmooth(sigma=sigma)(image).numpy(), atol=1e-6)


def test_only_axes_that_get_coarser_are_smoothed():
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    assert antialias_sigma(affine, [2.0, 2.0, 2.0]) == [0.5, 0.5, 0.0]
    speck = torch.zeros((1, 15, 15, 7))
    speck[0, 7, 7, 3] = 1.0
    out = AntiAliasd("image", pixdim=[2.0, 2.0, 2.0])({"image": MetaTensor(speck, affine=torch.as_tensor(affine))})
    image = out["image"]
    assert isinstance(image, MetaTensor) and np.allclose(image.affine.numpy(), affine)
    assert image.shape == speck.shape
    assert 0 < float(image[0, 7, 7, 3]) < 0.5  # spread in-plane
    assert float(image[0, 6, 7, 3]) > 0 and float(image[0, 7, 6, 3]) > 0
    assert float(image[0, 7, 7, 2]) == 0 and float(image[0, 7, 7, 4]) == 0  # not across the 4 mm slices
    np.testing.assert_allclose(float(image.sum()), 1.0, atol=1e-5)  # the speck's signal is kept, spread


def test_a_grid_already_coarse_enough_is_left_as_it_is():
    image = MetaTensor(torch.rand((1, 8, 8, 8)), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = AntiAliasd("image", pixdim=[2.0, 2.0, 2.0])({"image": image})["image"]
    assert torch.equal(out.as_tensor(), image.as_tensor())
