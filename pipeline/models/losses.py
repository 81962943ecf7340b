"""Segmentation losses by name (MONAI's), set up for a softmax or sigmoid head.

Example:
    >>> loss = build_loss("dice_ce", head="softmax")
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai import losses

__all__ = ["LOSSES", "build_loss", "DeepSupervisionLoss", "WeightedCrossEntropy"]

LOSSES = ("dice", "dice_ce", "dice_focal", "tversky", "wce", "dice_wce")


def build_loss(name: str = "dice_ce", head: str = "softmax", **kwargs) -> torch.nn.Module:
    """``dice`` | ``dice_ce`` | ``dice_focal`` | ``tversky`` (MONAI's; extra kwargs go to them), or ``wce`` /
    ``dice_wce``: the U-Net paper's cross-entropy weighted by the boundary weight map, alone or plus Dice.

    Softmax heads take integer labels (one-hot inside) and score the lesion channel only; sigmoid heads
    take the binary label as is.
    """
    softmax = head == "softmax"
    common = dict(to_onehot_y=softmax, softmax=softmax, sigmoid=not softmax, include_background=not softmax)
    common.update(kwargs)
    if name in ("wce", "dice_wce"):
        return WeightedCrossEntropy(head, losses.DiceLoss(**common) if name == "dice_wce" else None)
    classes = {"dice": losses.DiceLoss, "dice_ce": losses.DiceCELoss, "dice_focal": losses.DiceFocalLoss,
               "tversky": losses.TverskyLoss}
    if name not in classes:
        raise ValueError(f"loss must be one of {list(LOSSES)}, not {name!r}")
    return classes[name](**common)


class WeightedCrossEntropy(torch.nn.Module):
    """Voxel-wise cross-entropy times a weight map, averaged over voxels (Ronneberger et al. 2015), plus
    ``dice`` when given. Called as ``loss(logits, target, weight)``."""

    uses_weight_map = True

    def __init__(self, head: str = "softmax", dice: torch.nn.Module | None = None):
        super().__init__()
        self.softmax, self.dice = head == "softmax", dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            raise ValueError("the weighted cross-entropy needs the boundary weight map: set weight_map in the config")
        if self.softmax:
            ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
        else:
            ce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")[:, 0]
        loss = (ce * weight[:, 0]).mean()
        return loss + self.dice(logits, target) if self.dice is not None else loss


class DeepSupervisionLoss(torch.nn.Module):
    """Weighted sum of a loss over DynUNet's stacked deep-supervision outputs (B, heads, C, ...).

    Weights halve per level (nnU-Net) and are normalised; plain outputs pass straight through.
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        extra = (weight,) if getattr(self.loss, "uses_weight_map", False) else ()
        if output.dim() == target.dim():
            return self.loss(output, target, *extra)
        heads = output.shape[1]
        weights = torch.tensor([0.5**i for i in range(heads)])
        weights = weights / weights.sum()
        return sum(w * self.loss(output[:, i], target, *extra) for i, w in enumerate(weights))
