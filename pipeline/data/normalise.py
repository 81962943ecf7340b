"""Intensity normalisation that does not depend on how a scanner stored the image.

Scanners and converters store the same anatomy as int16, uint16 or float32, in arbitrary gain, with the ADC in
mm^2/s, 1e-3 or 1e-6 mm^2/s, skull-stripped (zero outside the brain) or with noise over the whole field of view.
"Non-zero voxels" then means the whole field of view, and a z-score over it mostly measures the background.
:func:`normalisation` instead

1. finds the head on the reference (first) channel: a block mean to about 4 mm (noise averages out), Otsu's
   threshold halved (keeps the dark rim and CSF that Otsu alone cuts), holes filled in 3D and slice by slice,
   the largest 26-connected component;
2. per channel, inside that head and inside the channel's own support (a resampled FLAIR is zero outside its
   field of view), scales by statistics of the values clipped to the ``lower``/``upper`` percentiles (a few hot
   voxels do not set them): ``scale="median"`` gives ``value / median - 1``, a ratio to the head's typical
   tissue, so a lesion twice as bright reads 1 whatever else the head holds; ``"std"`` gives a z-score, whose std
   grows with a bright scalp and with the lesion itself (a 112 mL infarct shrank its own contrast and was called
   76-79 mL; 113-120 mL with the median). The values themselves are clipped there too only with ``clip``:
   an infarct is the brightest tissue on DWI and the darkest on ADC, and a lesion larger than the 0.5% above
   the 99.5th percentile would have its core and its partial-volume edge flattened to one value (with
   clipping, `make data`'s 1.4 and 4.0 mL test lesions were missed and in-domain Dice was 0.666; without, 0.804);
3. sets every voxel outside to exactly 0, so a skull-stripped file and a noisy one look alike to the network
   (and windows wholly outside the head stay all-zero, which inference skips).

The same code runs in training, validation, inference and the bundle. Training computes the statistics on the
whole volume (cached) and applies them to each patch after its raw-intensity augmentation (a bias field
multiplies intensities before any scanner or normalisation sees them).

Example:
    >>> chain = normalisation("image", lower=0.5, upper=99.5, crop_keys=["label"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

from pipeline.data.signal_zero import MAX_STAT_VOXELS, SignalZerod

__all__ = ["head_mask", "channel_stats", "apply_stats", "FieldOfViewd", "BlankUncoveredd", "HeadMaskd", "NormStatsd",
           "ApplyNormd", "normalisation",
           "DEFAULT_NORMALISE"]

# ``clip`` and the z-score stay the defaults here for models trained before the options existed (their configs do
# not name them); train.yaml sets clip: false, scale: median
DEFAULT_NORMALISE = {"lower": 0.5, "upper": 99.5, "mask_mm": 4.0, "clip": True, "scale": "std"}
FOV_INSIDE = 0.5 - 1e-3  # the resampled field-of-view map at the acquired volume's outer faces
SCALES = ("std", "median")


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (``skimage.filters.threshold_otsu`` on a histogram of the clipped range,
    so a few hot voxels do not squeeze every tissue into one bin)."""
    from skimage.filters import threshold_otsu

    hi = np.percentile(values, 99.9)
    lo = float(values.min())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    return float(threshold_otsu(hist=(hist, (edges[:-1] + edges[1:]) / 2)))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3D, then in every slice along each axis (a ventricle cut by the field of view's edge is
    no 3D hole, but is one in the slices across it)."""
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(mask.ndim):
        structure = np.zeros((3,) * mask.ndim, bool)
        centre = [slice(None)] * mask.ndim
        centre[axis] = 1
        structure[tuple(centre)] = ndimage.generate_binary_structure(mask.ndim - 1, 1)
        mask = ndimage.binary_fill_holes(mask, structure=structure)
    return mask


def _upsample(mask: np.ndarray, blocks, shape) -> np.ndarray:
    for axis, b in enumerate(blocks):
        mask = np.repeat(mask, b, axis=axis)
    return mask[tuple(slice(0, n) for n in shape)]


def head_mask(volume: np.ndarray | torch.Tensor, spacing=(1.0, 1.0, 1.0), mask_mm: float = 4.0) -> np.ndarray:
    """Boolean mask of the head (or brain, in a skull-stripped image) of a 3D volume with voxel ``spacing`` mm.

    Found on a block mean of about ``mask_mm`` mm; in the blocks on the mask's edge, the voxels below the
    threshold (background in a block that is partly head) are left out at full resolution.
    """
    x = torch.as_tensor(volume, dtype=torch.float32)
    shape = tuple(x.shape)
    blocks = [max(1, int(round(mask_mm / float(s)))) for s in spacing]
    small = torch.nn.functional.avg_pool3d(x[None, None], blocks, stride=blocks, ceil_mode=True)[0, 0].numpy()
    finite = small[np.isfinite(small)]
    if finite.size == 0 or finite.max() <= finite.min():
        return np.zeros(shape, bool)
    low = min(float(finite.min()), 0.0)  # 0 for every magnitude image; below 0 after an offset's rest
    threshold = low + 0.5 * (_otsu(finite) - low)
    mask = small > threshold
    if not mask.any():
        return np.zeros(shape, bool)
    mask = cc3d.largest_k(_fill_holes(mask).astype(np.uint8), k=1, connectivity=26) > 0
    interior = _upsample(ndimage.binary_erosion(mask), blocks, shape)
    edge = _upsample(mask, blocks, shape) & ~interior
    return np.ascontiguousarray(interior | (edge & (x.numpy() > threshold)))


def channel_stats(image: torch.Tensor, mask: np.ndarray, lower: float = 0.5, upper: float = 99.5,
                  clip: bool = True, scale: str = "std") -> torch.Tensor:
    """(C, 4) per-channel ``[low, high, centre, scale]``: the bounds to clip to (the percentiles inside ``mask``
    and the channel's non-zero support with ``clip``, else -inf and inf), and, of the values clipped to the
    percentiles, the mean and std (``scale="std"``) or the median twice (``"median"``: a ratio to the median)."""
    stats = torch.tensor([[0.0, 0.0, 0.0, 1.0]] * image.shape[0], dtype=torch.float64)
    head = torch.from_numpy(np.ascontiguousarray(mask))
    for c in range(image.shape[0]):
        values = image[c][head & (image[c] != 0)]
        if values.numel() == 0:
            continue
        step = max(1, values.numel() // MAX_STAT_VOXELS)
        sample = values[::step].double().numpy()
        lo, hi = np.percentile(sample, [lower, upper])
        sample = np.clip(sample, lo, hi)
        bounds = [lo, hi] if clip else [-np.inf, np.inf]
        if scale == "median":
            median = float(np.median(sample))
            stats[c] = torch.tensor([*bounds, median, abs(median) if median != 0 else 1.0])
        else:
            stats[c] = torch.tensor([*bounds, sample.mean(), sample.std() if sample.std() > 0 else 1.0])
    return stats


def apply_stats(image: torch.Tensor, mask: np.ndarray | torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Clip each channel to its ``[low, high]``, z-score with its mean and std inside ``mask`` and the channel's
    non-zero support, 0 elsewhere."""
    head = torch.as_tensor(np.asarray(mask)) > 0
    out = torch.zeros(image.shape, dtype=torch.float32)
    for c, (lo, hi, mean, std) in enumerate(stats.tolist()):
        channel = image[c].float()
        z = (channel.clamp(lo, hi) - mean) / std
        out[c] = torch.where(head & (channel != 0), z, torch.zeros((), dtype=z.dtype))
    return out


def _grown(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one voxel (26-neighbourhood, as ``binary_dilation``), worked out in its bounding box by a
    separable 3-voxel maximum filter: two 1 mm channels 0.07 s instead of 0.20 s."""
    from monai.transforms.utils import generate_spatial_bounding_box

    if not mask.any():
        return mask
    start, end = generate_spatial_bounding_box(mask[None], margin=1)
    box = tuple(slice(max(int(a), 0), int(b)) for a, b in zip(start, end, strict=True))  # starts may be -1
    out = np.zeros_like(mask)
    out[box] = ndimage.maximum_filter(mask[box].view(np.uint8), size=3).view(bool)
    return out


def _plain(img) -> torch.Tensor:
    return img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)


class FieldOfViewd(MapTransform):
    """Add ``fov_key``: ones on the image's grid, to be padded with a zero border and resampled (linearly) with
    it. Where the resampled copy falls below 0.5, a voxel's centre lies outside the acquired field of view (more
    than half a voxel beyond the first or last slice): :class:`HeadMaskd` leaves those out. With
    ``coverage_keys`` (one per channel after the first; missing ones count as covering everything), the map has a
    channel per image channel: each channel's own coverage (popped from the data), for :class:`BlankUncoveredd`."""

    def __init__(self, keys, fov_key: str = "fov", coverage_keys: Sequence[str] = (),
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.fov_key, self.coverage_keys = fov_key, list(coverage_keys)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            ones = torch.ones_like(_plain(d[key])[:1])
            covered = [_plain(d.pop(k))[:1].to(ones.dtype) if k in d else ones for k in self.coverage_keys]
            partial = any(bool((c < 1).any()) for c in covered)  # else one channel: nothing to carry or blank
            d[self.fov_key] = _with_meta(d[key], torch.cat([ones, *covered]) if partial else ones)
        return d


class BlankUncoveredd(MapTransform):
    """Set to 0 (no data: 0 after normalisation, the head's typical value, as a missing channel) each channel's
    voxels that its own scan covered less than the first channel's did, with a voxel of margin for the blur of
    resampling, and keep only the first channel's field of view at ``fov_key`` (for :class:`HeadMaskd`).

    Linear resampling blends a channel's values with the zeros beyond its own field of view: an ADC on a grid of
    its own that stops inside the head showed a band of very low ADC along its edge, read as restricted diffusion
    (false lesions; ``make bench``'s robustness table, the model it was measured with: 0.537 blended, 0.636
    blank, 0.765 with the ADC on the DWI grid)."""

    def __init__(self, keys, fov_key: str = "fov", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.fov_key = fov_key

    def __call__(self, data):
        d = dict(data)
        fov = _plain(d.get(self.fov_key)) if self.fov_key in d else None
        if fov is None or fov.shape[0] == 1:
            return d
        short = (fov[1:] < fov[:1] - 0.01).numpy()
        if short.any():
            blank = torch.from_numpy(np.stack([_grown(s) for s in short]))
            for key in self.key_iterator(d):
                image = _plain(d[key]).clone()
                image[1:].masked_fill_(blank, 0)
                d[key] = _with_meta(d[key], image)
        d[self.fov_key] = _with_meta(d[self.fov_key], fov[:1])
        return d


class HeadMaskd(MapTransform):
    """Add ``mask_key``: the head of the first channel of ``keys`` (:func:`head_mask`), as a (1, ...) uint8 MetaTensor
    on the image's grid (a crop can then follow it); inside the acquired field of view at ``fov_key`` when present
    (:class:`FieldOfViewd`), which is then removed."""

    def __init__(self, keys, mask_key: str = "head", mask_mm: float = 4.0, fov_key: str = "fov",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.mask_mm, self.fov_key = mask_key, mask_mm, fov_key

    def __call__(self, data):
        d = dict(data)
        fov = d.pop(self.fov_key, None)
        for key in self.key_iterator(d):
            img = d[key]
            spacing = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
            mask = head_mask(_plain(img)[0], spacing, self.mask_mm)
            if fov is not None:
                mask &= _plain(fov)[0].numpy() >= FOV_INSIDE
            d[self.mask_key] = _with_meta(img, torch.from_numpy(mask[None].astype(np.uint8)))
        return d


class NormStatsd(MapTransform):
    """Add ``stats_key``: :func:`channel_stats` of ``keys`` inside the head at ``mask_key`` (whole volumes, so a
    patch cut later is normalised as its volume is).

    Args:
        keys: the image key, channel first.
        lower, upper: percentiles (0-100) inside the head that bound the values the statistics are taken of.
        clip: also clip the values to them.
        scale: ``std`` (z-scores) or ``median`` (``value / median - 1``: ratios to the head's typical tissue).
    """

    def __init__(self, keys, mask_key: str = "head", lower: float = 0.5, upper: float = 99.5, clip: bool = True,
                 stats_key: str = "norm_stats", allow_missing_keys: bool = False, scale: str = "std"):
        super().__init__(keys, allow_missing_keys)
        if scale not in SCALES:
            raise ValueError(f"normalise scale must be one of {list(SCALES)}, not {scale!r}")
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"normalise percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.mask_key, self.lower, self.upper, self.clip, self.stats_key = mask_key, lower, upper, clip, stats_key
        self.scale = scale

    def __call__(self, data):
        d = dict(data)
        mask = _plain(d[self.mask_key])[0] > 0
        for key in self.key_iterator(d):
            d[self.stats_key] = channel_stats(_plain(d[key]), mask.numpy(), self.lower, self.upper, self.clip,
                                              self.scale)
        return d


class ApplyNormd(MapTransform):
    """Normalise ``keys`` with the statistics at ``stats_key`` inside the head at ``mask_key`` (:func:`apply_stats`),
    then drop both keys."""

    def __init__(self, keys, mask_key: str = "head", stats_key: str = "norm_stats", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.stats_key = mask_key, stats_key

    def __call__(self, data):
        d = dict(data)
        mask, stats = _plain(d.pop(self.mask_key))[0], d.pop(self.stats_key)
        for key in self.key_iterator(d):
            values = apply_stats(_plain(d[key]), mask, stats)
            d[key] = _with_meta(d[key], values) if hasattr(d[key], "meta") else values
        return d


def normalisation(keys, lower: float = 0.5, upper: float = 99.5, mask_mm: float = 4.0, crop_margin: int | None = 2,
                  crop_keys=(), apply: bool = True, clip: bool = True, scale: str = "std",
                  native_key: str | None = None) -> list:
    """Head mask, offsets of the other channels removed (:mod:`pipeline.data.signal_zero`; from the copy at
    ``native_key`` too), crop to the head (``crop_margin`` voxels around; None: no crop) with ``crop_keys`` too,
    statistics, and (``apply``) normalisation. Training leaves ``apply`` to after its raw-intensity augmentation,
    so the ``head`` and ``norm_stats`` keys then travel with the sample."""
    from monai.transforms import CropForegroundd

    # the other channels stored with an offset (negative values in the head) get their zero back (the first got
    # it as loaded, in :func:`pipeline.data.transforms.deterministic`)
    chain = [HeadMaskd(keys, "head", mask_mm), SignalZerod(keys, "head", also=native_key)]
    if crop_margin is not None:
        image_keys = [keys] if isinstance(keys, str) else list(keys)
        chain.append(CropForegroundd([*image_keys, *crop_keys, "head"], source_key="head", margin=crop_margin,
                                     allow_smaller=True))
    chain.append(NormStatsd(keys, "head", lower, upper, clip, scale=scale))
    return chain + ([ApplyNormd(keys)] if apply else [])


def _with_meta(img, values: torch.Tensor):
    from monai.data import MetaTensor

    return MetaTensor(values, meta=dict(img.meta), applied_operations=list(img.applied_operations))
