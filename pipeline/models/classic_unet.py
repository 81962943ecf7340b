"""The U-Net as Ronneberger et al. (2015) built it, in 2D or 3D: unpadded 3x3 convolutions, 2x2 max pooling,
2x2 transposed-convolution upsampling, centre-cropped skip connections and a 1x1 output convolution.

The output is smaller than the input (572 -> 388 for the paper's 2D net); :meth:`ClassicUNet.output_size`
and :meth:`ClassicUNet.input_size` convert between the two, and :meth:`ClassicUNet.valid_input_sizes`
lists the input sizes whose every pooled feature map has an even size.

Example:
    >>> net = ClassicUNet(2, 1, 2, channels=[64, 128, 256, 512, 1024], norm="none")
    >>> net.output_size([572, 572])
    [388, 388]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Act, Conv, Norm, Pool

__all__ = ["ClassicUNet", "centre_crop"]


def centre_crop(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """The centre ``size`` of a (B, C, ...) tensor (where MONAI's ``CenterSpatialCrop`` puts it);
    TorchScript-compatible, so bundles can export the net."""
    for d in range(len(size)):
        x = x.narrow(d + 2, x.shape[d + 2] // 2 - int(size[d]) // 2, int(size[d]))
    return x


def _norm(name: str, dims: int, channels: int, groups: int) -> torch.nn.Module:
    """``none`` | ``batch`` | ``instance`` | ``group`` | ``layer`` (GroupNorm with one group)."""
    import math

    if name == "none":
        return torch.nn.Identity()
    if name == "batch":
        return Norm[Norm.BATCH, dims](channels)
    if name == "instance":
        return Norm[Norm.INSTANCE, dims](channels, affine=True)
    if name in ("group", "layer"):
        return torch.nn.GroupNorm(1 if name == "layer" else math.gcd(groups, channels), channels)
    raise ValueError(f"norm must be none, batch, instance, group or layer, not {name!r}")


class DoubleConv(torch.nn.Module):
    """Two unpadded 3x3 convolutions, each followed by normalisation and ReLU; with ``residual``, the input
    (1x1-projected, centre-cropped) is added to the output."""

    def __init__(self, dims: int, cin: int, cout: int, norm: str, groups: int, residual: bool, dropout: float):
        super().__init__()
        conv = Conv[Conv.CONV, dims]
        layers = []
        for i, c in enumerate((cin, cout)):
            layers += [conv(c if i == 0 else cout, cout, kernel_size=3, padding=0), _norm(norm, dims, cout, groups),
                       Act[Act.RELU](inplace=True)]
        if dropout:
            layers.append(torch.nn.Dropout(dropout))
        self.body = torch.nn.Sequential(*layers)
        self.skip = conv(cin, cout, kernel_size=1) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.skip is not None:
            y = y + centre_crop(self.skip(x), y.shape[2:])
        return y


class ClassicUNet(torch.nn.Module):
    """Valid-convolution U-Net; ``channels`` are the widths per level (depth = ``len(channels) - 1``)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (64, 128, 256, 512, 1024), norm: str = "none", groups: int = 8,
                 residual: bool = False, dropout: float = 0.0):
        super().__init__()
        if len(channels) < 2:
            raise ValueError("classic_unet needs at least two levels of channels")
        self.spatial_dims, self.depth = spatial_dims, len(channels) - 1
        d = spatial_dims
        block = lambda cin, cout: DoubleConv(d, cin, cout, norm, groups, residual, dropout)  # noqa: E731
        self.down = torch.nn.ModuleList([block(in_channels, channels[0])]
                                        + [block(channels[i], channels[i + 1]) for i in range(self.depth)])
        self.pool = Pool[Pool.MAX, d](kernel_size=2, stride=2)
        self.up = torch.nn.ModuleList([Conv[Conv.CONVTRANS, d](channels[i + 1], channels[i], kernel_size=2, stride=2)
                                       for i in reversed(range(self.depth))])
        self.decode = torch.nn.ModuleList([block(2 * channels[i], channels[i]) for i in reversed(range(self.depth))])
        self.head = Conv[Conv.CONV, d](channels[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, block in zip(self.up, self.decode):  # noqa: B905 - TorchScript has no zip(strict=)
            x = up(x)
            x = block(torch.cat([centre_crop(skips.pop(), x.shape[2:]), x], dim=1))
        return self.head(x)

    # size arithmetic ---------------------------------------------------------------------------------------
    def _out(self, n: int) -> int | None:
        """Output length for input length ``n``, or None when a pooled map would be odd or empty."""
        for _ in range(self.depth):
            n -= 4
            if n < 2 or n % 2:
                return None
            n //= 2
        n -= 4
        if n < 1:
            return None
        for _ in range(self.depth):
            n = 2 * n - 4
        return n if n > 0 else None

    def output_size(self, input_size: Sequence[int]) -> list[int]:
        """The output's spatial size for an input of ``input_size``; ValueError when that size is not valid."""
        out = [self._out(int(n)) for n in input_size]
        if any(o is None for o in out):
            raise ValueError(f"{list(input_size)} is not a valid classic_unet input size (depth {self.depth}); "
                             f"valid sizes near it: {self.valid_input_sizes(min(input_size), max(input_size) + 16)}")
        return out

    def input_size(self, output_size: Sequence[int]) -> list[int]:
        """The smallest valid input size whose output is at least ``output_size``."""
        sizes = []
        for m in output_size:
            n = 1
            while self._out(n) is None or self._out(n) < int(m):
                n += 1
            sizes.append(n)
        return sizes

    def valid_input_sizes(self, low: int = 1, high: int = 600) -> list[int]:
        """Every valid input length in [low, high]."""
        return [n for n in range(max(1, low), high + 1) if self._out(n) is not None]
