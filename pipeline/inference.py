"""Lesion probability from a network: sliding windows in 3D, slice by slice in 2D.

Example:
    >>> prob = lesion_probability(net, image, spatial_dims=3, roi_size=[64, 64, 64])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import SliceInferer, SlidingWindowInferer

__all__ = ["make_inferer", "logits_to_probability", "lesion_probability"]


def make_inferer(spatial_dims: int, roi_size: Sequence[int], overlap: float = 0.5, mode: str = "gaussian",
                 sw_batch_size: int = 4, sw_device=None, device=None):
    """MONAI SlidingWindowInferer (3D nets) or SliceInferer over axial slices (2D nets)."""
    common = dict(sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, sw_device=sw_device, device=device)
    if spatial_dims == 3:
        return SlidingWindowInferer(roi_size=list(roi_size), **common)
    # axial slices: the last spatial axis of a RAS (C, X, Y, Z) volume
    return SliceInferer(spatial_dim=2, roi_size=list(roi_size), **common)


def logits_to_probability(logits: torch.Tensor, head: str) -> torch.Tensor:
    """Lesion probability (B, 1, ...) from a softmax (2-channel) or sigmoid (1-channel) head."""
    if head == "softmax":
        return torch.softmax(logits.float(), dim=1)[:, 1:2]
    return torch.sigmoid(logits.float())


@torch.no_grad()
def lesion_probability(network: torch.nn.Module, image: torch.Tensor, spatial_dims: int, roi_size: Sequence[int],
                       head: str = "softmax", overlap: float = 0.5, mode: str = "gaussian", sw_batch_size: int = 4,
                       tta_axes: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean lesion probability over the identity and one mirror per axis in ``tta_axes`` (spatial axes,
    0-based); also the voxel-wise variance across them when there is more than one."""
    inferer = make_inferer(spatial_dims, roi_size, overlap, mode, sw_batch_size)
    probs = []
    for axis in [None, *tta_axes]:
        x = image if axis is None else torch.flip(image, dims=[axis + 2])
        p = logits_to_probability(inferer(x, network), head)
        probs.append(p if axis is None else torch.flip(p, dims=[axis + 2]))
    if len(probs) == 1:
        return probs[0], None
    stack = torch.stack(probs)
    return stack.mean(0), stack.var(0, unbiased=False)
