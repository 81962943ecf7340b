"""Prediction: sliding windows (3D) or slices (2D), overlap-tile for valid-convolution nets, mirroring TTA,
post-processing, masks on the scanner grid.

The probability map is computed on the model's grid (RAS, training spacing, cropped to the head), with the
network in the configured runtime (:mod:`pipeline.inference.runtimes`; OpenVINO on CPU by default), put back
once onto the grid of the case's first channel (:mod:`pipeline.inference.grid`) and thresholded there
(nnU-Net's order). The written mask therefore has exactly that file's shape, affine, qform and sform, whatever
its orientation, obliquity or slice thickness.

Example:
    >>> predictor = Predictor.from_path("outputs/train/checkpoints/best-040.ckpt")  # doctest: +SKIP
    >>> result = predictor.predict_case({"id": "s1", "image": ["dwi.nii.gz", "adc.nii.gz", "flair.nii.gz"]})
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer

from pipeline.inference.border import border_settings, refine_border
from pipeline.inference.diffusion_check import restricted_diffusion
from pipeline.inference.grid import to_grid
from pipeline.inference.settings import Settings

__all__ = ["make_inferer", "logits_to_probability", "lesion_probability", "Predictor", "Postprocess",
           "remove_small_lesions", "keep_confident_lesions", "mirrorings", "SkipEmptyWindows"]

log = logging.getLogger(__name__)
BACKGROUND_LOGIT = 20.0


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


class SkipEmptyWindows(torch.nn.Module):
    """Run the network only on windows with any non-zero input; windows wholly outside the head (zero
    after brain-masked normalisation) get confident background logits without a forward pass."""

    def __init__(self, network: torch.nn.Module, head: str):
        super().__init__()
        self.network, self.head = network, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = x.flatten(1).abs().amax(1) > 0
        if bool(keep.all()):
            return self.network(x)
        channels = 2 if self.head == "softmax" else 1
        size = self.network.output_size(x.shape[2:]) if hasattr(self.network, "output_size") else x.shape[2:]
        out = torch.full((x.shape[0], channels, *size), -BACKGROUND_LOGIT, dtype=x.dtype, device=x.device)
        if self.head == "softmax":
            out[:, 0] = BACKGROUND_LOGIT
        if bool(keep.any()):
            out[keep] = self.network(x[keep]).to(out.dtype)
        return out


@torch.no_grad()
def lesion_probability(network: torch.nn.Module, image: torch.Tensor, spatial_dims: int, roi_size: Sequence[int],
                       head: str = "softmax", overlap: float = 0.5, mode: str = "gaussian", sw_batch_size: int = 4,
                       tta_axes: Sequence[int] = (), skip_empty: bool = True, stitch_device=None, inferer=None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean lesion probability over the identity and every mirroring of the axes in ``tta_axes`` (spatial
    axes, 0-based; all three give nnU-Net's 8 passes); also the voxel-wise variance across them when there
    is more than one. ``inferer`` replaces the one built from the window arguments."""
    if hasattr(network, "output_size"):  # valid-convolution net: overlap-tile, whatever inferer was given
        from pipeline.inference.overlap_tile import OverlapTileInferer

        if not isinstance(inferer, OverlapTileInferer):
            inferer = OverlapTileInferer(spatial_dims, roi_size, network.output_size, sw_batch_size)
    elif inferer is None:
        inferer = make_inferer(spatial_dims, roi_size, overlap, mode, sw_batch_size, device=stitch_device)
    net = SkipEmptyWindows(network, head) if skip_empty else network
    inside = (slice(None),) * image.dim()
    if not hasattr(network, "output_size"):  # overlap-tile mirrors its own borders
        image, inside = mirrored_to_window(image, roi_size)
    probs = []
    for flips in mirrorings(tta_axes):
        dims = [axis + 2 for axis in flips]
        x = torch.flip(image, dims=dims) if dims else image
        p = logits_to_probability(inferer(x, net), head)
        probs.append((torch.flip(p, dims=dims) if dims else p)[inside])
    if len(probs) == 1:
        return probs[0], None
    stack = torch.stack(probs)
    return stack.mean(0), stack.var(0, unbiased=False)


