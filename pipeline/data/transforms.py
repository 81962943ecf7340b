"""MONAI dictionary transforms for stroke MRI, built from config numbers.

Three chains share one deterministic front (cached by the data module):

* ``deterministic``: load every channel, resample channels onto the first channel's grid (ISLES'22
  FLAIR has its own), optional SimpleITK registration and N4, orient RAS, resample to ``spacing``
  (smoothing first along axes that get coarser: :mod:`pipeline.data.antialias`), find the head on the first
  channel, crop to it, and normalise whatever the storage (:mod:`pipeline.data.normalise`: percentile-bounded
  per-channel scaling inside the head (median or z-score), 0 outside).
* ``train_transforms``: the above (normalisation statistics cached, applied per patch) + patch sampling with
  a positive/negative ratio (3D patches or axial 2D slices) + augmentation of the sampled region: spatial
  (elastic, affine, flips), raw-intensity (per-channel bias field and gamma), then normalisation, then
  acquisition shift (:mod:`pipeline.data.augment`: low resolution, per-channel contrast, brightness, shift,
  blur, noise), each with its own probability.
* ``val_transforms``: the deterministic chain on whole volumes (validation runs sliding windows).

Example:
    >>> t = train_transforms(channels=3, spatial_dims=3, spacing=[2, 2, 2], patch_size=[64, 64, 64],
    ...                      augment={"elastic": {"prob": 0.2}})  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from monai import transforms as mt

from pipeline.data.antialias import AntiAliasd
from pipeline.data.augment import ForegroundOnlyd, RandChannelDropoutd, RandLowResolutiond, RandPerChanneld
from pipeline.data.deform import RandDeformd
from pipeline.data.lesion_sampling import LesionWeightedIndicesd
from pipeline.data.meta_tracking import TrackMeta, TrainChain
from pipeline.data.normalise import DEFAULT_NORMALISE, ApplyNormd, BlankUncoveredd, FieldOfViewd, normalisation
from pipeline.errors import ConfigError, InputError

__all__ = ["channel_keys", "deterministic", "PadThickSlicesd", "sampling", "augmentation", "train_transforms",
           "val_transforms", "SplitChannelsd", "DEFAULT_AUGMENT", "augment_settings", "raw_intensity",
           "acquisition_shift"]

IMAGE, LABEL, WEIGHT, HEAD, FOV, NATIVE = "image", "label", "weight", "head", "fov", "native"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel world axes; explicit, as MONAI 1.6 asks

# Every augmentation and its defaults (prob 0: off). bias_field and gamma act per channel on raw intensities,
# the other intensity ones on normalised values (shift and noise are additive: in the normalisation's units).
DEFAULT_AUGMENT = {
    "elastic": {"prob": 0.0, "grid_spacing": 16, "magnitude_range": [1.0, 2.0]},
    "affine": {"prob": 0.0, "rotate_deg": 15.0, "scale": 0.15},
    "flip": {"prob": 0.0, "axes": [0, 1, 2]},
    "low_resolution": {"prob": 0.0, "min_factor": 1.5, "max_factor": 4.0, "channel_wise": False,
                       "channel_groups": None},
    "gamma": {"prob": 0.0, "gamma": [0.7, 1.5]},
    "contrast": {"prob": 0.0, "factors": 0.25},
    "brightness": {"prob": 0.0, "factors": 0.25},
    "shift": {"prob": 0.0, "offsets": 0.25},
    "bias_field": {"prob": 0.0, "coeff_range": [0.0, 0.07], "degree": 3},
    "blur": {"prob": 0.0, "sigma": [0.5, 1.5]},
    "noise": {"prob": 0.0, "std": 0.1},
    "channel_dropout": {"prob": 0.0, "channels": []},
}


def channel_keys(channels: int) -> list[str]:
    return [f"{IMAGE}_{i}" for i in range(channels)]


class SplitChannelsd(mt.MapTransform):
    """Turn ``{"image": [f0, f1, ...]}`` into ``{"image_0": f0, "image_1": f1, ...}``.

    Each channel is then loaded on its own grid, so channels on different grids can be resampled.
    Raises ``InputError`` naming the case when the count differs from ``channels``.
    """

    def __init__(self, channels: int, key: str = IMAGE):
        super().__init__([key])
        self.channels = channels

    def __call__(self, data):
        d = dict(data)
        files = d.pop(self.keys[0])
        files = list(files) if isinstance(files, (list, tuple)) else [files]
        if len(files) != self.channels:
            raise InputError(f"{len(files)} image file(s) but the model takes {self.channels} channel(s) (a channel "
                             "the case lacks is null in a manifest, none on the command line)",
                             case=str(d.get("id", "?")), path=str(files[0]) if files else None)
        d.update(zip(channel_keys(self.channels), files, strict=False))
        return d


class PadThickSlicesd(mt.MapTransform):
    """One slice more at both ends of every axis coarser than ``pixdim``: the image's own outermost slices repeated,
    zeros in ``other_keys`` (field of view, label). A slice stands for its whole slab; without this the resampled
    grid ends at the centres of the outermost slices, and a lesion on the first or last 6 mm slice never reaches
    the network. Axes at or finer than ``pixdim`` lose under half a target voxel and are left as they are."""

    def __init__(self, image_key: str, other_keys: Sequence[str], pixdim: Sequence[float]):
        super().__init__([image_key, *other_keys], allow_missing_keys=True)
        self.image_key, self.pixdim = image_key, [float(p) for p in pixdim]

    def __call__(self, data):
        d = dict(data)
        spacing = np.linalg.norm(np.asarray(d[self.image_key].affine)[:3, :3], axis=0)
        border = [int(s > p * 1.001) for s, p in zip(spacing, self.pixdim, strict=False)]
        if any(border):
            for key in self.key_iterator(d):
                mode = "replicate" if key == self.image_key else "constant"
                d[key] = mt.BorderPad(spatial_border=border, mode=mode)(d[key])
        return d


def deterministic(channels: int, spacing: Sequence[float] | None, with_label: bool = True,
                  register: bool = False, n4: bool = False, crop_margin: int = 2, spatial_dims: int = 3,
                  volume_index: int | None = None, label_threshold: float | None = None,
                  crop_to_head: bool = True, normalise: dict | None = None, apply_normalisation: bool = True,
                  optional_channels: Sequence[int] = (), keep_native: bool = False) -> list:
    """Load with checks, align channels, (register, N4), orient RAS, resample, crop to the head, normalise.

    ``volume_index`` picks one volume of 4D images; ``label_threshold`` binarises probabilistic labels;
    ``optional_channels`` may be ``null`` in a case's image list and are then blank: 0 after normalisation, as
    channel dropout trains for (see :class:`~pipeline.data.checks.LoadCheckedd`); ``normalise`` sets the
    percentiles and mask block of :func:`~pipeline.data.normalise.normalisation`. Without ``apply_normalisation``
    the chain ends with the head mask and the statistics (keys ``head``, ``norm_stats``), for training to apply
    after augmenting. ``keep_native`` also keeps the channels on the first channel's own grid, as stored (key
    ``native``), for decisions on the scan's grid (:mod:`pipeline.inference.border`).
    """
    from pipeline.data.checks import LoadCheckedd
    from pipeline.data.signal_zero import SignalZerod
    from pipeline.data.sitk_transforms import COVERAGE, ResampleToGridd

    keys = channel_keys(channels)
    label = [LABEL] if with_label else []
    chain = [
        SplitChannelsd(channels),
        LoadCheckedd(keys, label_key=LABEL if with_label else None, spatial_dims=spatial_dims,
                     volume_index=volume_index, label_threshold=label_threshold, optional_channels=optional_channels),
    ]
    chain.append(SignalZerod(keys[0]))  # a first channel stored with an offset: its zero back, before interpolating
    if channels > 1:
        chain.append(ResampleToGridd(keys[1:], key_dst=keys[0]))
    if register or n4:
        from pipeline.data.sitk_transforms import N4BiasFieldd, RigidRegisterd

        if register and channels > 1:
            chain.append(RigidRegisterd(keys[1:], fixed_key=keys[0]))
        if n4:
            chain.append(N4BiasFieldd(keys))
    coverage = [COVERAGE.format(k) for k in keys[1:]]
    chain += [mt.ConcatItemsd(keys, IMAGE), mt.DeleteItemsd(keys)]
    if keep_native:
        chain.append(mt.CopyItemsd(IMAGE, names=NATIVE))
    chain += [FieldOfViewd(IMAGE, FOV, coverage),
              mt.Orientationd([IMAGE, FOV] + label, axcodes="RAS", labels=RAS_LABELS)]
    if spacing:
        chain.append(PadThickSlicesd(IMAGE, [FOV] + label, spacing))
        chain.append(AntiAliasd(IMAGE, spacing))
        chain.append(mt.Spacingd([IMAGE, FOV] + label, pixdim=spacing,
                                 mode=["bilinear", "bilinear", "nearest"][: 2 + len(label)], padding_mode="zeros",
                                 dtype=np.float32))
    chain.append(BlankUncoveredd(IMAGE, FOV))
    return chain + normalisation(IMAGE, **{**DEFAULT_NORMALISE, **(normalise or {})},
                                 crop_margin=crop_margin if crop_to_head else None, crop_keys=label,
                                 apply=apply_normalisation, native_key=NATIVE if keep_native else None)


def _crop_size(spatial_dims: int, patch_size: Sequence[int], augment: dict) -> list[int]:
    """Region to sample: the patch plus a margin when spatial augmentation will resample it."""
    spatial = any(augment.get(k, {}).get("prob", 0) > 0 for k in ("elastic", "affine"))
    size = [math.ceil(s * 1.25) if spatial else int(s) for s in patch_size]
    return size if spatial_dims == 3 else size + [1]


def sampling(spatial_dims: int, patch_size: Sequence[int], augment: dict, pos: float = 1.0, neg: float = 1.0,
             num_samples: int = 2, extra_keys: Sequence[str] = (), pos_size_power: float = 1.0) -> list:
    """Pad to the sampling region, precompute fg/bg indices (cached; negatives from inside the head; positives
    weighted per lesion by ``size ** pos_size_power``, :mod:`pipeline.data.lesion_sampling`), then draw patches
    (or axial slices); the head mask and ``extra_keys`` (a weight map) are cropped with the label."""
    crop = _crop_size(spatial_dims, patch_size, augment)
    pad_to = crop if spatial_dims == 3 else crop[:2] + [-1]
    keys = [IMAGE, LABEL, HEAD, *extra_keys]
    chain = [
        mt.SpatialPadd(keys, spatial_size=pad_to),
        mt.FgBgToIndicesd(LABEL, image_key=HEAD, image_threshold=0.5),
        *([LesionWeightedIndicesd(LABEL, pos_size_power)] if pos_size_power != 1.0 else []),
        # numpy, not MetaTensors: the crop deep-copies every key it does not crop into each patch, and a
        # MetaTensor copy of the head's 270k indices cost 9 ms a draw (a 1-ms memcpy as an array)
        mt.EnsureTyped([f"{LABEL}_fg_indices", f"{LABEL}_bg_indices"], data_type="numpy"),
        mt.RandCropByPosNegLabeld(keys, label_key=LABEL, spatial_size=crop, pos=pos, neg=neg,
                                  num_samples=num_samples, fg_indices_key=f"{LABEL}_fg_indices",
                                  bg_indices_key=f"{LABEL}_bg_indices"),
        mt.DeleteItemsd([f"{LABEL}_fg_indices", f"{LABEL}_bg_indices"]),
    ]
    if spatial_dims == 2:
        chain.append(mt.SqueezeDimd(keys, dim=3))
    return chain


def augment_settings(augment: dict | None) -> dict:
    """``augment`` merged over :data:`DEFAULT_AUGMENT`; an unknown name is a ConfigError listing the known."""
    augment = augment or {}
    unknown = sorted(set(augment) - set(DEFAULT_AUGMENT))
    if unknown:
        raise ConfigError(f"augment: unknown {', '.join(unknown)}; known: {', '.join(DEFAULT_AUGMENT)}")
    return {k: {**v, **(augment.get(k) or {})} for k, v in DEFAULT_AUGMENT.items()}


def raw_intensity(a: dict) -> list:
    """Per-channel bias field and gamma on raw intensities (before normalisation, where a coil's field acts):
    the stored zeros stay zero."""
    chain = []
    if a["bias_field"]["prob"] > 0:
        p = a["bias_field"]
        chain.append(RandPerChanneld(IMAGE, mt.RandBiasField(degree=p["degree"], coeff_range=p["coeff_range"],
                                                             prob=p["prob"])))
    if a["gamma"]["prob"] > 0:
        chain.append(RandPerChanneld(IMAGE, mt.RandAdjustContrast(prob=a["gamma"]["prob"], gamma=a["gamma"]["gamma"])))
    return chain


def acquisition_shift(a: dict) -> list:
    """Low resolution and per-channel contrast, brightness, shift, blur and noise on normalised values, each with
    its own probability, kept inside the head (:class:`~pipeline.data.augment.ForegroundOnlyd`)."""
    chain = []
    if a["low_resolution"]["prob"] > 0:
        chain.append(RandLowResolutiond(IMAGE, **a["low_resolution"]))
    if a["contrast"]["prob"] > 0:
        chain.append(RandPerChanneld(IMAGE, mt.RandScaleIntensityFixedMean(prob=a["contrast"]["prob"],
                                                                           factors=a["contrast"]["factors"])))
    if a["brightness"]["prob"] > 0:
        chain.append(mt.RandScaleIntensityd(IMAGE, factors=a["brightness"]["factors"],
                                            prob=a["brightness"]["prob"], channel_wise=True))
    if a["shift"]["prob"] > 0:
        chain.append(mt.RandShiftIntensityd(IMAGE, offsets=a["shift"]["offsets"], prob=a["shift"]["prob"],
                                            channel_wise=True))
    if a["blur"]["prob"] > 0:
        s = a["blur"]["sigma"]
        chain.append(mt.RandGaussianSmoothd(IMAGE, sigma_x=s, sigma_y=s, sigma_z=s, prob=a["blur"]["prob"]))
    if a["noise"]["prob"] > 0:
        chain.append(mt.RandGaussianNoised(IMAGE, std=a["noise"]["std"], prob=a["noise"]["prob"]))
    out = [ForegroundOnlyd(IMAGE, chain)] if chain else []
    if a["channel_dropout"]["prob"] > 0:
        out.append(RandChannelDropoutd(IMAGE, **a["channel_dropout"]))
    return out


def augmentation(spatial_dims: int, patch_size: Sequence[int], augment: dict, extra_keys: Sequence[str] = ()) -> list:
    """Spatial augmentation of the sampled region (cropped to ``patch_size``; the head mask and ``extra_keys``, a
    weight map interpolated linearly, move with the label), raw-intensity augmentation, normalisation with the
    volume's statistics, then acquisition-shift augmentation."""
    a = augment_settings(augment)
    keys = [IMAGE, LABEL, HEAD, *extra_keys]
    modes = ["bilinear", "nearest", "nearest"] + ["bilinear"] * len(extra_keys)
    patch = [int(s) for s in patch_size]
    e, af = a["elastic"], a["affine"]
    chain = [RandDeformd(keys, patch, modes, elastic_prob=e["prob"], grid_spacing=e["grid_spacing"],
                         magnitude_range=e["magnitude_range"], affine_prob=af["prob"], rotate_deg=af["rotate_deg"],
                         scale=af["scale"])]
    for axis in a["flip"]["axes"]:
        if a["flip"]["prob"] > 0 and axis < spatial_dims:
            chain.append(mt.RandFlipd(keys, prob=a["flip"]["prob"], spatial_axis=axis))
    return chain + raw_intensity(a) + [ApplyNormd(IMAGE, HEAD)] + acquisition_shift(a)


def train_transforms(channels: int, spatial_dims: int, spacing: Sequence[float] | None, patch_size: Sequence[int],
                     augment: dict | None = None, pos: float = 1.0, neg: float = 1.0, num_samples: int = 2,
                     register: bool = False, n4: bool = False, volume_index: int | None = None,
                     label_threshold: float | None = None, weight_map: dict | None = None,
                     normalise: dict | None = None, pos_size_power: float = 1.0,
                     optional_channels: Sequence[int] = ()) -> mt.Compose:
    """Deterministic front (cacheable), then patch sampling and augmentation.

    ``weight_map`` (``{"w0", "sigma_mm", "class_balance"}``) adds the U-Net paper's boundary weights as
    ``weight``, computed once per case in the cached part (:mod:`pipeline.data.weight_map`)."""
    augment = augment_settings(augment)
    if len(patch_size) != spatial_dims:
        raise ValueError(f"patch_size {list(patch_size)} has {len(patch_size)} values "
                         f"but spatial_dims is {spatial_dims}")
    chain = deterministic(channels, spacing, True, register, n4, spatial_dims=spatial_dims,
                          volume_index=volume_index, label_threshold=label_threshold, normalise=normalise,
                          apply_normalisation=False, optional_channels=optional_channels)
    extra = []
    if weight_map:
        from pipeline.data.weight_map import BoundaryWeightMapd

        chain.append(BoundaryWeightMapd(LABEL, WEIGHT, **weight_map))
        extra = [WEIGHT]
    chain += sampling(spatial_dims, patch_size, augment, pos, neg, num_samples, extra, pos_size_power)
    # the patches as plain tensors: nothing after the crop reads metadata, and MetaTensor bookkeeping on every op
    # was a quarter of the augmentation's time (the same values, 1.2x the patches per second: `make bench`)
    chain += [TrackMeta(False), mt.EnsureTyped([IMAGE, LABEL, HEAD, *extra], track_meta=False)]
    chain += augmentation(spatial_dims, patch_size, augment, extra)
    chain.append(mt.EnsureTyped([IMAGE, LABEL, *extra], track_meta=False))
    return TrainChain(chain)


def val_transforms(channels: int, spacing: Sequence[float] | None, register: bool = False, n4: bool = False,
                   with_label: bool = True, spatial_dims: int = 3, volume_index: int | None = None,
                   label_threshold: float | None = None, crop_to_head: bool = True,
                   normalise: dict | None = None, optional_channels: Sequence[int] = (),
                   keep_native: bool = False) -> mt.Compose:
    """Whole volumes, deterministic only: what validation and inference see."""
    return mt.Compose(deterministic(channels, spacing, with_label, register, n4, spatial_dims=spatial_dims,
                                    volume_index=volume_index, label_threshold=label_threshold,
                                    crop_to_head=crop_to_head, normalise=normalise,
                                    optional_channels=optional_channels, keep_native=keep_native))
