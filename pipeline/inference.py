"""Prediction: sliding windows (3D) or slices (2D), overlap-tile for valid-convolution nets, mirroring TTA,
post-processing, masks on the scanner grid.

The probability map is computed on the model's grid (RAS, training spacing, cropped to the head), with the
network in the configured runtime (:mod:`pipeline.runtimes`; OpenVINO on CPU by default), and put back once
onto the grid of the case's first channel (DWI): a voxel copy when the grids differ only by orientation and
crop, else MONAI's ``ResampleToMatch``; then thresholded there (nnU-Net's order). The written mask therefore
has exactly that file's shape, affine, qform and sform, whatever its orientation, obliquity or slice thickness.

Example:
    >>> predictor = Predictor.from_path("outputs/train/checkpoints/best-040.ckpt")  # doctest: +SKIP
    >>> result = predictor.predict_case({"id": "s1", "image": ["dwi.nii.gz", "adc.nii.gz", "flair.nii.gz"]})
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer, SlidingWindowInferer
from monai.transforms import ResampleToMatch

from pipeline.errors import InputError

__all__ = ["make_inferer", "logits_to_probability", "lesion_probability", "Settings", "Predictor", "Postprocess",
           "remove_small_lesions", "like_reference", "mirrorings", "to_grid", "aligned_copy"]

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
        from pipeline.overlap_tile import OverlapTileInferer

        if not isinstance(inferer, OverlapTileInferer):
            inferer = OverlapTileInferer(spatial_dims, roi_size, network.output_size, sw_batch_size)
    elif inferer is None:
        inferer = make_inferer(spatial_dims, roi_size, overlap, mode, sw_batch_size, device=stitch_device)
    net = SkipEmptyWindows(network, head) if skip_empty else network
    probs = []
    for flips in mirrorings(tta_axes):
        dims = [axis + 2 for axis in flips]
        x = torch.flip(image, dims=dims) if dims else image
        p = logits_to_probability(inferer(x, net), head)
        probs.append(torch.flip(p, dims=dims) if dims else p)
    if len(probs) == 1:
        return probs[0], None
    stack = torch.stack(probs)
    return stack.mean(0), stack.var(0, unbiased=False)


def mirrorings(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` to flip, the identity first: 2**len(axes) passes."""
    from itertools import combinations

    axes = sorted(set(int(a) for a in axes))
    return [c for n in range(len(axes) + 1) for c in combinations(axes, n)]


class Postprocess:
    """Probability -> mask: threshold, then drop 26-connected lesions under ``min_lesion_ml``.

    Example:
        >>> mask = Postprocess(threshold=0.5, min_lesion_ml=0.1)(prob, voxel_ml=0.008)  # doctest: +SKIP
    """

    def __init__(self, threshold: float = 0.5, min_lesion_ml: float = 0.0):
        self.threshold, self.min_lesion_ml = threshold, min_lesion_ml

    def __call__(self, prob: np.ndarray, voxel_ml: float) -> np.ndarray:
        return remove_small_lesions(prob >= self.threshold, voxel_ml, self.min_lesion_ml)


