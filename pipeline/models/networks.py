"""Network factory: a configurable 2D/3D MONAI U-Net, DynUNet with deep supervision, or the paper's
valid-convolution U-Net (``classic_unet``, :mod:`pipeline.models.classic_unet`).

Example:
    >>> net = build_network("unet", spatial_dims=3, in_channels=3, head="softmax",
    ...                     channels=[16, 32, 64, 128], strides=[2, 2, 2], norm="instance")
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Norm
from monai.networks.nets import DynUNet, UNet

__all__ = ["NORMS", "HEADS", "build_network", "build_ensemble", "Ensemble", "out_channels", "norm_layer",
           "network_weights"]

NORMS = ("batch", "instance", "group", "layer", "none")
HEADS = {"softmax": 2, "sigmoid": 1}


class FlexibleGroupNorm(torch.nn.GroupNorm):
    """GroupNorm that uses gcd(groups, channels) groups, so one ``groups`` value fits every layer
    (MONAI's U-Net also normalises its 1- or 2-channel output layer)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(math.gcd(num_groups, num_channels), num_channels, eps, affine)


if "FLEXGROUP" not in Norm.names:
    Norm.add_factory_callable("flexgroup", lambda dim: FlexibleGroupNorm)


def out_channels(head: str) -> int:
    """2 channels (background, lesion) for a softmax head, 1 for a sigmoid head."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {sorted(HEADS)}, not {head!r}")
    return HEADS[head]


def norm_layer(norm: str, groups: int = 8):
    """MONAI norm spec. 'layer' is GroupNorm with one group: LayerNorm over (C, *spatial) per sample,
    which, unlike nn.LayerNorm, does not need the feature-map size up front."""
    specs = {"batch": "batch", "instance": ("instance", {"affine": True}),
             "group": ("flexgroup", {"num_groups": groups}), "layer": ("group", {"num_groups": 1}), "none": None}
    if norm not in specs:
        raise ValueError(f"norm must be one of {list(NORMS)}, not {norm!r}")
    return specs[norm]


def build_network(name: str = "unet", spatial_dims: int = 3, in_channels: int = 3, head: str = "softmax",
                  channels: Sequence[int] = (16, 32, 64, 128), strides: Sequence[int] = (2, 2, 2),
                  num_res_units: int = 2, norm: str = "instance", groups: int = 8, dropout: float = 0.0,
                  deep_supervision: bool = False, deep_supr_num: int = 2,
                  kernel_sizes: Sequence[Sequence[int]] | None = None) -> torch.nn.Module:
    """Build ``unet`` (monai.networks.nets.UNet), ``dynunet`` (monai.networks.nets.DynUNet) or
    ``classic_unet`` (valid convolutions; ``channels`` are its widths per level, its pooling is always 2x2,
    ``num_res_units`` > 0 adds residual connections).

    For ``dynunet`` a stride may be per axis (``[2, 2, 1]``: no pooling across thick slices) and
    ``kernel_sizes`` gives each level's kernel per axis (default 3 everywhere), as a plan writes them."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
    if len(strides) != len(channels) - 1 and name != "classic_unet":
        raise ValueError(f"need one stride per down-sampling: {len(channels)} channels, {len(strides)} strides")
    n_out = out_channels(head)
    config = dict(name=name, spatial_dims=spatial_dims, in_channels=in_channels, head=head, channels=list(channels),
                  strides=[list(v) if isinstance(v, Sequence) else v for v in strides], num_res_units=num_res_units,
                  norm=norm, groups=groups, dropout=dropout, deep_supervision=deep_supervision,
                  deep_supr_num=deep_supr_num,
                  kernel_sizes=[list(k) for k in kernel_sizes] if kernel_sizes else None)
    net = _build(config, n_out)
    net.build_config = config  # saved with checkpoints, so inference can rebuild the net
    return net


def _build(c: dict, n_out: int) -> torch.nn.Module:
    name, spatial_dims, in_channels, channels, strides = (c["name"], c["spatial_dims"], c["in_channels"],
                                                          c["channels"], c["strides"])
    num_res_units, norm, groups, dropout = c["num_res_units"], c["norm"], c["groups"], c["dropout"]
    if name == "classic_unet":
        from pipeline.models.classic_unet import ClassicUNet

        return ClassicUNet(spatial_dims, in_channels, n_out, channels, norm, groups, num_res_units > 0, dropout)
    if norm == "none" and name == "dynunet":
        raise ValueError("dynunet needs a normalisation (batch, instance, group or layer)")
    if name == "unet":
        return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=n_out, channels=list(channels),
                    strides=list(strides), num_res_units=num_res_units, norm=norm_layer(norm, groups),
                    dropout=dropout)
    if name == "dynunet":
        kernels = c.get("kernel_sizes") or [[3] * spatial_dims] * len(channels)
        per_axis = [list(s) if isinstance(s, Sequence) else [s] * spatial_dims for s in strides]
        return DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=n_out,
                       kernel_size=kernels, strides=[[1] * spatial_dims] + per_axis,
                       upsample_kernel_size=per_axis, filters=list(channels),
                       norm_name=norm_layer(norm, groups), dropout=dropout or None, res_block=num_res_units > 0,
                       deep_supervision=c["deep_supervision"], deep_supr_num=c["deep_supr_num"])
    raise ValueError(f"network name must be 'unet', 'dynunet' or 'classic_unet', not {name!r}")


class Ensemble(torch.nn.Module):
    """Averages the members' probabilities and returns them as logits of the same head (log p for softmax,
    logit p for sigmoid), so inference treats a fold ensemble as one network (nnU-Net averages softmax too)."""

    def __init__(self, members: list[torch.nn.Module], head: str = "softmax"):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.softmax = head == "softmax"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(1, device=x.device)
        for member in self.members:
            logits = member(x)
            total = total + (torch.softmax(logits, 1) if self.softmax else torch.sigmoid(logits))
        p = (total / len(self.members)).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) if self.softmax else torch.log(p) - torch.log1p(-p)


def build_ensemble(members: int = 2, **network_kwargs) -> Ensemble:
    """``members`` networks of one architecture (the kwargs of :func:`build_network`), averaged."""
    net = Ensemble([build_network(**network_kwargs) for _ in range(members)], network_kwargs.get("head", "softmax"))
    net.build_config = dict(members=members, **net.members[0].build_config)
    return net


def network_weights(lightning_state_dict: dict, prefix: str = "") -> dict:
    """The network's tensors from a LightningModule state dict (``network.*``), renamed with ``prefix``."""
    return {prefix + k[len("network."):]: v for k, v in lightning_state_dict.items() if k.startswith("network.")}
