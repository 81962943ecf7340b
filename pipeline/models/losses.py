"""Segmentation losses by name (MONAI's), set up for a softmax or sigmoid head.

Example:
    >>> loss = build_loss("dice_ce", head="softmax")
"""

from __future__ import annotations

import torch
from monai import losses

__all__ = ["LOSSES", "build_loss", "DeepSupervisionLoss"]

LOSSES = ("dice", "dice_ce", "dice_focal", "tversky")


def build_loss(name: str = "dice_ce", head: str = "softmax", **kwargs) -> torch.nn.Module:
    """``dice`` | ``dice_ce`` | ``dice_focal`` | ``tversky``; extra kwargs go to the MONAI loss.

    Softmax heads take integer labels (one-hot inside) and score the lesion channel only; sigmoid heads
    take the binary label as is.
    """
    softmax = head == "softmax"
    common = dict(to_onehot_y=softmax, softmax=softmax, sigmoid=not softmax, include_background=not softmax)
    common.update(kwargs)
    classes = {"dice": losses.DiceLoss, "dice_ce": losses.DiceCELoss, "dice_focal": losses.DiceFocalLoss,
               "tversky": losses.TverskyLoss}
    if name not in classes:
        raise ValueError(f"loss must be one of {list(LOSSES)}, not {name!r}")
    return classes[name](**common)


class DeepSupervisionLoss(torch.nn.Module):
    """Weighted sum of a loss over DynUNet's stacked deep-supervision outputs (B, heads, C, ...).

    Weights halve per level (nnU-Net) and are normalised; plain outputs pass straight through.
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() == target.dim():
            return self.loss(output, target)
        heads = output.shape[1]
        weights = torch.tensor([0.5**i for i in range(heads)])
        weights = weights / weights.sum()
        return sum(w * self.loss(output[:, i], target) for i, w in enumerate(weights))