def remove_small_lesions(mask: np.ndarray, voxel_ml: float, min_lesion_ml: float) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_lesion_ml``."""
    if min_lesion_ml <= 0 or not mask.any():
        return mask
    return cc3d.dust(mask.astype(np.uint8), threshold=int(np.ceil(min_lesion_ml / voxel_ml)),
                     connectivity=26, in_place=False).astype(bool)


@dataclasses.dataclass
class Settings:
    """Everything inference needs besides the weights; saved with checkpoints and bundles."""

    spatial_dims: int = 3
    roi_size: Sequence[int] = (64, 64, 64)
    head: str = "softmax"
    channels: int = 3
    spacing: Sequence[float] | None = (2.0, 2.0, 2.0)
    register: bool = False
    n4: bool = False
    volume_index: int | None = None
    normalise: dict | None = None  # percentiles and head-mask block of RobustNormalised (None: its defaults)
    crop_to_head: bool = True
    overlap: float = 0.25  # measured (make bench): Dice as at 0.5 on the synthetic test split, 1.3x faster
    mode: str = "gaussian"
    sw_batch_size: int = 8  # measured (make bench): 8 windows a call keep both OpenVINO streams busy
    skip_empty: bool = True
    runtime: str = "auto"
    tta_axes: Sequence[int] = ()
    threshold: float = 0.5
    min_lesion_ml: float = 0.0
    inside_head_only: bool = True
    stitch_on_cpu_above_voxels: int = 32_000_000

    @classmethod
    def from_checkpoint(cls, hparams: dict) -> Settings:
        pre = hparams.get("preprocessing") or {}
        inferer = hparams.get("inferer") or {}
        return cls(spatial_dims=hparams["spatial_dims"], roi_size=list(hparams["roi_size"]), head=hparams["head"],
                   channels=pre.get("channels", 3), spacing=pre.get("spacing"), register=pre.get("register", False),
                   n4=pre.get("n4", False), volume_index=pre.get("volume_index"), normalise=pre.get("normalise"),
                   mode=inferer.get("mode", "gaussian"),
                   threshold=hparams.get("threshold", 0.5), min_lesion_ml=hparams.get("min_lesion_ml", 0.0))


def _network_from_checkpoint(path: Path, device) -> tuple[torch.nn.Module, Settings]:
    from pipeline.models.networks import build_network, network_weights

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt.get("network_config")
    if not config:
        raise InputError("checkpoint has no network_config: not written by this pipeline", path=str(path))
    network = build_network(**config)
    network.load_state_dict(network_weights(ckpt["state_dict"]))
    return network.to(device).eval(), Settings.from_checkpoint(ckpt["hyper_parameters"])


def _ensemble_from_cv(cv_dir: Path, device) -> tuple[torch.nn.Module, Settings]:
    """The folds' best models averaged, with the post-processing chosen by cross-validation."""
    import json

    from pipeline.cross_validation import fold_checkpoints
    from pipeline.models.networks import Ensemble

    members, settings = [], None
    for _, ckpt in sorted(fold_checkpoints(cv_dir).items()):
        network, settings = _network_from_checkpoint(ckpt, "cpu")
        members.append(network)
    if not members:
        raise InputError("no fold checkpoints in this cross-validation folder", path=str(cv_dir))
    post = json.loads((cv_dir / "postprocessing.json").read_text())
    settings = dataclasses.replace(settings, threshold=post["threshold"], min_lesion_ml=post["min_lesion_ml"])
    return Ensemble(members, settings.head).to(device).eval(), settings


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
        from pipeline.runtimes import compile_network

        s = settings
        self.device = torch.device(device)
        self.network, self.settings = network.to(self.device).eval(), settings
        self.runner = compile_network(self.network, s.runtime, self.device, s.channels, s.roi_size, onnx_model)
        self.preprocess = preprocessing or val_transforms(s.channels, s.spacing, register=s.register, n4=s.n4,
                                                          with_label=False, spatial_dims=s.spatial_dims,
                                                          volume_index=s.volume_index, crop_to_head=s.crop_to_head,
                                                          normalise=s.normalise)
        self.inferer = inferer
        self.postprocess = postprocessing or Postprocess(s.threshold, s.min_lesion_ml)

    @classmethod
    def from_path(cls, path: str | Path, device: str | None = None, **overrides) -> Predictor:
        """From a Lightning checkpoint (``.ckpt``), a bundle folder, or a cross-validation folder (its folds'
        models averaged, with the post-processing chosen on their out-of-fold predictions); ``overrides``
        replace settings."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        path, onnx_model = Path(path), None
        if path.is_dir() and (path / "postprocessing.json").is_file():
            network, settings = _ensemble_from_cv(path, device)
        elif path.is_dir():
            from pipeline.bundle import load_bundle

            network, settings = load_bundle(path, device)
            onnx_model = path / "models" / "model.onnx"
        elif path.is_file():
            network, settings = _network_from_checkpoint(path, device)
        else:
            raise InputError("model not found (give a .ckpt file or a bundle folder)", path=str(path))
        settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        return cls(network, settings, device, onnx_model=onnx_model)

    def probability(self, case: dict) -> tuple[np.ndarray, np.ndarray | None, nib.Nifti1Image]:
        """Lesion probability (and TTA variance) on the grid of the case's first image, and that image."""
        s = self.settings
        reference = nib.load(case["image"][0])
        image = self.preprocess(dict(case))["image"]
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
        native = [to_grid(m[0, 0].float().cpu().numpy(), affine, reference) if m is not None else None
                  for m in (prob, var)]
        return np.clip(native[0], 0, 1), native[1], reference

    def predict_case(self, case: dict) -> dict:
        """Mask (uint8), probability and TTA variance maps on the case's own grid, its reference image,
        lesion volume (mL) and component count."""
        prob, unc, reference = self.probability(case)
        voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000.0
        mask = self.postprocess(prob, voxel_ml)
        components = int(cc3d.connected_components(mask, connectivity=26, return_N=True)[1]) if mask.any() else 0
        return dict(mask=mask.astype(np.uint8), prob=prob.astype(np.float32), unc=unc, reference=reference,
                    lesion_ml=float(mask.sum()) * voxel_ml, components=components)


