"""Augmentation for acquisition shift: lower resolution, per-channel intensity changes, kept off the background.

A model that has seen one protocol learns that protocol's look. These transforms show it others on every patch:
thick slices (:class:`RandLowResolutiond`: one or more axes averaged over up to ``max_factor`` voxels, as a thick
slice averages tissue, then interpolated back as preprocessing does), and per-channel gamma, contrast,
brightness, shift, bias field, blur and noise (MONAI's transforms, each channel drawn on its own by
:class:`RandPerChanneld`, since DWI, ADC and FLAIR come from different sequences). :class:`ForegroundOnlyd`
runs a chain and puts the background back to exactly 0, as the normalisation leaves it at inference.

Example:
    >>> from monai.transforms import RandAdjustContrast
    >>> t = RandPerChanneld("image", RandAdjustContrast(prob=0.3, gamma=(0.7, 1.5), retain_stats=True))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import Compose, MapTransform, Randomizable, RandomizableTransform

__all__ = ["RandLowResolutiond", "RandPerChanneld", "ForegroundOnlyd", "RandChannelDropoutd"]


class RandLowResolutiond(RandomizableTransform, MapTransform):
    """Simulate a coarser acquisition of a patch: with probability ``prob``, 1 to all spatial axes (chosen at
    random, one axis most often) get a factor in [``min_factor``, ``max_factor``]; each such axis is averaged
    over that many voxels (area down-sampling, a box slice profile) and linearly interpolated back.

    nnU-Net's low-resolution simulation zooms all axes by one factor; thick clinical slices coarsen one
    axis, which MONAI's ``RandSimulateLowResolutiond`` (one isotropic zoom) cannot show.

    Args:
        keys: image keys (channel first, 2D or 3D).
        prob: chance per patch.
        min_factor, max_factor: range of the coarsening factor per chosen axis.
        channel_wise: draw each channel's own axes and factors (FLAIR on another grid than DWI).
        channel_groups: channels that share one draw, as they share one acquisition grid (e.g. ``[[0, 1], [2]]``:
            DWI and the ADC computed from it, FLAIR on its own); channels in no group draw alone. Overrides
            ``channel_wise``.
        axis_counts: relative frequency of coarsening 1, 2, 3... axes.
    """

    def __init__(self, keys, prob: float = 0.2, min_factor: float = 1.5, max_factor: float = 4.0,
                 channel_wise: bool = False, axis_counts: Sequence[float] = (0.6, 0.2, 0.2),
                 channel_groups: Sequence[Sequence[int]] | None = None, allow_missing_keys: bool = False):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 1.0 <= min_factor <= max_factor:
            raise ValueError(f"low-resolution factors need 1 <= min_factor <= max_factor, got {min_factor}, "
                             f"{max_factor}")
        self.min_factor, self.max_factor, self.channel_wise = min_factor, max_factor, channel_wise
        self.axis_counts = list(axis_counts)
        self.channel_groups = [[int(c) for c in g] for g in channel_groups] if channel_groups else None

    def groups(self, channels: int) -> list[list[int]]:
        """The channel indices drawn together, for an image of ``channels`` channels."""
        if self.channel_groups is None:
            return [[c] for c in range(channels)] if self.channel_wise else [list(range(channels))]
        groups = [[c for c in g if c < channels] for g in self.channel_groups]
        grouped = {c for g in groups for c in g}
        return [g for g in groups if g] + [[c] for c in range(channels) if c not in grouped]

    def _draw(self, ndim: int) -> list[float]:
        weights = torch.tensor(self.axis_counts[:ndim], dtype=torch.float64)
        count = 1 + int(self.R.choice(ndim, p=(weights / weights.sum()).numpy()))
        factors = [1.0] * ndim
        for axis in self.R.choice(ndim, size=count, replace=False):
            factors[int(axis)] = float(self.R.uniform(self.min_factor, self.max_factor))
        return factors

    @staticmethod
    def coarsen(x: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
        """(C, *spatial) averaged down by ``factors`` per axis and linearly interpolated back to its size."""
        size = list(x.shape[1:])
        small = [max(1, round(n / f)) for n, f in zip(size, factors, strict=True)]
        if small == size:
            return x
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
        down = torch.nn.functional.adaptive_avg_pool3d(x[None], small) if len(size) == 3 else \
            torch.nn.functional.adaptive_avg_pool2d(x[None], small) if len(size) == 2 else \
            torch.nn.functional.adaptive_avg_pool1d(x[None], small)
        return torch.nn.functional.interpolate(down, size=size, mode=mode, align_corners=False)[0]

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            x = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
            ndim = x.ndim - 1
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device)  # every channel is in one group
            for group in self.groups(x.shape[0]):
                out[group] = self.coarsen(x[group].float(), self._draw(ndim))
            d[key] = out.to(x.dtype)
        return d


class RandPerChanneld(Randomizable, MapTransform):
    """Apply a MONAI random array transform to each channel of ``keys`` with its own draw (probability and
    parameters), e.g. a gamma per channel where ``RandAdjustContrast`` draws one for all."""

    def __init__(self, keys, transform: RandomizableTransform, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.transform = transform

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed=int(self.R.randint(2**31 - 1)))
        return self

    def randomize(self, data=None) -> None:
        pass  # the wrapped transform draws once per channel

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            x = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
            d[key] = torch.cat([torch.as_tensor(self.transform(x[c:c + 1])) for c in range(x.shape[0])]).to(x.dtype)
        return d


class ForegroundOnlyd(Randomizable, MapTransform):
    """Run ``transforms`` on ``keys``, then zero every voxel that was exactly 0 before in that channel (the
    background the normalisation zeroed), so intensity changes and noise stay inside the head."""

    def __init__(self, keys, transforms: Sequence, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.chain = Compose(list(transforms))

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.chain.set_random_state(seed=int(self.R.randint(2**31 - 1)))
        return self

    def randomize(self, data=None) -> None:
        pass  # the chain draws

    def __call__(self, data):
        d = dict(data)
        background = {key: torch.as_tensor(d[key]) == 0 for key in self.key_iterator(d)}
        d = self.chain(d)
        for key, zero in background.items():
            d[key] = torch.as_tensor(d[key]).masked_fill(zero, 0.0)
        return d


class RandChannelDropoutd(RandomizableTransform, MapTransform):
    """With probability ``prob``, blank one of ``channels`` (chosen at random) of a normalised patch: set it to 0,
    the head's typical value (median or mean), as if that sequence said nothing. A model that sometimes trains
    without FLAIR has to find infarcts from DWI and ADC alone (bright on one, dark on the other), so a FLAIR
    unlike its training FLAIRs (another inversion time, CSF not nulled) cannot lead it astray. Modality dropout,
    as in HeMIS (Havaei et al. 2016) and nnU-Net-style robustness studies. A channel listed more than once is
    drawn that much more often (``[0, 2, 2, 2]``: FLAIR three times as often as DWI). A single-channel image
    (a T1w model) is never blanked: a patch with nothing left to see is no lesson."""

    def __init__(self, keys, prob: float = 0.0, channels: Sequence[int] = (), allow_missing_keys: bool = False):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.channels = [int(c) for c in channels]

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform or not self.channels:
            return d
        channel = self.channels[int(self.R.randint(len(self.channels)))]
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key]).clone()
            if channel < x.shape[0] and x.shape[0] > 1:
                x[channel] = 0
            d[key] = x
        return d
