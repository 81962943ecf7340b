"""The paper's U-Net: size arithmetic, overlap-tile inference, the boundary weight map and its loss, and the
weight penalties."""

import pytest
import torch

from pipeline.models.classic_unet import ClassicUNet
from pipeline.models.losses import build_loss
from pipeline.models.networks import build_network


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
    from pipeline.training.module import LesionSegmentation

    net = build_network("classic_unet", 3, 1, "softmax", channels=[2, 4], norm="batch")
    module = LesionSegmentation(net, build_loss("dice", "softmax"), regularization={"l1": 0.1, "l2": 0.01})
    convs = [p for p in net.parameters() if p.dim() > 2]
    expected = 0.1 * sum(p.abs().sum() for p in convs) + 0.01 * sum(p.pow(2).sum() for p in convs)
    assert torch.allclose(module.weight_penalty(), expected)
    assert len(convs) < len(list(net.parameters()))  # biases and norm parameters are left out