def to_grid(data: np.ndarray, affine: np.ndarray, reference: nib.Nifti1Image) -> np.ndarray:
    """A 3D map with voxel-to-world ``affine`` on the grid of ``reference`` (trilinear, zeros outside).

    Where a reference voxel is longer than the map's along an axis (a thick slice), the map is averaged over
    it, as the scanner's slice profile averages tissue (one sample per map voxel, a box profile): sampling
    only each slice's centre would let a lesion's top or bottom slice hinge on one plane.
    """
    shape = reference.shape[:3]
    copied = aligned_copy(data, affine, reference.affine, shape)
    if copied is not None:
        return copied
    ref_affine = np.asarray(reference.affine, float)
    ratio = np.linalg.norm(ref_affine[:3, :3], axis=0) / np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0).min()
    steps = [int(np.ceil(r)) if r > 1.5 else 1 for r in ratio]
    fine = ref_affine.copy()
    for axis, k in enumerate(steps):  # k sub-samples centred in each reference voxel along this axis
        fine[:3, axis] = ref_affine[:3, axis] / k
        fine[:3, 3] -= ref_affine[:3, axis] * (k - 1) / (2 * k)
    fine_shape = [n * k for n, k in zip(shape, steps, strict=True)]
    dst = MetaTensor(torch.zeros((1, *fine_shape)), affine=torch.as_tensor(fine))
    resample = ResampleToMatch(mode="bilinear", padding_mode="zeros", dtype=torch.float32)
    out = resample(MetaTensor(torch.as_tensor(data)[None], affine=torch.as_tensor(affine)), dst)[0].numpy()
    if any(k > 1 for k in steps):
        out = out.reshape(shape[0], steps[0], shape[1], steps[1], shape[2], steps[2]).mean((1, 3, 5))
    return out


def aligned_copy(src: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: Sequence[int],
                 atol: float = 1e-3) -> np.ndarray | None:
    """``src`` on the destination grid by copying voxels, when the two grids differ only by axis flips and
    permutations and a whole-voxel shift (what reorienting and cropping do); None otherwise.

    Our own because MONAI's ``ResampleToMatch`` builds a full sampling grid even then: 0.35 s of the 2.4 s
    of a 1 mm case (``make bench``), for a result this copy gives exactly.
    """
    m = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)
    rot, shift = m[:3, :3], m[:3, 3]
    perm = np.rint(rot)
    if not (np.allclose(rot, perm, atol=atol) and np.allclose(shift, np.rint(shift), atol=atol)
            and (np.abs(perm).sum(0) == 1).all() and (np.abs(perm).sum(1) == 1).all()):
        return None
    out = np.zeros(tuple(dst_shape), dtype=src.dtype)
    order, dst_index, src_index = [], [], []
    for j in range(3):  # destination axis j reads source axis i: src_i = sign * dst_j + shift_i
        i = int(np.flatnonzero(perm[:, j])[0])
        k = np.arange(dst_shape[j])
        s = (perm[i, j] * k + np.rint(shift[i])).astype(int)
        inside = (s >= 0) & (s < src.shape[i])
        order.append(i)
        dst_index.append(k[inside])
        src_index.append(s[inside])
    if all(len(k) for k in dst_index):
        out[np.ix_(*dst_index)] = src.transpose(order)[np.ix_(*src_index)]
    return out


def like_reference(data: np.ndarray, reference: nib.Nifti1Image, dtype) -> nib.Nifti1Image:
    """A NIfTI on exactly the reference's grid: its affine, qform and sform (with their codes) and units.

    The header is new: no text field of the input (descrip, aux_file, intent name) is carried over.
    """
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine)
    img.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    img.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    img.header.set_zooms(reference.header.get_zooms()[:3])
    img.header.set_xyzt_units(*reference.header.get_xyzt_units())
    return img
