"""Put a channel's zero back where there is no signal, when it is stored with an offset.

A magnitude image (DWI, FLAIR, T1w) and an ADC map hold no negative values, so the normalisation scales them as
ratios (``value / median - 1``: a lesion twice as bright reads 1). A file written by a tool that z-scores or
subtracts an offset breaks that: at -5000 the ratios shrink ninefold and the shipped model found no lesion at
all (Dice 0.84 -> 0.0 on a test case). Such a channel is shifted so that its air (the scanner's zero) is 0
again; a file without offset is left as it is, so models trained before this step see the same input.

* The first channel (the reference grid, which the head mask is found on) is shifted as loaded, before any
  interpolation blends a constant offset with zero padding, when its 0.5th percentile is negative: magnitude
  images are never negative, and the slightly negative air an interpolating tool leaves moves them that little.
* The others are shifted after the head is found: by the low end of their air when its median is clearly
  negative (a fitted ADC map's air holds noise as large as tissue values, with a median near 0: no offset), or,
  with no air (skull-stripped), by the head's 0.5th percentile when that is negative: the best guess for a file
  z-scored inside the brain, whose true zero is lost.

Exact zeros stay zero (no data: outside a channel's own field of view, or a skull-stripped background), and so
do the values a shift brings within ``SNAP`` of 0 (a constant offset's background, blended by interpolation).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform

__all__ = ["zero_level", "SignalZerod", "MAX_STAT_VOXELS"]
PERCENTILE = 0.5
MIN_AIR = 1000  # voxels outside the head for its air to tell the zero
AIR_MARGIN = 0.05
# percentiles and moments from an even subsample: the same to 3 decimals, 8x faster (the normalisation's too)
MAX_STAT_VOXELS = 200_000
SNAP = 1e-4  # shifted values this close to 0 (of the channel's top) are 0: no data


def _percentile(values: torch.Tensor, q: float) -> float:
    step = max(1, values.numel() // MAX_STAT_VOXELS)
    return float(np.percentile(values[::step].double().numpy(), q))


def zero_level(channel: torch.Tensor, head: torch.Tensor | None = None) -> float:
    """The value that stands for no signal in ``channel`` (0 unless it is stored with an offset).

    Without ``head``: the 0.5th percentile of its non-zero values where that is below 0, else 0. With it: the
    lowest of 0, the head's 0.5th percentile and, where the median of the channel's air (its non-zero values
    outside the head, where it has at least ``MIN_AIR``) lies below 0 by more than ``AIR_MARGIN`` of the head's
    range above it, the air's 0.5th percentile (a fitted ADC's noisy air has a median near 0, a magnitude
    image's a small positive one: neither is shifted).
    """
    if float(channel.min()) >= 0:  # every scanner's magnitude image and ADC map: nothing to look for
        return 0.0
    support = channel != 0
    values = channel[support & head] if head is not None else channel[support]
    if values.numel() == 0:
        return 0.0
    level = min(_percentile(values, PERCENTILE), 0.0)
    air = channel[support & ~head] if head is not None else values[:0]
    if air.numel() >= MIN_AIR:
        median = _percentile(air, 50.0)
        if median < -AIR_MARGIN * (_percentile(values, 100 - PERCENTILE) - median):
            level = min(level, _percentile(air, PERCENTILE))  # below the noise floor a magnitude's air has
    return level


class SignalZerod(MapTransform):
    """Subtract :func:`zero_level` from the non-zero voxels of the channel-first images at ``keys``: without
    ``head_key``, of every channel over all its voxels (the first channel as loaded, before any interpolation
    blends a constant offset with zero padding); with it, of every channel but the first (the one the head was
    found on), inside the head mask at ``head_key``. ``also``: the key of a copy of the same channels on another
    grid (the channels kept on the scan's grid, ``native``), shifted by the same levels."""

    def __init__(self, keys, head_key: str | None = None, also: str | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.head_key, self.also = head_key, also

    def __call__(self, data):
        d = dict(data)
        head = None
        if self.head_key is not None:
            mask = d[self.head_key]
            head = (mask.as_tensor() if hasattr(mask, "as_tensor") else torch.as_tensor(mask))[0] > 0
        for key in self.key_iterator(d):
            image = d[key]
            channels = range(1 if self.head_key is not None else 0, image.shape[0])
            levels = {c: zero_level(image[c].as_tensor() if hasattr(image, "as_tensor") else image[c], head)
                      for c in channels}
            if not any(levels.values()):
                continue
            targets = [key] + ([self.also] if self.also in d else [])
            for target in targets:
                shifted = d[target].clone()
                for c, level in levels.items():
                    if level:
                        shifted[c] = _shifted(shifted[c], level)
                d[target] = shifted
        return d


def _shifted(channel: torch.Tensor, level: float) -> torch.Tensor:
    """``channel`` minus ``level`` where it holds data; 0 (no data) stays 0."""
    shifted = channel - level
    # a constant offset's air, blended by interpolation, lands a rounding error off 0: no data too
    near_zero = shifted.abs() <= SNAP * _percentile(shifted[channel != 0], 100 - PERCENTILE)
    return torch.where((channel != 0) & ~near_zero, shifted, torch.zeros((), dtype=channel.dtype))
