"""MONAI dictionary transforms for stroke MRI, built from config numbers.

Three chains share one deterministic front (cached by the data module):

* ``deterministic``: load every channel, resample channels onto the first channel's grid (ISLES'22
  FLAIR has its own), optional SimpleITK registration and N4, orient RAS, resample to ``spacing``,
  crop to the head, z-score each channel inside the brain (non-zero voxels).
* ``train_transforms``: the above + patch sampling with a positive/negative ratio (3D patches or
  axial 2D slices) + augmentation applied to the sampled region only.
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

from pipeline.data.deform import RandDeformd
from pipeline.errors import InputError

__all__ = ["channel_keys", "deterministic", "sampling", "augmentation", "train_transforms", "val_transforms",
           "SplitChannelsd", "DEFAULT_AUGMENT"]

IMAGE, LABEL, WEIGHT = "image", "label", "weight"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel world axes; explicit, as MONAI 1.6 asks

DEFAULT_AUGMENT = {
    "elastic": {"prob": 0.0, "grid_spacing": 16, "magnitude_range": [1.0, 2.0]},
    "affine": {"prob": 0.0, "rotate_deg": 15.0, "scale": 0.15},
    "flip": {"prob": 0.0, "axes": [0, 1, 2]},
    "intensity_scale": {"prob": 0.0, "factors": 0.1},
    "intensity_shift": {"prob": 0.0, "offsets": 0.1},
    "contrast": {"prob": 0.0, "gamma": [0.7, 1.5]},
    "noise": {"prob": 0.0, "std": 0.1},
    "smooth": {"prob": 0.0, "sigma": [0.5, 1.0]},
    "bias_field": {"prob": 0.0, "coeff_range": [0.0, 0.1], "degree": 3},
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
            raise InputError(f"{len(files)} image file(s) but the model takes {self.channels} channel(s)",
                             case=str(d.get("id", "?")), path=str(files[0]) if files else None)
        d.update(zip(channel_keys(self.channels), files, strict=False))
        return d


def deterministic(channels: int, spacing: Sequence[float] | None, with_label: bool = True,
                  register: bool = False, n4: bool = False, crop_margin: int = 2, spatial_dims: int = 3,
                  volume_index: int | None = None, label_threshold: float | None = None,
                  crop_to_head: bool = True) -> list:
    """Load with checks, align channels, (register, N4), orient RAS, resample, crop to head (no normalisation).

    ``volume_index`` picks one volume of 4D images; ``label_threshold`` binarises probabilistic labels
    (see :class:`~pipeline.data.checks.LoadCheckedd`).
    """
    from pipeline.data.checks import LoadCheckedd
    from pipeline.data.sitk_transforms import ResampleToGridd

    keys = channel_keys(channels)
    label = [LABEL] if with_label else []
    chain = [
        SplitChannelsd(channels),
        LoadCheckedd(keys, label_key=LABEL if with_label else None, spatial_dims=spatial_dims,
                     volume_index=volume_index, label_threshold=label_threshold),
    ]
    if channels > 1:
        chain.append(ResampleToGridd(keys[1:], key_dst=keys[0]))
    if register or n4:
        from pipeline.data.sitk_transforms import N4BiasFieldd, RigidRegisterd

        if register and channels > 1:
            chain.append(RigidRegisterd(keys[1:], fixed_key=keys[0]))
        if n4:
            chain.append(N4BiasFieldd(keys))
    chain += [mt.ConcatItemsd(keys, IMAGE), mt.DeleteItemsd(keys),
              mt.Orientationd([IMAGE] + label, axcodes="RAS", labels=RAS_LABELS)]
    if spacing:
        chain.append(mt.Spacingd([IMAGE] + label, pixdim=spacing, mode=["bilinear", "nearest"][: 1 + len(label)],
                                 padding_mode="zeros", dtype=np.float32))
    if crop_to_head:
        chain.append(mt.CropForegroundd([IMAGE] + label, source_key=IMAGE, margin=crop_margin, allow_smaller=True))
    return chain


def _normalise() -> list:
    return [mt.NormalizeIntensityd(IMAGE, nonzero=True, channel_wise=True)]


def _crop_size(spatial_dims: int, patch_size: Sequence[int], augment: dict) -> list[int]:
    """Region to sample: the patch plus a margin when spatial augmentation will resample it."""
    spatial = any(augment.get(k, {}).get("prob", 0) > 0 for k in ("elastic", "affine"))
    size = [math.ceil(s * 1.25) if spatial else int(s) for s in patch_size]
    return size if spatial_dims == 3 else size + [1]


def sampling(spatial_dims: int, patch_size: Sequence[int], augment: dict, pos: float = 1.0, neg: float = 1.0,
             num_samples: int = 2, extra_keys: Sequence[str] = ()) -> list:
    """Pad to the sampling region, precompute fg/bg indices (cached), then draw patches (or axial slices);
    ``extra_keys`` (a weight map) are cropped with the label."""
    crop = _crop_size(spatial_dims, patch_size, augment)
    pad_to = crop if spatial_dims == 3 else crop[:2] + [-1]
    keys = [IMAGE, LABEL, *extra_keys]
    chain = [
        mt.SpatialPadd(keys, spatial_size=pad_to),
        mt.FgBgToIndicesd(LABEL, image_key=IMAGE, image_threshold=0.0),
        *_normalise(),
        mt.RandCropByPosNegLabeld(keys, label_key=LABEL, spatial_size=crop, pos=pos, neg=neg,
                                  num_samples=num_samples, fg_indices_key=f"{LABEL}_fg_indices",
                                  bg_indices_key=f"{LABEL}_bg_indices"),
        mt.DeleteItemsd([f"{LABEL}_fg_indices", f"{LABEL}_bg_indices"]),
    ]
    if spatial_dims == 2:
        chain.append(mt.SqueezeDimd(keys, dim=3))
    return chain


def augmentation(spatial_dims: int, patch_size: Sequence[int], augment: dict, extra_keys: Sequence[str] = ()) -> list:
    """Random spatial (on the sampled region, cropped to ``patch_size``) and intensity augmentation;
    ``extra_keys`` (a weight map, interpolated linearly) move with the label."""
    a = {k: {**v, **augment.get(k, {})} for k, v in DEFAULT_AUGMENT.items()}
    keys, modes = [IMAGE, LABEL, *extra_keys], ["bilinear", "nearest"] + ["bilinear"] * len(extra_keys)
    patch = [int(s) for s in patch_size]
    e, af = a["elastic"], a["affine"]
    chain = [RandDeformd(keys, patch, modes, elastic_prob=e["prob"], grid_spacing=e["grid_spacing"],
                         magnitude_range=e["magnitude_range"], affine_prob=af["prob"], rotate_deg=af["rotate_deg"],
                         scale=af["scale"])]
    for axis in a["flip"]["axes"]:
        if a["flip"]["prob"] > 0 and axis < spatial_dims:
            chain.append(mt.RandFlipd(keys, prob=a["flip"]["prob"], spatial_axis=axis))
    if a["intensity_scale"]["prob"] > 0:
        chain.append(mt.RandScaleIntensityd(IMAGE, factors=a["intensity_scale"]["factors"],
                                            prob=a["intensity_scale"]["prob"], channel_wise=True))
    if a["intensity_shift"]["prob"] > 0:
        chain.append(mt.RandShiftIntensityd(IMAGE, offsets=a["intensity_shift"]["offsets"],
                                            prob=a["intensity_shift"]["prob"], channel_wise=True))
    if a["contrast"]["prob"] > 0:
        chain.append(mt.RandAdjustContrastd(IMAGE, gamma=a["contrast"]["gamma"], prob=a["contrast"]["prob"],
                                            retain_stats=True))
    if a["noise"]["prob"] > 0:
        chain.append(mt.RandGaussianNoised(IMAGE, std=a["noise"]["std"], prob=a["noise"]["prob"]))
    if a["smooth"]["prob"] > 0:
        s = a["smooth"]["sigma"]
        chain.append(mt.RandGaussianSmoothd(IMAGE, sigma_x=s, sigma_y=s, sigma_z=s, prob=a["smooth"]["prob"]))
    if a["bias_field"]["prob"] > 0:
        chain.append(mt.RandBiasFieldd(IMAGE, degree=a["bias_field"]["degree"],
                                       coeff_range=a["bias_field"]["coeff_range"], prob=a["bias_field"]["prob"]))
    return chain


def train_transforms(channels: int, spatial_dims: int, spacing: Sequence[float] | None, patch_size: Sequence[int],
                     augment: dict | None = None, pos: float = 1.0, neg: float = 1.0, num_samples: int = 2,
                     register: bool = False, n4: bool = False, volume_index: int | None = None,
                     label_threshold: float | None = None, weight_map: dict | None = None) -> mt.Compose:
    """Deterministic front (cacheable), then patch sampling and augmentation.

    ``weight_map`` (``{"w0", "sigma_mm", "class_balance"}``) adds the U-Net paper's boundary weights as
    ``weight``, computed once per case in the cached part (:mod:`pipeline.data.weight_map`)."""
    augment = augment or {}
    if len(patch_size) != spatial_dims:
        raise ValueError(f"patch_size {list(patch_size)} has {len(patch_size)} values "
                         f"but spatial_dims is {spatial_dims}")
    chain = deterministic(channels, spacing, True, register, n4, spatial_dims=spatial_dims,
                          volume_index=volume_index, label_threshold=label_threshold)
    extra = []
    if weight_map:
        from pipeline.data.weight_map import BoundaryWeightMapd

        chain.append(BoundaryWeightMapd(LABEL, WEIGHT, **weight_map))
        extra = [WEIGHT]
    chain += sampling(spatial_dims, patch_size, augment, pos, neg, num_samples, extra)
    chain += augmentation(spatial_dims, patch_size, augment, extra)
    chain.append(mt.EnsureTyped([IMAGE, LABEL, *extra], track_meta=False))
    return mt.Compose(chain)


def val_transforms(channels: int, spacing: Sequence[float] | None, register: bool = False, n4: bool = False,
                   with_label: bool = True, spatial_dims: int = 3, volume_index: int | None = None,
                   label_threshold: float | None = None, crop_to_head: bool = True) -> mt.Compose:
    """Whole volumes, deterministic only: what validation and inference see."""
    chain = deterministic(channels, spacing, with_label, register, n4, spatial_dims=spatial_dims,
                          volume_index=volume_index, label_threshold=label_threshold,
                          crop_to_head=crop_to_head) + _normalise()
    return mt.Compose(chain)
