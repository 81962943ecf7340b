"""Overlap-tile inference (Ronneberger et al. 2015) for networks whose output is smaller than their input.

The volume is cut into tiles whose *outputs* cover it exactly, without overlap; each tile's input is the
output region grown by the network's margin, taken from the volume mirrored at its borders. The result
has the input's grid. For a padded network (output size = input size) the margin is zero and this is
ordinary non-overlapping sliding-window inference.

Example:
    >>> inferer = OverlapTileInferer(3, [84, 84, 84], net.output_size)  # doctest: +SKIP
    >>> logits = inferer(volume, net)   # same spatial size as volume
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["OverlapTileInferer", "mirror_pad"]


def mirror_pad(x: torch.Tensor, before: Sequence[int], after: Sequence[int]) -> torch.Tensor:
    """Mirror (B, C, ...) at its spatial borders by any amount (numpy's ``reflect``, repeated as needed)."""
    width = [(0, 0), (0, 0)] + [(int(b), int(a)) for b, a in zip(before, after, strict=True)]
    mode = "reflect" if min(x.shape[2:]) > 1 else "symmetric"  # reflect needs two voxels along each axis
    return torch.from_numpy(np.pad(x.detach().cpu().numpy(), width, mode=mode)).to(x.device)


class OverlapTileInferer:
    """Tiles of ``tile_size`` (the network input) whose outputs (``output_size(tile_size)``) tile the volume.

    Args:
        spatial_dims: 3 for a 3D net on (B, C, X, Y, Z); 2 for a 2D net, run on every axial slice
            (last axis) of a 3D volume.
        tile_size: network input size (``spatial_dims`` values).
        output_size: maps an input size to the network's output size (identity for padded nets).
        batch_size: tiles per forward pass.
    """

    def __init__(self, spatial_dims: int, tile_size: Sequence[int], output_size: Callable | None = None,
                 batch_size: int = 4):
        self.spatial_dims, self.tile = spatial_dims, [int(s) for s in tile_size]
        self.out = list(output_size(self.tile)) if output_size else list(self.tile)
        self.batch_size = batch_size

    def __call__(self, inputs: torch.Tensor, network: Callable) -> torch.Tensor:
        if self.spatial_dims == 2 and inputs.dim() == 5:
            return torch.stack([self._tiles(inputs[..., z], network) for z in range(inputs.shape[-1])], dim=-1)
        return self._tiles(inputs, network)

    def _tiles(self, x: torch.Tensor, network: Callable) -> torch.Tensor:
        size = list(x.shape[2:])
        counts = [math.ceil(s / o) for s, o in zip(size, self.out, strict=True)]
        lo = [(t - o) // 2 for t, o in zip(self.tile, self.out, strict=True)]
        hi = [t - o - b + c * o - s for t, o, b, c, s in zip(self.tile, self.out, lo, counts, size, strict=True)]
        padded = mirror_pad(x, lo, hi)
        origins = list(itertools.product(*[range(0, c * o, o) for c, o in zip(counts, self.out, strict=True)]))
        result = None
        for i in range(0, len(origins), self.batch_size):
            batch = origins[i:i + self.batch_size]
            tiles = torch.cat([padded[_window(o, self.tile)] for o in batch])
            logits = network(tiles)
            if list(logits.shape[2:]) != self.out:
                raise ValueError(f"the network gives {list(logits.shape[2:])} for tiles of {self.tile}, "
                                 f"not the expected {self.out}")
            if result is None:
                covered = [c * o for c, o in zip(counts, self.out, strict=True)]
                result = torch.zeros((x.shape[0], logits.shape[1], *covered), dtype=logits.dtype, device=x.device)
            for j, o in enumerate(batch):
                n = x.shape[0]
                result[_window(o, self.out)] = logits[j * n:(j + 1) * n].to(x.device)
        return result[_window([0] * len(size), size)]


def _window(origin: Sequence[int], size: Sequence[int]) -> tuple:
    """Index of the (B, C, ...) region of ``size`` at ``origin``."""
    return (slice(None), slice(None), *[slice(a, a + int(s)) for a, s in zip(origin, size, strict=True)])
