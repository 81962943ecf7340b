"""What the model looked at for one predicted lesion: Grad-CAM on a decoder layer and occlusion sensitivity
(MONAI's ``monai.visualize``), as NIfTI maps on the case's own grid and a PNG overlay.

The explained score is the network's mean lesion logit over the predicted lesion (its largest 26-connected
component; without a prediction, the voxel of highest lesion probability), in a window of the network's
input size centred on it. Grad-CAM is computed for that score at ``layer`` (default: the second-to-last
decoder activation); the occlusion map is the drop of the lesion probability when a
cube of ``occlusion_size`` voxels around each place is blurred away (positive: evidence for the lesion).

Example:
    >>> explain_case("outputs/train/checkpoints/best-029.ckpt", case, "outputs/explain")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import cc3d
import numpy as np
import torch

from pipeline.errors import ConfigError, InputError

__all__ = ["explain_case", "feature_layers", "RegionScore"]

log = logging.getLogger(__name__)
ACTIVATIONS = (torch.nn.ReLU, torch.nn.PReLU, torch.nn.LeakyReLU, torch.nn.ELU, torch.nn.GELU, torch.nn.SiLU)


def feature_layers(network: torch.nn.Module, x: torch.Tensor, wider_than: int = 2) -> list[str]:
    """Activation layers in the order they run, with more than ``wider_than`` output channels.

    Grad-CAM needs a layer after the normalisation: right after a convolution, an instance or group norm
    removes each channel's mean gradient, and with it Grad-CAM's channel weights."""
    seen: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=name: seen.append(n) if out.shape[1] > wider_than else None)
             for name, m in network.named_modules() if isinstance(m, ACTIVATIONS)]
    try:
        with torch.no_grad():
            network(x)
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(seen))


class RegionScore(torch.nn.Module):
    """The network's per-class logits averaged over ``region`` (1, 1, *output size): a classifier-like
    output (B, classes) for the CAM methods."""

    def __init__(self, network: torch.nn.Module, region: torch.Tensor):
        super().__init__()
        self.network, self.region = network, region

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        dims = tuple(range(2, logits.dim()))
        return (logits * self.region).sum(dims) / self.region.sum()


def _target(prob: np.ndarray, threshold: float) -> tuple[np.ndarray, str]:
    """The voxels to explain: the largest predicted lesion, else the most probable voxel."""
    mask = prob >= threshold
    if mask.any():
        components = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
        sizes = np.bincount(components.ravel())[1:]
        return components == (int(np.argmax(sizes)) + 1), f"the largest predicted lesion ({int(sizes.max())} voxels)"
    region = np.zeros(prob.shape, bool)
    region[np.unravel_index(int(np.argmax(prob)), prob.shape)] = True
    return region, "the voxel of highest lesion probability (no lesion predicted)"


def _scale_to_peak(cam: torch.Tensor) -> torch.Tensor:
    """Each map divided by its maximum (Grad-CAM maps are already >= 0 after their ReLU)."""
    peak = cam.flatten(1).amax(1).clamp(min=1e-12)
    return cam / peak.view(-1, *[1] * (cam.dim() - 1))


def _place(window_map: torch.Tensor, centre, half, shape) -> np.ndarray:
    """A window's map (window voxel i = volume voxel centre - half + i) in a zero volume of ``shape``."""
    whole = np.zeros(tuple(shape), np.float32)
    dst, src = [], []
    for c, h, n, w in zip(centre, half, shape, window_map.shape, strict=True):
        start = c - h
        lo, hi = max(start, 0), min(start + w, n)
        dst.append(slice(lo, hi))
        src.append(slice(lo - start, hi - start))
    whole[tuple(dst)] = window_map.numpy()[tuple(src)]
    return whole


