"""A 4D diffusion series with its b-values beside it: the trace-weighted image of the highest b-value.

dcm2niix writes a DWI series as one 4D NIfTI with a ``.bval`` file of the same name (one b-value per volume),
b=0 first and one volume per gradient direction. The model reads the trace-weighted DWI that scanners and
ISLES'22 provide: the geometric mean of the highest b-value's directions (a single volume when there is one).
A voxel that is 0 in any of them (outside a skull-stripped or cut field of view) stays 0: no data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["sibling_bvals", "trace_weighted"]


def sibling_bvals(path: str | Path) -> np.ndarray | None:
    """The b-values in the ``.bval`` file beside ``path`` (``dwi.nii.gz`` -> ``dwi.bval``; none if it holds
    anything but numbers), or None without one."""
    path = Path(path)
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    bval = path.with_name(stem + ".bval")
    if not bval.is_file():
        return None
    try:
        return np.array(bval.read_text().split(), dtype=float)
    except ValueError:  # not numbers: no b-values, which the caller reports against the volumes it has
        return np.zeros(0)


def trace_weighted(volumes: torch.Tensor, bvals: np.ndarray) -> torch.Tensor:
    """(1, ...) geometric mean of the volumes (first axis) whose b-value is the highest (within 1 s/mm^2)."""
    chosen = volumes[torch.from_numpy(np.flatnonzero(bvals >= float(bvals.max()) - 1.0))].double()
    positive = (chosen > 0).all(0, keepdim=True)
    trace = torch.exp(torch.log(chosen.clamp_min(1e-30)).mean(0, keepdim=True))
    return torch.where(positive, trace, torch.zeros(())).to(volumes.dtype)
