"""Plan an experiment from the data's fingerprint within a hardware budget, as nnU-Net's planner does.

Rules (sources: Isensee et al., nnU-Net, Nature Methods 2021, and ``nnunetv2/experiment_planning``):

* Target spacing: the median spacing per axis; when the coarsest axis is more than 3x the finest (thick
  slices), that axis takes its 10th percentile instead, and never less than the finest in-plane spacing.
* Normalisation: train.yaml's for every MR channel (a ratio to the head's median, 0.5-99.5 percentile range),
  the values themselves not clipped (``normalise``; a lesion is the tail a clip would flatten); MR intensities
  have no absolute scale, ADC's units differ between sites.
* Network (DynUNet on GPU budgets, MONAI's UNet with the same per-axis strides on CPU): an axis is pooled
  (stride 2) while its feature map is at least ``min_feature_map`` x 2 voxels and its spacing is within 2x
  of the finest current spacing; an axis coarser than that gets kernel 1 (3x3x1 convolutions on thick
  slices), up to ``max_levels`` poolings. Filters double per level from the
  budget's base, capped at its maximum.
* Patch: the median cropped shape at the target spacing, shrunk along its longest physical axis until it fits
  the budget's voxels, each axis a multiple of its total stride; on the CPU budget also its compute
  (:func:`step_cost`: voxels x filters^2 summed over levels, at most the isotropic budget cube's), since a
  plan pooled in-plane only keeps its deeper levels large: thick slices' [96, 112, 24] cost 1.85x a 64^3 cube
  and trained 23 epochs where the fixed default trained 40.
* CPU budget: nnU-Net's 3d_lowres spacing is the plan (a cascade is beyond 2 cores): the spacing is
  coarsened, finest axes first, until the median head holds at most 4 patches.
* Batch size: the budget's (2 for 3D, as nnU-Net's minimum); a 2D plan is added when the target spacing is
  anisotropic (slices more than 3x thicker than the in-plane spacing).

Example:
    >>> plan = make_plan([[1.0, 1.0, 1.0]] * 4, [[160, 192, 160]] * 4, "cpu")
    >>> plan["patch_size"], plan["strides"][1]
    ([64, 64, 64], [2, 2, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import ConfigError

__all__ = ["BUDGETS", "ANISOTROPY", "target_spacing", "lowres_spacing", "pooling", "step_cost", "fit_patch",
           "make_plan", "plan_overlay"]

ANISOTROPY = 3.0
LOWRES_RATIO = 4.0  # nnU-Net: a 3d_lowres configuration when the median image holds more than 4 patches
# voxels per patch, batch, filters: cpu = what trains on 2 cores in minutes (the fixed default's 64^3);
# gpu-Ngb from nnU-Net's reference configuration (128^3 x 2 with 32-320 filters fits ~8-11 GB with AMP)
# network: on CPU MONAI's UNet (strided convolutions, per-axis strides) -- a training step of DynUNet (two
# full-resolution convolutions per level) measured 8x slower at the same patch on 2 cores (1.26 s vs 0.21 s)
BUDGETS = {
    "cpu": dict(patch_voxels=64 ** 3, batch_size=2, base_filters=16, max_filters=128, patch_pixels_2d=128 ** 2,
                batch_size_2d=8, network="unet", lowres=True, fit_compute=True),
    "gpu-8gb": dict(patch_voxels=112 ** 3, batch_size=2, base_filters=32, max_filters=320, patch_pixels_2d=256 ** 2,
                    batch_size_2d=12, network="dynunet", lowres=False, fit_compute=False),
    "gpu-24gb": dict(patch_voxels=160 ** 3, batch_size=2, base_filters=32, max_filters=320, patch_pixels_2d=512 ** 2,
                     batch_size_2d=12, network="dynunet", lowres=False, fit_compute=False),
}


def target_spacing(spacings: Sequence[Sequence[float]], anisotropy: float = ANISOTROPY) -> list[float]:
    """The median spacing per axis; a thick axis (over ``anisotropy`` x the finest) takes its 10th percentile."""
    all_spacings = np.asarray(spacings, dtype=float)
    target = np.median(all_spacings, axis=0)
    worst = int(np.argmax(target))
    others = [target[i] for i in range(len(target)) if i != worst]
    if target[worst] > anisotropy * min(others):
        target[worst] = max(float(np.percentile(all_spacings[:, worst], 10)), max(others))
    return [round(float(s), 4) for s in target]


def pooling(spacing: Sequence[float], patch: Sequence[int], min_feature_map: int = 4,
            max_levels: int = 5) -> tuple[list[list[int]], list[list[int]]]:
    """DynUNet strides and kernel sizes per level (the first level's stride is 1) for a patch at ``spacing``."""
    current, size = list(map(float, spacing)), list(patch)
    kernels = [[3 if s <= 2 * min(current) else 1 for s in current]]
    strides = [[1] * len(current)]
    while len(strides) <= max_levels:
        finest = min(current)
        step = [2 if n >= 2 * min_feature_map and s <= 2 * finest else 1 for n, s in zip(size, current, strict=True)]
        if all(s == 1 for s in step):
            break
        size = [n // s for n, s in zip(size, step, strict=True)]
        current = [c * s for c, s in zip(current, step, strict=True)]
        strides.append(step)
        kernels.append([3 if s <= 2 * min(current) else 1 for s in current])
    return strides, kernels


def step_cost(spacing: Sequence[float], patch: Sequence[int], base_filters: int = 16,
              max_filters: int = 128) -> int:
    """Relative work of one training step of the planned network: per level, its voxels times its filters
    squared, summed (MONAI's UNet convolves every level with 3x3x3 kernels)."""
    strides, _ = pooling(spacing, patch)
    filters = _filters(len(strides), base_filters, max_filters)
    cumulative = np.cumprod(np.asarray(strides), axis=0)
    return int(sum(np.prod(np.asarray(patch) // c) * f * f for c, f in zip(cumulative, filters, strict=True)))


def fit_patch(median_shape: Sequence[float], spacing: Sequence[float], max_voxels: int,
              max_cost: int | None = None, filters: tuple[int, int] = (16, 128)) -> list[int]:
    """The median shape shrunk along its longest physical axis until it fits ``max_voxels`` (and ``max_cost``,
    :func:`step_cost`, when given), each axis a multiple of its total stride (at least one stride product)."""
    patch = [max(int(round(n)), 8) for n in median_shape]
    while True:
        strides, _ = pooling(spacing, patch)
        divisor = np.prod(np.asarray(strides), axis=0)
        rounded = [max(int(d), (n // int(d)) * int(d)) for n, d in zip(patch, divisor, strict=True)]
        fits = int(np.prod(rounded)) <= max_voxels
        if fits and max_cost is not None:
            fits = step_cost(spacing, rounded, *filters) <= max_cost
        shrinkable = [i for i, (n, d) in enumerate(zip(patch, divisor, strict=True)) if n > int(d)]
        if fits or not shrinkable:  # nothing left to shrink: the smallest patch the strides allow
            return rounded
        axis = max(shrinkable, key=lambda i: patch[i] * spacing[i])
        patch[axis] = max(patch[axis] - int(divisor[axis]), int(divisor[axis]))


def lowres_spacing(spacing: Sequence[float], extent_mm: Sequence[float], patch_voxels: int,
                   max_ratio: float = LOWRES_RATIO, step: float = 1.03) -> list[float]:
    """nnU-Net's 3d_lowres rule: coarsen the spacing (finest axes first, 3% a step) until the median head
    holds at most ``max_ratio`` patches, so a patch sees enough of the head to learn from."""
    current, extent = np.asarray(spacing, float), np.asarray(extent_mm, float)
    while np.prod(extent / current) > max_ratio * patch_voxels:
        fine = current < current.max()
        if fine.any():
            current[fine] = np.minimum(current[fine] * step, current.max())
        else:
            current *= step
    return [round(float(s), 3) for s in current]


def _filters(levels: int, base: int, cap: int) -> list[int]:
    return [min(base * 2 ** i, cap) for i in range(levels)]


def make_plan(spacings: Sequence[Sequence[float]], cropped_shapes: Sequence[Sequence[int]],
              budget: str = "cpu") -> dict:
    """The plan for cases with these RAS spacings (mm) and head-cropped shapes (voxels)."""
    if budget not in BUDGETS:
        raise ConfigError(f"budget must be one of {sorted(BUDGETS)}, not {budget!r}")
    b = BUDGETS[budget]
    fullres = target_spacing(spacings)
    physical = np.median(np.asarray(cropped_shapes, float) * np.asarray(spacings, float), axis=0)
    target = lowres_spacing(fullres, physical, b["patch_voxels"]) if b["lowres"] else fullres
    median_shape = [float(v) for v in physical / np.asarray(target)]
    filters = (b["base_filters"], b["max_filters"])
    cube = [round(b["patch_voxels"] ** (1 / 3))] * 3
    max_cost = step_cost([1.0, 1.0, 1.0], cube, *filters) if b["fit_compute"] else None
    patch = fit_patch(median_shape, target, b["patch_voxels"], max_cost, filters)
    strides, kernels = pooling(target, patch)
    plan = dict(budget=budget, network=b["network"], fullres_spacing=fullres, target_spacing=target,
                median_shape=[round(v, 1) for v in median_shape], patch_size=patch, strides=strides,
                kernel_sizes=kernels,
                filters=_filters(len(strides), b["base_filters"], b["max_filters"]), batch_size=b["batch_size"],
                normalise="value / median - 1 inside the head (0.5-99.5 percentile range), unclipped, per channel")
    if max(target) > ANISOTROPY * min(target):
        inplane = [i for i in range(3) if target[i] <= ANISOTROPY * min(target)]
        side = int(np.sqrt(b["patch_pixels_2d"]))
        patch_2d = [min(side, max(16, int(median_shape[i]) // 16 * 16)) for i in inplane]
        plan["plan_2d"] = dict(patch_size=patch_2d, batch_size=b["batch_size_2d"])
    return plan


def plan_overlay(plan: dict, two_d: bool = False) -> dict:
    """The config overlay that merges over ``train.yaml`` (``--config train.yaml plans/NAME.yaml``)."""
    overlay = {"spacing": plan["target_spacing"], "batch_size": plan["batch_size"]}
    if two_d:
        overlay.update(spatial_dims=2, patch_size_2d=plan["plan_2d"]["patch_size"],
                       batch_size=plan["plan_2d"]["batch_size"])
        return overlay
    overlay.update({"patch_size_3d": plan["patch_size"], "network_def#name": plan["network"],
                    "network_def#channels": plan["filters"], "network_def#strides": plan["strides"][1:]})
    if plan["network"] == "dynunet":  # MONAI's UNet has one kernel size; its strides carry the anisotropy
        overlay["network_def#kernel_sizes"] = plan["kernel_sizes"]
    return overlay  # '#' keys merge into train.yaml's network_def
