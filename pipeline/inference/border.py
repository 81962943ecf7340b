"""Decide each lesion's border on the scan's own grid, by the lesion share its DWI and ADC show.

The network sees the scan on its 2 mm grid, so its mask is only sure to within one of those voxels: its errors
are a rim along the border, on this project's test sets about all of them (bundle docs). The scan itself is
often finer, and a voxel there mixes lesion and tissue by the share of it the lesion fills, so its signal lies
that share of the way from the tissue's to the lesion's. A truth mask marks the voxels at least half lesion.

For each predicted lesion (26-connected), its core (voxels of probability >= ``core_prob``) and a ring of
tissue around it (``band_mm`` to ``ring_mm`` outside; other lesions and blank voxels left out) give, per channel,
the lesion's and the tissue's signal (medians). A voxel within ``band_mm`` of the border, on either side, is
then lesion when its share, averaged over DWI and ADC and smoothed over ``smooth_mm``, reaches ``fraction``.
The DWI's share is ``(value - ring) / (core - ring)``: magnitudes add up over a voxel's parts. A fitted ADC does
not (:func:`adc_share`): its share comes from the two-part model, with the lesion's DWI ratio and ``b_adc``.
Gain and unit of the file cancel; a file stored with an offset gets its zero back upstream (``SignalZerod``, for
these channels too), and an ADC whose zero is still not 0 (no positive tissue value) is read linearly, which an
offset does not change. A channel whose core
differs from its ring by less than ``min_contrast`` ring spreads, or in the wrong direction (DWI darker, ADC
brighter), is left out; a lesion with neither left keeps its border. Voxels further from the border keep the
network's call, so a lesion can move by ``band_mm`` at most; band voxels cut off from their lesion are dropped.

Measured (bundle docs; the shipped recipe's two seeds): in-domain Dice 0.828 / 0.822 -> 0.870 / 0.867, shifted
0.761 / 0.757 -> 0.790 / 0.784, the independent simulator's 0.840 / 0.824 -> 0.864 / 0.852, the validation
fold 0.774 / 0.755 -> 0.812 / 0.794 (``fraction`` 0.5 the best of 0.4-0.6 there for both seeds); lesion F1 unchanged.
The smoothing (``smooth_mm`` 1.0, the validation fold's choice of 0.8-1.5) and the ADC's model then take them to
0.879 / 0.875 in-domain, 0.801 / 0.794 shifted, 0.873 / 0.860 on the independent simulator and 0.821 / 0.799 on
the validation fold.

Example:
    >>> mask = refine_border(mask, prob, native_image, zooms=(0.9, 0.9, 5.0))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np
from scipy import ndimage

from pipeline.inference.diffusion_check import bounding_box

__all__ = ["refine_border", "refinement_box", "border_settings", "adc_share", "DEFAULT_BORDER"]

DEFAULT_BORDER = {"dwi": 0, "adc": 1, "fraction": 0.5, "band_mm": 2.0, "ring_mm": 6.0, "core_prob": 0.9,
                  "min_contrast": 0.5, "min_ring_voxels": 5, "smooth_mm": 1.0, "b_adc": 1.0}


def refine_border(mask: np.ndarray, prob: np.ndarray, image: np.ndarray, zooms: Sequence[float], dwi: int | None = 0,
                  adc: int | None = 1, fraction: float = 0.5, band_mm: float = 2.0, ring_mm: float = 6.0,
                  core_prob: float = 0.9, min_contrast: float = 0.5, min_ring_voxels: int = 5, smooth_mm: float = 1.0,
                  b_adc: float = 1.0) -> np.ndarray:
    """``mask`` with the voxels near each lesion's border decided by their lesion share (see the module).

    Args:
        mask, prob: the network's mask and probability on the scan's grid.
        image: the scan's channels on the same grid, channels first, as stored (any gain, offset or unit).
        zooms: voxel size (mm) of that grid.
        dwi, adc: channel indices (lesion brighter on DWI, darker on ADC); None: not used.
        fraction: the share at which a voxel is lesion (a truth mask's one half).
        band_mm: how far from the border voxels are decided; at least the scan's finest voxel.
        ring_mm: outer width of the tissue ring.
        core_prob: the lesion's core, whose signal is the lesion's.
        min_contrast: a channel's core must differ from its ring by this many ring spreads (1.4826 MAD).
        min_ring_voxels: a lesion with a smaller ring keeps its border.
        smooth_mm: the share map is smoothed by a Gaussian of this width (mm) before it is cut at ``fraction``.
        b_adc: b-value times the tissue's ADC, for the ADC's partial-volume model (:func:`adc_share`); 0: linear.
    """
    channels = [(c, sign) for c, sign in ((dwi, 1.0), (adc, -1.0)) if c is not None and c < image.shape[0]]
    if not mask.any() or not channels:
        return mask
    zooms = [float(z) for z in zooms]
    band = max(band_mm, min(zooms) * 1.01)  # a scan coarser than the network's grid: one of its own voxels
    pad = _margin(zooms, band_mm, ring_mm)
    around = bounding_box(mask, pad)  # the lesions and their rings: at 1 mm a sliver of the volume
    out = mask.copy()
    out[around] = _refine(mask[around], prob[around], image[(slice(None), *around)], zooms, channels, band, pad,
                          fraction, ring_mm, core_prob, min_contrast, min_ring_voxels, smooth_mm, b_adc)
    return out


def border_settings(border: dict | bool) -> dict:
    """The arguments of :func:`refine_border` a config's ``border_refinement`` gives (``true``: the defaults)."""
    return {**DEFAULT_BORDER, **(border if isinstance(border, dict) else {})}


def refinement_box(mask: np.ndarray, zooms: Sequence[float], band_mm: float = 2.0, ring_mm: float = 6.0,
                   **_) -> tuple[slice, ...] | None:
    """The box :func:`refine_border` reads for any mask within ``mask`` (its lesions, bands and rings); None
    for an empty mask. Keeping only this much of a scan's channels is enough to refine such masks later."""
    return bounding_box(mask, _margin([float(z) for z in zooms], band_mm, ring_mm)) if mask.any() else None


def _margin(zooms: list[float], band_mm: float, ring_mm: float) -> list[int]:
    band = max(band_mm, min(zooms) * 1.01)
    return [int(np.ceil(max(ring_mm, band) / z)) + 1 for z in zooms]


def _refine(mask, prob, image, zooms, channels, band, pad, fraction, ring_mm, core_prob, min_contrast,
            min_ring_voxels, smooth_mm, b_adc) -> np.ndarray:
    """:func:`refine_border` inside the box around the lesions and their rings."""
    labels = cc3d.connected_components(mask, connectivity=26)
    out, anchors = mask.copy(), np.zeros_like(mask)
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        box = tuple(slice(max(s.start - p, 0), s.stop + p) for s, p in zip(found, pad, strict=True))
        lesion, others = labels[box] == index, (labels[box] != 0) & (labels[box] != index)
        core = lesion & (prob[box] >= core_prob)
        core = core if core.sum() >= 3 else lesion
        anchors[box] |= core
        outside = ndimage.distance_transform_edt(~lesion, sampling=zooms)
        inside = ndimage.distance_transform_edt(lesion, sampling=zooms)
        values = image[(slice(None), *box)]
        ring = (outside > band) & (outside <= ring_mm) & ~others & (values != 0).any(0)
        if ring.sum() < min_ring_voxels:
            continue
        share = _share(values, channels, core, ring, min_contrast, zooms, smooth_mm, b_adc)
        if share is None:
            continue
        near = ((outside > 0) & (outside <= band) & ~others) | (lesion & (inside <= band))
        region = out[box]
        region[near] = share[near] >= fraction
    return _anchored(out, anchors)


def _anchored(mask: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The 26-connected parts of ``mask`` that hold an anchor voxel: a noisy voxel of the band that reaches
    ``fraction`` apart from its lesion is not a lesion of its own (two in the demo's in-domain test, 0.01 mL)."""
    if not anchors.any():
        return mask
    labels = cc3d.connected_components(mask, connectivity=26)
    kept = np.unique(labels[anchors & mask])
    return np.isin(labels, kept[kept > 0])


def _share(values: np.ndarray, channels: list, core: np.ndarray, ring: np.ndarray, min_contrast: float,
           zooms: Sequence[float] = (1.0, 1.0, 1.0), smooth_mm: float = 0.0, b_adc: float = 0.0) -> np.ndarray | None:
    """Each voxel's lesion share, the mean over the channels with a clear contrast, smoothed by a Gaussian of
    ``smooth_mm`` (one voxel's share is as noisy as the scan: at b 1000-1500 a lesion stands 5-20 noise levels
    above its tissue); None without a channel."""
    ends = {}
    for c, sign in channels:
        tissue = float(np.median(values[c][ring]))
        spread = 1.4826 * float(np.median(np.abs(values[c][ring] - tissue)))
        lesion = float(np.median(values[c][core]))
        if sign * (lesion - tissue) > max(min_contrast * spread, 1e-6 * abs(tissue), 0.0):
            ends[sign] = (values[c].astype(np.float32), tissue, lesion)
    if not ends:
        return None
    shares = []
    if 1.0 in ends:
        v, tissue, lesion = ends[1.0]
        shares.append((v - tissue) / (lesion - tissue))
    if -1.0 in ends:
        dwi_ratio = ends[1.0][2] / ends[1.0][1] if 1.0 in ends and ends[1.0][1] > 0 else None
        shares.append(adc_share(*ends[-1.0], dwi_ratio, b_adc))
    share = sum(shares) / len(shares)
    return ndimage.gaussian_filter(share, [smooth_mm / float(z) for z in zooms]) if smooth_mm > 0 else share


def adc_share(adc: np.ndarray, tissue: float, lesion: float, dwi_ratio: float | None, b_adc: float) -> np.ndarray:
    """The lesion share of each voxel's fitted ADC, between ``tissue`` (share 0) and ``lesion`` (share 1).

    A scanner fits the ADC from the voxel's S0 and S_b, which add up linearly over the voxel's two parts, so its
    ADC leans to the part that is brighter at b, the lesion: read linearly, a half-lesion voxel's ADC reads a
    share of 0.54-0.67 (DWI ratio 1.3-2.5, ADC ratio 0.45-0.85, b times the tissue's ADC 0.8-1.5), and borders
    are drawn too wide. With the lesion's DWI ratio ``dwi_ratio`` and ``b_adc`` (the b-value times the tissue's
    ADC, unit-free: clinical b 1000-1500 s/mm^2 times 0.7-0.9 um^2/ms), the two-part model is solved for the
    share instead: 0.46-0.51 at half for any ``b_adc`` of 0.8-1.5 read as 1.0. Linear where the model cannot be
    set up: no DWI ratio, ``b_adc`` 0, or an ADC whose zero is not its file's zero (a non-positive tissue value).
    """
    q = lesion / tissue if tissue > 0 else -1.0
    if not b_adc or dwi_ratio is None or dwi_ratio <= 1.0 or not 0.0 < q < 1.0:
        return (adc - tissue) / (lesion - tissue)
    # exp(b ADC) of a voxel with share f: ((1 - f) e^k + f r e^(k q)) / ((1 - f) + f r), k = b_adc, r = dwi_ratio
    x = np.exp(b_adc * np.clip(adc / tissue, q, 4.0))
    e, eq = np.exp(b_adc), np.exp(b_adc * q)
    share = (e - x) / (e - x + dwi_ratio * (x - eq))
    beyond = adc < lesion  # darker than the lesion's median: past share 1, continued linearly
    return np.where(beyond, 1.0 + (lesion - adc) / (tissue - lesion), share).astype(np.float32)
