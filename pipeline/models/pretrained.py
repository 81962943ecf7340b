"""Transfer learning: start from another model's weights and freeze its encoder.

Example:
    >>> loaded, skipped = load_pretrained(net, "bundles/stroke_mri_segmentation")  # doctest: +SKIP
    >>> set_encoder_trainable(net, False)  # feature extraction
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from pipeline.errors import InputError

__all__ = ["load_pretrained", "encoder_parameter_names", "set_encoder_trainable", "weights_file"]

log = logging.getLogger(__name__)


def weights_file(source: str | Path) -> Path:
    """The weights behind ``source``: a bundle folder's ``models/model.pt``, a ``.pt`` state dict or a ``.ckpt``."""
    source = Path(source)
    path = source / "models" / "model.pt" if source.is_dir() else source
    if not path.is_file():
        raise InputError("no weights to start from (give a bundle folder, a model.pt or a .ckpt)", path=str(path))
    return path


def load_pretrained(network: torch.nn.Module, source: str | Path) -> tuple[list[str], list[str]]:
    """Copy every tensor whose name and shape match into ``network``; returns (loaded, skipped) names.

    Tensors that differ (another number of input channels, another head) keep their fresh initialisation.
    """
    path = weights_file(source)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:  # a Lightning checkpoint
        from pipeline.models.networks import network_weights

        state = network_weights(state["state_dict"])
    own = network.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise InputError("no tensor of these weights fits this network (another architecture?)", path=str(path))
    network.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    log.info("initialised %d of %d tensors from %s%s", len(usable), len(own), path,
             f"; kept fresh: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}" if skipped else "")
    return sorted(usable), skipped


_UNET_NESTING = re.compile(r"^(1\.submodule\.)*")


def encoder_parameter_names(network: torch.nn.Module) -> list[str]:
    """Names of the contracting path's parameters (down-sampling blocks and bottleneck).

    MONAI UNet nests ``Sequential(down, SkipConnection(inner), up)``: after stripping the nesting, ``0.`` is
    a down block, ``2.`` an up block, and anything else the bottleneck. DynUNet names its parts.
    """
    names = []
    for name, _ in network.named_parameters():
        if name.startswith("model."):
            rest = _UNET_NESTING.sub("", name[len("model."):])
            if not rest.startswith("2."):
                names.append(name)
        elif name.startswith(("input_block.", "downsamples.", "bottleneck.")):
            names.append(name)
    return names


def set_encoder_trainable(network: torch.nn.Module, trainable: bool) -> int:
    """Freeze or unfreeze the encoder; returns how many parameter tensors changed."""
    encoder = set(encoder_parameter_names(network))
    for name, param in network.named_parameters():
        if name in encoder:
            param.requires_grad_(trainable)
    return len(encoder)
