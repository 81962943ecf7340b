"""Random affine and elastic deformation in one resampling, for 2D and 3D patches.

MONAI's ``Rand3DElasticd`` Gaussian-smooths a full-resolution noise field for every patch: 71% of the
training chain's time per patch on 2 cores (``make bench``), and a second resampling when ``RandAffined``
fires too. This transform uses MONAI's own 2D algorithm (``Rand2DElastic``) in both 2D and 3D: random
offsets on a coarse control grid (``RandDeformGrid``), the random affine applied to that small grid
(``RandAffineGrid``), the grid interpolated up to the patch, then one ``Resample`` per key.

Example:
    >>> RandDeformd(["image", "label"], [64, 64, 64], ["bilinear", "nearest"], elastic_prob=0.2,
    ...             affine_prob=0.2, rotate_deg=15, scale=0.1)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.transforms import (
    CenterSpatialCrop,
    MapTransform,
    RandAffineGrid,
    RandDeformGrid,
    RandomizableTransform,
    Resample,
)

__all__ = ["RandDeformd"]


def _linear_weights(n: int, factor: float, size: int) -> torch.Tensor:
    """(size, n) weights of linear interpolation from n control points to the centre ``size`` samples of the
    ``n * factor`` samples ``interpolate(scale_factor=factor, align_corners=False)`` would give."""
    full = int(math.floor(n * factor))
    start = full // 2 - size // 2  # as CenterSpatialCrop
    x = ((torch.arange(start, start + size, dtype=torch.float64) + 0.5) / factor - 0.5).clamp(0, n - 1)
    lo = x.floor().long().clamp(max=n - 2) if n > 1 else torch.zeros(size, dtype=torch.long)
    frac = (x - lo).float()
    w = torch.zeros(size, n)
    w[torch.arange(size), lo] = 1 - frac
    if n > 1:
        w[torch.arange(size), lo + 1] += frac
    return w


def upsample_centre(grid: torch.Tensor, factor: Sequence[float], size: Sequence[int]) -> torch.Tensor:
    """The centre ``size`` of a coarse (C, ...) grid linearly upsampled by ``factor``: one small matrix
    product per axis. Our own because ``torch.nn.functional.interpolate`` computes the whole upsampled grid
    first (0.06 s of the 0.23 s of a 64^3 patch) only for most of it to be cropped away."""
    out = grid
    for axis, (n, f, s) in enumerate(zip(grid.shape[1:], factor, size, strict=True)):
        out = torch.movedim(torch.tensordot(_linear_weights(n, float(f), int(s)), torch.movedim(out, axis + 1, 0),
                                            dims=1), 0, axis + 1)
    return out


class RandDeformd(RandomizableTransform, MapTransform):
    """Elastic (probability ``elastic_prob``) and affine (``affine_prob``) deformation of a region into a
    ``spatial_size`` patch taken from its centre; when neither fires, the centre crop alone.

    Args:
        keys: keys to deform alike; ``mode`` gives each its interpolation (``bilinear`` / ``nearest``).
        spatial_size: the output patch size (2 or 3 values).
        grid_spacing: distance between elastic control points (voxels).
        magnitude_range: range of the control points' random displacement scale (voxels).
        rotate_deg, scale: largest rotation about each axis (degrees) and relative scaling.
    """

    def __init__(self, keys, spatial_size: Sequence[int], mode: Sequence[str], elastic_prob: float = 0.0,
                 grid_spacing: float = 16, magnitude_range: Sequence[float] = (1.0, 2.0), affine_prob: float = 0.0,
                 rotate_deg: float = 15.0, scale: float = 0.1, padding_mode: str = "zeros"):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.spatial_size = [int(s) for s in spatial_size]
        dims = len(self.spatial_size)
        self.mode, self.padding_mode = list(mode), padding_mode
        self.elastic_prob, self.affine_prob = elastic_prob, affine_prob
        self.deform_grid = RandDeformGrid(spacing=[grid_spacing] * dims, magnitude_range=magnitude_range)
        rot = math.radians(rotate_deg)
        self.affine_grid = RandAffineGrid(rotate_range=[rot] * (3 if dims == 3 else 1), scale_range=[scale] * dims)
        self.resampler = Resample()
        self._elastic = self._affine = False

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.deform_grid.set_random_state(seed, state)
        self.affine_grid.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        self._elastic = self.R.rand() < self.elastic_prob
        self._affine = self.R.rand() < self.affine_prob

    def _grid(self) -> torch.Tensor:
        size = self.spatial_size
        if not self._elastic:
            return self.affine_grid(spatial_size=size)
        grid = self.deform_grid(spatial_size=size)  # coarse control points, displaced
        if self._affine:
            grid = self.affine_grid(grid=grid)
        return upsample_centre(torch.as_tensor(grid, dtype=torch.float32), self.deform_grid.spacing, size)

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if not (self._elastic or self._affine):
            crop = CenterSpatialCrop(roi_size=self.spatial_size)
            for key in self.key_iterator(d):
                d[key] = crop(d[key])
            return d
        grid = self._grid()
        # one resampling per interpolation mode, the keys' channels stacked (the label and the head mask share
        # one): MONAI's Resample readies the grid in float64 on every call, which was half of a patch's
        # augmentation time; channels are sampled independently, so the values are the same
        by_mode: dict[str, list] = {}
        for key, mode in zip(self.key_iterator(d), self.mode, strict=False):
            by_mode.setdefault(mode, []).append(key)
        for mode, keys in by_mode.items():
            sizes = [d[k].shape[0] for k in keys]
            stacked = torch.cat([torch.as_tensor(d[k], dtype=torch.float32) for k in keys]) if len(keys) > 1 \
                else d[keys[0]]
            out = self.resampler(stacked, grid, mode=mode, padding_mode=self.padding_mode)
            for key, part in zip(keys, torch.split(out, sizes), strict=True):
                d[key] = part
        return d