def mirrored_to_window(image: torch.Tensor, roi_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``image`` (B, C, *spatial) mirrored at its faces along every axis shorter than the 3D window, and the
    index that takes the original back out of a result (2D windows, over axial slices, are left to pad).

    The sliding window pads such an axis with zeros, so a scan covering less than one window (a slab of a few
    thick slices) showed the network brain cut off flat on both sides, which no training patch shows, and it
    called lesions along the cuts (6 slices of a 2.9 mL case: 49 mL; mirrored: 5.8 mL, Dice 0.11 -> 0.62).
    Mirrored, the anatomy continues across the faces, as at the image borders of the U-Net paper's
    overlap-tile. Whole heads shorter than the window (9 of the 16 shifted test cases: 118-126 mm along z after
    the head crop) kept the shipped model's Dice but for one case (+0.018).
    """
    inside = [slice(None)] * image.dim()
    if len(roi_size) != image.dim() - 2:
        return image, tuple(inside)
    for axis, window in enumerate(roi_size):
        dim, size = axis + 2, image.shape[axis + 2]
        short = max(0, int(window) - size)
        before, after = short // 2, short - short // 2
        inside[dim] = slice(before, before + size)
        while before or after:  # one mirror copy at a time: a thin slab needs several
            n = image.shape[dim]
            b, a = min(before, n), min(after, n)
            image = torch.cat([torch.flip(image.narrow(dim, 0, b), [dim]), image,
                               torch.flip(image.narrow(dim, n - a, a), [dim])], dim)
            before, after = before - b, after - a
    return image, tuple(inside)


def mirrorings(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` to flip, the identity first: 2**len(axes) passes."""
    from itertools import combinations

    axes = sorted(set(int(a) for a in axes))
    return [c for n in range(len(axes) + 1) for c in combinations(axes, n)]


class Postprocess:
    """Probability -> mask: threshold, keep the 26-connected lesions whose peak probability reaches
    ``min_lesion_peak``, then drop those under ``min_lesion_ml``.

    Example:
        >>> mask = Postprocess(0.5, min_lesion_ml=0.1, min_lesion_peak=0.9)(prob, voxel_ml=0.008)  # doctest: +SKIP
    """

    def __init__(self, threshold: float = 0.5, min_lesion_ml: float = 0.0, min_lesion_peak: float = 0.0):
        self.threshold, self.min_lesion_ml, self.min_lesion_peak = threshold, min_lesion_ml, min_lesion_peak

    def __call__(self, prob: np.ndarray, voxel_ml: float) -> np.ndarray:
        mask = keep_confident_lesions(prob >= self.threshold, prob, self.min_lesion_peak)
        return remove_small_lesions(mask, voxel_ml, self.min_lesion_ml)


def keep_confident_lesions(mask: np.ndarray, prob: np.ndarray, min_peak: float) -> np.ndarray:
    """Keep the 26-connected lesions of ``mask`` with a voxel of probability >= ``min_peak``: hysteresis
    thresholding (the mask's threshold low, ``min_peak`` high). skimage's ``apply_hysteresis_threshold``
    connects faces only; lesions here are 26-connected (ISLES'22), hence cc3d."""
    if min_peak <= 0 or not mask.any():
        return mask
    labels = cc3d.connected_components(mask, connectivity=26)
    confident = np.unique(labels[(prob >= min_peak) & mask])
    return np.isin(labels, confident[confident > 0])


def remove_small_lesions(mask: np.ndarray, voxel_ml: float, min_lesion_ml: float) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_lesion_ml``."""
    if min_lesion_ml <= 0 or not mask.any():
        return mask
    return cc3d.dust(mask.astype(np.uint8), threshold=int(np.ceil(min_lesion_ml / voxel_ml)),
                     connectivity=26, in_place=False).astype(bool)


class Predictor:
    """Segments cases of a manifest with one trained model.

    Args:
        network: the trained net (eval mode).
        settings: preprocessing, window and post-processing settings.
        device: where the network runs.
        preprocessing, inferer, postprocessing: replace the ones built from ``settings`` (a bundle's
            inference config passes its own).
    """

    def __init__(self, network: torch.nn.Module, settings: Settings, device: str | torch.device = "cpu",
                 preprocessing=None, inferer=None, postprocessing: Postprocess | None = None, onnx_model=None):
        from pipeline.data.transforms import val_transforms
        from pipeline.inference.runtimes import compile_network

        s = settings
        self.device = torch.device(device)
        self.network, self.settings = network.to(self.device).eval(), settings
        self.runner = compile_network(self.network, s.runtime, self.device, s.channels, s.roi_size, onnx_model)
        self.preprocess = preprocessing or val_transforms(s.channels, s.spacing, register=s.register, n4=s.n4,
                                                          with_label=False, spatial_dims=s.spatial_dims,
                                                          volume_index=s.volume_index, crop_to_head=s.crop_to_head,
                                                          normalise=s.normalise,
                                                          optional_channels=s.optional_channels,
                                                          keep_native=bool(s.border_refinement))
        self.inferer = inferer
        self.postprocess = postprocessing or Postprocess(s.threshold, s.min_lesion_ml, s.min_lesion_peak)

    @classmethod
    def from_path(cls, path: str | Path, device: str | None = None, **overrides) -> Predictor:
        """From a checkpoint, a bundle folder or a cross-validation folder
        (:func:`~pipeline.inference.loading.load_model`); ``overrides`` replace settings."""
        from pipeline.inference.loading import load_model

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(path, device)
        return cls(model.network, model.settings.replace(**overrides), device, onnx_model=model.onnx_model)

    def probability(self, case: dict) -> tuple[np.ndarray, np.ndarray | None, nib.Nifti1Image]:
        """Lesion probability (and TTA variance) on the grid of the case's first image, and that image."""
        prob, var, reference, _ = self.infer(case)
        return prob, var, reference

    def infer(self, case: dict) -> tuple[np.ndarray, np.ndarray | None, nib.Nifti1Image, np.ndarray | None]:
        """:meth:`probability`, and the channels on the first image's grid where the preprocessing kept them."""
        s = self.settings
        data = self.preprocess(dict(case))  # first: its checks name a missing or damaged file
        image, native = data["image"], data.get("native")
        reference = nib.load(case["image"][0])
        big = image[0].numel() > s.stitch_on_cpu_above_voxels and self.device.type != "cpu"
        affine = np.asarray(image.affine)
        image = image.as_tensor()  # plain tensor: MetaTensor bookkeeping on every window op cost 0.3 s at 1 mm
        prob, var = lesion_probability(self.runner, image[None].to(self.device), s.spatial_dims, s.roi_size,
                                       s.head, s.overlap, s.mode, s.sw_batch_size, s.tta_axes, s.skip_empty,
                                       stitch_device=torch.device("cpu") if big else None, inferer=self.inferer)
        if s.inside_head_only:  # no lesion where every channel is zero (outside the brain-masked head)
            head = (image != 0).any(0, keepdim=True)[None].to(prob.device)
            prob = prob * head
            var = var * head if var is not None else None
        if s.diffusion_check:
            checked, _ = restricted_diffusion(prob[0, 0].float().cpu().numpy(), image.numpy(), s.threshold,
                                              _spacing(affine), **s.diffusion_check)
            prob = torch.from_numpy(checked)[None, None]
        on_scan = [to_grid(m[0, 0].float().cpu().numpy(), affine, reference) if m is not None else None
                   for m in (prob, var)]
        channels = np.asarray(native) if native is not None else None
        return np.clip(on_scan[0], 0, 1), on_scan[1], reference, channels

    def predict_case(self, case: dict) -> dict:
        """Mask (uint8), probability and TTA variance maps on the case's own grid, its reference image,
        lesion volume (mL), component count and the channels on that grid where the preprocessing kept them."""
        prob, unc, reference, channels = self.infer(case)
        voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000.0
        mask = self.refine(self.postprocess(prob, voxel_ml), prob, channels, reference.affine)
        components = int(cc3d.connected_components(mask, connectivity=26, return_N=True)[1]) if mask.any() else 0
        return dict(mask=mask.astype(np.uint8), prob=prob.astype(np.float32), unc=unc, reference=reference,
                    lesion_ml=float(mask.sum()) * voxel_ml, components=components, channels=channels)

    def refine(self, mask: np.ndarray, prob: np.ndarray, channels: np.ndarray | None,
               affine: np.ndarray) -> np.ndarray:
        """``mask`` with each lesion's border decided on the scan's grid (``settings.border_refinement``; see
        :mod:`pipeline.inference.border`), or as it is when that is off or the channels were not kept.
        ``mask``, ``prob`` and ``channels`` may be cut to a box of the scan
        (:func:`~pipeline.inference.border.refinement_box`)."""
        border = self.settings.border_refinement
        if not border or channels is None or channels.shape[1:] != mask.shape:
            return mask
        return refine_border(mask, prob, channels, _spacing(affine), **border_settings(border))


def _spacing(affine: np.ndarray) -> list[float]:
    """Voxel size (mm) along each axis of a 4x4 affine."""
    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]
