import pytest
import torch

from pipeline.models.losses import LOSSES, DeepSupervisionLoss, build_loss
from pipeline.models.networks import NORMS, build_network


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dims", [2, 3])
def test_unet_every_norm_2d_and_3d(norm, dims):
    net = build_network("unet", spatial_dims=dims, in_channels=3, head="softmax", channels=[8, 16, 32],
                        strides=[2, 2], norm=norm, dropout=0.1)
    x = torch.randn(2, 3, *([16] * dims))
    assert net(x).shape == (2, 2, *([16] * dims))


def test_sigmoid_head_has_one_channel_and_dynunet_deep_supervision_trains():
    net = build_network("dynunet", spatial_dims=3, in_channels=1, head="sigmoid", channels=[8, 16, 32],
                        strides=[2, 2], deep_supervision=True, deep_supr_num=1)
    net.train()
    out = net(torch.randn(2, 1, 16, 16, 16))
    assert out.shape == (2, 2, 1, 16, 16, 16)  # (batch, heads, channels, ...)
    loss = DeepSupervisionLoss(build_loss("dice_ce", head="sigmoid"))(out, torch.ones(2, 1, 16, 16, 16))
    loss.backward()
    assert net.eval()(torch.randn(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("head, channels", [("softmax", 2), ("sigmoid", 1)])
def test_losses_are_low_for_a_confident_right_answer(name, head, channels):
    label = torch.zeros(1, 1, 8, 8, 8)
    label[..., 2:6, 2:6, 2:6] = 1
    right = torch.cat([-10 * (2 * label - 1), 10 * (2 * label - 1)], 1) if channels == 2 else 10 * (2 * label - 1)
    loss = build_loss(name, head)
    weight = (torch.ones_like(label),) if getattr(loss, "uses_weight_map", False) else ()  # wce, dice_wce
    assert float(loss(right, label, *weight)) < 0.05 < float(loss(-right, label, *weight))


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="norm must be one of"):
        build_network("unet", norm="weird")
    with pytest.raises(ValueError, match="loss must be one of"):
        build_loss("mse")
