"""Loading with checks: every problem with a case's files becomes one InputError naming the case and file.

Used by the deterministic transform chain, so training, inference, evaluation and bundles all refuse bad
files the same way (``python -m pipeline validate`` reports the same problems for a whole manifest).

Example:
    >>> load = LoadCheckedd(["image_0", "image_1"], label_key="label", spatial_dims=3)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.transforms import LoadImage, MapTransform

from pipeline.data.validation import AFFINE_ATOL_MM
from pipeline.errors import InputError

__all__ = ["LoadCheckedd"]


class LoadCheckedd(MapTransform):
    """Load channel files and a label with nibabel (channel-first MetaTensors) and check them.

    Args:
        keys: the channel keys, each holding one file path; the first is the reference grid.
        label_key: the label's key, or None (inference).
        spatial_dims: 3 refuses single-slice images (they need a 2D model).
        volume_index: which volume of a 4D image to take (e.g. -1: the last b-value of a DWI series);
            None refuses 4D images.
        label_threshold: binarise a probabilistic label at this value; None refuses non-binary labels.
    """

    def __init__(self, keys, label_key: str | None = "label", spatial_dims: int = 3, volume_index: int | None = None,
                 label_threshold: float | None = None):
        super().__init__(keys)
        self.label_key, self.spatial_dims = label_key, spatial_dims
        self.volume_index, self.label_threshold = volume_index, label_threshold
        self.loader = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True,
                                dtype=np.float32)

    def _load(self, path, case: str):
        if not Path(path).is_file():
            raise InputError("missing file", case=case, path=str(path))
        try:
            return self.loader(path)
        except Exception as err:  # noqa: BLE001 - nibabel and gzip raise many types for damaged files
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"unreadable, truncated or not a NIfTI file ({reason})", case=case, path=str(path)) \
                from None

    def _check_image(self, img, case: str, path):
        fail = lambda msg: InputError(msg, case=case, path=str(path))  # noqa: E731
        if img.dim() == 3:
            raise fail(f"2D image {tuple(img.shape[1:])}: the pipeline reads 3D volumes (a 2D model "
                       "segments their axial slices)")
        if img.dim() != 4:
            raise fail(f"image has {img.dim() - 1} spatial dimensions; expected 3")
        if img.shape[0] > 1:
            if self.volume_index is None:
                raise fail(f"4D image with {img.shape[0]} volumes: choose one with the config key volume_index "
                           "(e.g. --volume_index -1 for the last)")
            if not -img.shape[0] <= self.volume_index < img.shape[0]:
                raise fail(f"volume_index {self.volume_index} is outside the image's {img.shape[0]} volumes")
            img = img[self.volume_index: self.volume_index + 1 or None]
        if self.spatial_dims == 3 and 1 in img.shape[1:]:
            raise fail(f"single-slice image {tuple(img.shape[1:])} given to a 3D model; use a 2D model "
                       "(spatial_dims 2) or the whole volume")
        values = img.as_tensor()  # plain tensor: no MetaTensor bookkeeping on whole-volume checks
        if not bool(torch.isfinite(values).all()):
            raise fail(f"{int((~torch.isfinite(values)).sum())} NaN/Inf voxels")
        if not bool(values.any()):
            raise fail("image is all zero")
        return img

    def _check_label(self, label, reference, case: str, path):
        fail = lambda msg: InputError(msg, case=case, path=str(path))  # noqa: E731
        if label.dim() == 4 and label.shape[0] > 1:
            raise fail(f"label has {label.shape[0]} volumes; expected one")
        if tuple(label.shape[1:]) != tuple(reference.shape[1:]):
            raise fail(f"label shape {tuple(label.shape[1:])} differs from image shape {tuple(reference.shape[1:])}")
        diff = float((label.affine - reference.affine).abs().max())
        if diff > AFFINE_ATOL_MM:
            raise fail(f"label affine differs from the image's by up to {diff:.3g} mm")
        if not bool(torch.isfinite(label).all()):
            raise fail("label has NaN/Inf voxels")
        if self.label_threshold is not None:
            return (label >= self.label_threshold).float()
        values = torch.unique(label)
        if not set(values.tolist()) <= {0.0, 1.0}:
            shown = ", ".join(f"{v:g}" for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
            raise fail(f"label is not binary: values {{{shown}}}; set label_threshold to binarise probabilities")
        return label

    def __call__(self, data):
        d = dict(data)
        case = str(d.get("id", "?"))
        for key in self.keys:
            d[key] = self._check_image(self._load(d[key], case), case, d[key])
        if self.label_key and self.label_key in d:
            path = d[self.label_key]
            d[self.label_key] = self._check_label(self._load(path, case), d[self.keys[0]], case, path)
        return d
