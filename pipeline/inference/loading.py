"""Loading a trained model, whatever form it comes in: a Lightning checkpoint, a MONAI bundle folder, or a
cross-validation folder (its folds' models averaged, with the post-processing chosen out of fold).

Example:
    >>> model = load_model("outputs/train/checkpoints/best-029.ckpt")  # doctest: +SKIP
    >>> model.network, model.settings.spacing  # doctest: +SKIP
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import InputError
from pipeline.inference.settings import Settings

__all__ = ["LoadedModel", "load_model", "read_checkpoint", "network_from_checkpoint", "fold_checkpoints",
           "read_postprocessing", "POSTPROCESSING_FILE", "load_weights", "bundle_parser", "load_bundle"]

POSTPROCESSING_FILE = "postprocessing.json"


@dataclass
class LoadedModel:
    network: torch.nn.Module
    settings: Settings
    onnx_model: Path | None = None  # an exported ONNX file beside the weights (bundles ship one)


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by this pipeline's training (weights only, never code)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path=str(path))
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not ckpt.get("network_config"):
        raise InputError("checkpoint has no network_config: not written by this pipeline", path=str(path))
    return ckpt


def network_from_checkpoint(ckpt: dict) -> tuple[torch.nn.Module, Settings]:
    """The network (weights loaded, eval mode, CPU) and inference settings of a checkpoint dict."""
    from pipeline.models.networks import build_network, network_weights

    network = build_network(**ckpt["network_config"])
    network.load_state_dict(network_weights(ckpt["state_dict"]))
    return network.eval(), Settings.from_hparams(ckpt["hyper_parameters"])


def fold_checkpoints(cv_dir: str | Path) -> dict[int, Path]:
    """The best checkpoint of every finished fold under a cross-validation folder."""
    found = {}
    for fold_dir in sorted(Path(cv_dir).glob("fold_*")):
        best = sorted((fold_dir / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
        if best:
            found[int(fold_dir.name.split("_")[1])] = best[-1]
    return found


def read_postprocessing(cv_dir: str | Path) -> dict:
    """The threshold and minimum lesion volume chosen by cross-validation (``postprocessing.json``)."""
    path = Path(cv_dir) / POSTPROCESSING_FILE
    if not path.is_file():
        raise InputError("not a finished cross-validation folder (no postprocessing.json)", path=str(cv_dir))
    return json.loads(path.read_text())


def _cv_ensemble(cv_dir: Path) -> tuple[torch.nn.Module, Settings]:
    from pipeline.models.networks import Ensemble

    members, settings = [], None
    for _, ckpt in sorted(fold_checkpoints(cv_dir).items()):
        network, settings = network_from_checkpoint(read_checkpoint(ckpt))
        members.append(network)
    if not members:
        raise InputError("no fold checkpoints in this cross-validation folder", path=str(cv_dir))
    post = read_postprocessing(cv_dir)
    settings = settings.replace(threshold=post["threshold"], min_lesion_ml=post["min_lesion_ml"])
    return Ensemble(members, settings.head).eval(), settings


def load_weights(network: torch.nn.Module, path: str | Path, device="cpu") -> torch.nn.Module:
    """Load a bundle's state dict (``models/model.pt``) into ``network``; eval mode on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("bundle has no weights: run `python -m pipeline export` first", path=str(path))
    network.load_state_dict(_torch_load(path))
    return network.to(device).eval()


def _torch_load(path: Path):
    """``torch.load`` of tensors only (never code); a damaged or foreign file becomes one line naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and torch raise many types for a file that is not one
        if isinstance(err, pickle.UnpicklingError):  # torch's own text is advice on weights_only=False
            reason = "not a PyTorch file, or one holding Python objects besides tensors, which are never run"
        else:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
            reason += " (truncated or damaged?)"
        raise InputError(f"unreadable weights: {reason}", path=str(path)) from None


def bundle_parser(bundle: str | Path, **overrides):
    """MONAI's ConfigParser over a bundle's inference config and metadata, ``bundle_root`` set."""
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    if not (bundle / "configs" / "inference.yaml").is_file():
        raise InputError("not a bundle folder: no configs/inference.yaml", path=str(bundle))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle), **overrides})
    return parser


def load_bundle(bundle: str | Path, device="cpu") -> tuple[torch.nn.Module, Settings]:
    """Network (weights loaded) and settings of a bundle folder, as its inference config defines them."""
    parser = bundle_parser(bundle)
    network = load_weights(parser.get_parsed_content("network_def"), Path(bundle) / "models" / "model.pt", device)
    return network, parser.get_parsed_content("settings")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A checkpoint (``.ckpt``), a bundle folder, or a cross-validation folder, on ``device``."""
    path = Path(path)
    onnx_model = None
    if path.is_dir() and (path / POSTPROCESSING_FILE).is_file():
        network, settings = _cv_ensemble(path)
    elif path.is_dir():
        network, settings = load_bundle(path)
        onnx_model = path / "models" / "model.onnx"
    elif path.is_file():
        network, settings = network_from_checkpoint(read_checkpoint(path))
    else:
        raise InputError("model not found (give a .ckpt file, a bundle folder or a cross-validation folder)",
                         path=str(path))
    return LoadedModel(network.to(device).eval(), settings, onnx_model)
