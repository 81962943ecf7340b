"""Positive patches spread over lesions, not over lesion voxels.

MONAI's ``RandCropByPosNegLabeld`` centres a positive patch on a lesion voxel drawn uniformly: a 100 mL infarct
then takes 200 times the patches of a 0.5 mL one, and small lesions, the ones a model misses on thick slices,
are rarely seen. :class:`LesionWeightedIndicesd` rewrites the foreground indices so that each lesion
(26-connected component) is drawn with weight ``size ** size_power``: 1 keeps MONAI's voxel-uniform draw, 0 draws
every lesion equally often (then a voxel uniformly inside it). The repeated indices are fixed per volume (no
random state), so the transform is deterministic and cached with the volume.

Example:
    >>> import torch
    >>> label = torch.zeros(1, 20, 20, 20); label[0, 1:9, 1:9, 1:9] = 1; label[0, 15, 15, 15] = 1
    >>> d = {"label": label, "label_fg_indices": torch.nonzero(label.flatten())[:, 0]}
    >>> out = LesionWeightedIndicesd("label", size_power=0.0)(d)["label_fg_indices"]
    >>> int((out == 15 * 400 + 15 * 20 + 15).sum()) == len(out) // 2
    True
"""

from __future__ import annotations

import cc3d
import numpy as np
import torch
from monai.transforms import MapTransform

__all__ = ["LesionWeightedIndicesd", "lesion_weighted_indices"]

MAX_INDICES = 200_000  # cap on the rewritten list (the largest lesion keeps at most this many entries)


def lesion_weighted_indices(label: np.ndarray, fg_indices: np.ndarray, size_power: float) -> np.ndarray:
    """``fg_indices`` (flat, into ``label``) repeated so each 26-connected lesion's share is ``size ** size_power``."""
    if fg_indices.size == 0 or size_power == 1.0:
        return fg_indices
    components = cc3d.connected_components(np.ascontiguousarray(label > 0), connectivity=26)
    which = components.ravel()[fg_indices]
    sizes = np.bincount(which)[1:]
    weights = sizes.astype(np.float64) ** size_power
    counts = np.maximum(1, np.round(weights / weights.max() * min(sizes.max(), MAX_INDICES))).astype(int)
    order = np.argsort(which, kind="stable")
    groups = np.split(fg_indices[order], np.cumsum(sizes)[:-1])
    return np.concatenate([np.resize(g, n) for g, n in zip(groups, counts, strict=True)])


class LesionWeightedIndicesd(MapTransform):
    """Rewrite ``<label>_fg_indices`` (from ``FgBgToIndicesd``) with :func:`lesion_weighted_indices`."""

    def __init__(self, keys, size_power: float = 1.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if size_power < 0:
            raise ValueError(f"size_power must be >= 0, got {size_power}")
        self.size_power = float(size_power)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            name = f"{key}_fg_indices"
            label = d[key]
            label = label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(label)
            fg = torch.as_tensor(d[name]).cpu().numpy()
            d[name] = torch.from_numpy(lesion_weighted_indices(label[0].cpu().numpy(), fg, self.size_power))
        return d
