"""Optimiser and learning-rate schedule from config: MONAI's ``WarmupCosineSchedule``, torch's ``PolynomialLR``
(after a ``LinearLR`` warm-up) or a constant rate, stepped per batch.

Example:
    >>> net = torch.nn.Linear(2, 2)
    >>> opt = build_optimizer(net.parameters(), name="adamw", lr=1e-3)
    >>> sched = build_scheduler(opt, name="poly", total_steps=100, warmup_steps=10)
"""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "poly", "constant")


def build_optimizer(parameters, name: str = "adamw", lr: float = 2e-3, weight_decay: float = 1e-5,
                    momentum: float = 0.99) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum (nnU-Net's)."""
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    raise ConfigError(f"optimizer name must be one of {OPTIMIZERS}, not {name!r}")


def build_scheduler(optimizer, name: str = "cosine", total_steps: int = 1000, warmup_steps: int = 20,
                    poly_exponent: float = 0.9):
    """A per-step schedule over ``total_steps`` with a linear warm-up of ``warmup_steps``."""
    from torch.optim import lr_scheduler

    if name == "cosine":
        from monai.optimizers import WarmupCosineSchedule

        return WarmupCosineSchedule(optimizer, warmup_steps=warmup_steps, t_total=max(total_steps, 1))
    if name not in SCHEDULES:
        raise ConfigError(f"scheduler name must be one of {SCHEDULES}, not {name!r}")
    rest = max(total_steps - warmup_steps, 1)
    main = (lr_scheduler.PolynomialLR(optimizer, total_iters=rest, power=poly_exponent) if name == "poly"
            else lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0))
    if not warmup_steps:
        return main
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup_steps, total_iters=warmup_steps)
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[warmup_steps])
