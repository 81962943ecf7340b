"""The paper's U-Net: size arithmetic, overlap-tile inference, the boundary weight map and its loss, and the
weight penalties."""

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from pipeline.data.weight_map import BoundaryWeightMapd, boundary_weight_map
from pipeline.models.classic_unet import ClassicUNet
from pipeline.models.losses import build_loss
from pipeline.models.networks import build_network
from pipeline.overlap_tile import OverlapTileInferer, mirror_pad


def test_paper_2d_configuration_maps_572_to_388():
    net = ClassicUNet(2, 1, 2, channels=[4, 8, 16, 32, 64])  # the paper's depth; narrow, to run quickly
    assert net.output_size([572, 572]) == [388, 388]
    assert net.input_size([388, 388]) == [572, 572]
    assert 572 in net.valid_input_sizes(560, 580) and 570 not in net.valid_input_sizes(560, 580)
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)
    with pytest.raises(ValueError, match="not a valid classic_unet input size"):
        net.output_size([570, 572])


def test_3d_sizes_match_hand_arithmetic_for_every_norm():
    # depth 2: 84 -conv-> 80 -pool-> 40 -conv-> 36 -pool-> 18 -conv-> 14 -up-> 28 -conv-> 24 -up-> 48 -conv-> 44
    for norm in ("none", "batch", "layer", "instance", "group"):
        net = build_network("classic_unet", 3, 2, "softmax", channels=[4, 8, 16], norm=norm, groups=2,
                            num_res_units=1).eval()
        assert net.output_size([84, 60, 68]) == [44, 20, 28]
        with torch.no_grad():
            assert net(torch.zeros(1, 2, 84, 60, 68)).shape == (1, 2, 44, 20, 28)


@pytest.mark.parametrize("dims", [2, 3])
def test_overlap_tile_equals_one_pass_over_the_mirrored_volume(dims):
    torch.manual_seed(0)
    net = ClassicUNet(dims, 2, 2, channels=[4, 8, 16], norm="batch").eval()
    size = [37, 45, 29][:dims]
    x = torch.randn(1, 2, *size)
    tile = [60] * dims
    with torch.no_grad():
        tiled = OverlapTileInferer(dims, tile, net.output_size, batch_size=3)(x, net)
        margin = (tile[0] - net.output_size(tile)[0]) // 2
        whole_in = [min(v for v in net.valid_input_sizes(s + 2 * margin, s + 2 * margin + 40)) for s in size]
        whole = net(mirror_pad(x, [margin] * dims, [w - s - margin for w, s in zip(whole_in, size, strict=True)]))
    assert tiled.shape == (1, 2, *size)
    assert torch.allclose(tiled, whole[(..., *[slice(0, s) for s in size])], atol=1e-5)


def test_overlap_tile_reduces_to_sliding_windows_for_a_padded_net():
    torch.manual_seed(0)
    net = build_network("unet", 3, 1, "softmax", channels=[4, 8, 16], strides=[2, 2], norm="batch").eval()
    x = torch.randn(1, 1, 48, 32, 16)  # whole windows: MONAI shifts a last partial window, tiles mirror it
    with torch.no_grad():
        tiled = OverlapTileInferer(3, [16, 16, 16])(x, net)
        windows = SlidingWindowInferer([16, 16, 16], overlap=0.0, mode="constant", padding_mode="reflect")(x, net)
    assert torch.allclose(tiled, windows, atol=1e-5)


def test_weight_map_between_two_blobs_in_millimetres():
    label = np.zeros((30, 10, 10), np.uint8)
    label[5:10, 3:7, 3:7] = 1   # blob A ends at x = 9
    label[16:21, 3:7, 3:7] = 1  # blob B starts at x = 16
    spacing, w0, sigma = (2.0, 1.0, 1.0), 10.0, 5.0
    w = boundary_weight_map(label, spacing, w0=w0, sigma_mm=sigma, class_balance=True)
    n, n_fg = label.size, label.sum()
    w_bg, w_fg = n / (2 * (n - n_fg)), n / (2 * n_fg)
    # x = 12 on the blobs' axis: 3 voxels (6 mm) from A, 4 voxels (8 mm) from B
    assert w[12, 5, 5] == pytest.approx(w_bg + w0 * np.exp(-((6.0 + 8.0) ** 2) / (2 * sigma**2)), rel=1e-5)
    # inside A at x = 9 (its edge): d1 = 0, d2 = 7 voxels = 14 mm to B
    assert w[9, 5, 5] == pytest.approx(w_fg + w0 * np.exp(-(14.0**2) / (2 * sigma**2)), rel=1e-5)
    # far from both (18.5 and 40.2 mm), only the class weight is left
    assert w[29, 0, 0] == pytest.approx(w_bg, abs=1e-6)
    one_blob = label.copy()
    one_blob[16:] = 0
    plain = boundary_weight_map(one_blob, spacing, w0=w0, sigma_mm=sigma, class_balance=False)
    assert np.all(plain == 1.0)  # one lesion: no gap to stress, no class balancing asked


def test_weight_map_transform_reads_the_spacing_from_the_affine():
    from monai.data import MetaTensor

    label = np.zeros((1, 30, 10, 10), np.float32)
    label[0, 5:10, 3:7, 3:7] = label[0, 16:21, 3:7, 3:7] = 1
    affine = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0]))
    out = BoundaryWeightMapd("label", w0=10, sigma_mm=5, class_balance=False)({"label": MetaTensor(label, affine)})
    assert out["weight"].shape == (1, 30, 10, 10)
    assert float(out["weight"][0, 12, 5, 5]) == pytest.approx(1 + 10 * np.exp(-(14.0**2) / 50), rel=1e-5)


def test_weighted_cross_entropy_follows_the_weights_and_needs_them():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 8, 8, 8), (torch.rand(2, 1, 8, 8, 8) > 0.7).float()
    wce = build_loss("wce", "softmax")
    ones = torch.ones(2, 1, 8, 8, 8)
    plain = torch.nn.functional.cross_entropy(logits, target[:, 0].long())
    assert torch.allclose(wce(logits, target, ones), plain, atol=1e-6)
    assert torch.allclose(wce(logits, target, 3 * ones), 3 * plain, atol=1e-6)
    with_dice = build_loss("dice_wce", "softmax")(logits, target, ones)
    assert with_dice > plain  # the Dice term is added
    with pytest.raises(ValueError, match="weight_map"):
        wce(logits, target)


def test_l1_and_l2_penalties_sum_the_convolution_weights():
    from pipeline.training import LesionSegmentation

    net = build_network("classic_unet", 3, 1, "softmax", channels=[2, 4], norm="batch")
    module = LesionSegmentation(net, build_loss("dice", "softmax"), regularization={"l1": 0.1, "l2": 0.01})
    convs = [p for p in net.parameters() if p.dim() > 2]
    expected = 0.1 * sum(p.abs().sum() for p in convs) + 0.01 * sum(p.pow(2).sum() for p in convs)
    assert torch.allclose(module.weight_penalty(), expected)
    assert len(convs) < len(list(net.parameters()))  # biases and norm parameters are left out