def _window(volume: torch.Tensor, target: np.ndarray, centre, size, network, spatial_dims: int, cid: str):
    """The network-sized input window centred on the lesion (mirrored where it leaves the volume) and the
    explained region within the network's output window."""
    from pipeline.inference.overlap_tile import mirror_pad

    half = [n // 2 for n in size]
    after = [n - h for n, h in zip(size, half, strict=True)]
    window = (slice(None), slice(None), *[slice(c, c + n) for c, n in zip(centre, size, strict=True)])
    x = mirror_pad(volume, half, after)[window]
    t = torch.nn.functional.pad(torch.as_tensor(target, dtype=torch.float32)[None, None],
                                [w for h, a in zip(half[::-1], after[::-1], strict=True) for w in (h, a)])[window]
    if spatial_dims == 2:
        x, t = x[..., 0], t[..., 0]
    out_size = network.output_size(x.shape[2:]) if hasattr(network, "output_size") else list(x.shape[2:])
    if list(out_size) != list(x.shape[2:]):
        from pipeline.models.classic_unet import centre_crop

        t = centre_crop(t, out_size)
    if not t.any():
        raise InputError("the explained region falls outside the network's output window", case=cid)
    return x, t, half


def _choose_layer(network, x: torch.Tensor, layer: str | None) -> str:
    if layer is None:
        # the second-to-last decoder activation (MONAI's U-Net: the up-sampled features of the finest level).
        # On a synthetic test case it put 28% of the map within 4 voxels of the lesion (0.3% of the volume);
        # the last one, inside the output's residual unit, put 0% there.
        found = feature_layers(network, x)
        return found[-2] if len(found) > 1 else found[-1]
    if not layer or layer not in dict(network.named_modules()):
        raise ConfigError(f"--layer {layer!r} is not a layer of this network; for example: "
                          + ", ".join(feature_layers(network, x)[-4:]))
    return layer


def _maps(network, x, t, layer: str, head: str, occlusion_size: int, occlusion_overlap: float) -> dict:
    """Grad-CAM and occlusion importance over the window (tensors of the window's spatial shape)."""
    from monai.visualize import GradCAM, OcclusionSensitivity

    score = RegionScore(network, t.to(x.device)).eval()
    lesion_class = 1 if head == "softmax" else 0
    # MONAI's default post-processing maps (min, max) to (1, 0), i.e. flips the map: scale by the peak instead
    cam = GradCAM(nn_module=score, target_layers=f"network.{layer}", postprocessing=_scale_to_peak)(
        x, class_idx=lesion_class)
    occlusion = OcclusionSensitivity(nn_module=score, mask_size=occlusion_size, n_batch=4, overlap=occlusion_overlap,
                                     verbose=True, activate=torch.sigmoid if head == "sigmoid" else True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence")  # inside MONAI 1.6's occlusion code
        full = torch.softmax(score(x), 1)[0, 1] if head == "softmax" else torch.sigmoid(score(x))[0, 0]
        occ_map, _ = occlusion(x)
    importance = (full - occ_map[0, lesion_class]).clamp(min=0)  # (B, classes, *spatial) in MONAI 1.6
    return {"gradcam": cam[0, 0], "occlusion": importance}


def explain_case(model: str | Path, case: dict, output_dir: str | Path, layer: str | None = None,
                 occlusion_size: int = 16, occlusion_overlap: float = 0.5, device: str = "cpu") -> dict:
    """Write ``<id>_gradcam.nii.gz``, ``<id>_occlusion.nii.gz`` (on the case's grid) and ``<id>_explain.png``;
    returns their paths and what was explained."""
    import nibabel as nib

    from pipeline.inference.grid import like_reference, to_grid
    from pipeline.inference.predictor import Predictor, lesion_probability
    from pipeline.io import save_nifti_atomic

    predictor = Predictor.from_path(model, device=device, runtime="torch")
    s, network = predictor.settings, predictor.network
    if s.spatial_dims not in (2, 3):
        raise ConfigError(f"cannot explain a {s.spatial_dims}D network")
    cid = str(case.get("id", "case"))
    image = predictor.preprocess(dict(case))["image"]
    volume = image.as_tensor()[None].to(predictor.device)
    prob, _ = lesion_probability(network, volume, s.spatial_dims, s.roi_size, s.head, s.overlap, s.mode,
                                 s.sw_batch_size, skip_empty=False)
    target, what = _target(prob[0, 0].cpu().numpy(), s.threshold)
    centre = [int(round(c)) for c in np.argwhere(target).mean(0)]
    size = list(s.roi_size) if s.spatial_dims == 3 else [*s.roi_size, 1]
    x, t, half = _window(volume, target, centre, size, network, s.spatial_dims, cid)
    layer = _choose_layer(network, x, layer)
    maps = {}
    for name, window_map in _maps(network, x, t, layer, s.head, occlusion_size, occlusion_overlap).items():
        m = window_map.detach().float().cpu()
        maps[name] = _place(m[..., None] if s.spatial_dims == 2 else m, centre, half, volume.shape[2:])
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    reference, affine, paths = nib.load(case["image"][0]), np.asarray(image.affine), {}
    for name, m in maps.items():
        paths[name] = output_dir / f"{cid}_{name}.nii.gz"
        save_nifti_atomic(like_reference(to_grid(m.astype(np.float32), affine, reference), reference, np.float32),
                          paths[name])
    paths["png"] = output_dir / f"{cid}_explain.png"
    _overlay(image[0].numpy(), target, maps, centre[2], paths["png"], f"{cid}: {what}, layer {layer}")
    log.info("%s: explained %s -> %s", cid, what, output_dir)
    return dict(paths={k: str(v) for k, v in paths.items()}, explained=what, layer=layer, centre=centre)


def _overlay(image: np.ndarray, target: np.ndarray, maps: dict, z: int, path: Path, title: str) -> None:
    """Axial slice ``z`` (model grid): the image with the explained lesion outlined, and each map over it."""
    from pipeline.figures import pyplot, save_figure

    fig, axes = pyplot().subplots(1, 1 + len(maps), figsize=(4 * (1 + len(maps)), 4.4))
    show = lambda a: np.rot90(a[..., z])  # noqa: E731  (RAS: anterior up)
    for ax in axes:
        ax.imshow(show(image), cmap="gray")
        if target[..., z].any():
            ax.contour(show(target.astype(float)), levels=[0.5], colors="red", linewidths=0.8)
        ax.axis("off")
    axes[0].set_title("image + explained lesion")
    for ax, (name, m) in zip(axes[1:], maps.items(), strict=True):
        peak = float(m.max()) or 1.0
        ax.imshow(np.ma.masked_less_equal(show(m), 0.2 * peak), cmap="jet", alpha=0.5, vmin=0, vmax=peak)
        ax.set_title({"gradcam": "Grad-CAM", "occlusion": "occlusion sensitivity"}.get(name, name))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
