"""The paper's U-Net: size arithmetic, overlap-tile inference, the boundary weight map and its loss, and the
weight penalties."""

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from pipeline.inference.overlap_tile import OverlapTileInferer, mirror_pad
from pipeline.models.classic_unet import ClassicUNet
from pipeline.models.networks import build_network


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


