"""One rule set for a case's files, used by ``python -m pipeline validate``, training and inference alike.

Every file is loaded with MONAI's ``LoadImage`` (nibabel) and checked by :class:`CaseRules`:
:class:`LoadCheckedd` (the first step of every transform chain) raises the first problem as an InputError
naming the case and the file; :func:`validate_manifest` collects every problem of a manifest, one per file,
so a file that validation passes is one that training and inference accept, and the other way round.

Example:
    >>> problems = validate_manifest("data_manifests/synthetic.json")  # doctest: +SKIP
    >>> [str(p) for p in problems if p.severity == "error"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

from pipeline.data.bvalues import sibling_bvals, trace_weighted
from pipeline.data.manifest import load_manifest
from pipeline.data.voxel_order import reorder_onto
from pipeline.errors import InputError

__all__ = ["AFFINE_ATOL_MM", "Problem", "CaseRules", "LoadCheckedd", "check_case", "validate_manifest",
           "read_volume", "same_grid", "on_grid_of"]

AFFINE_ATOL_MM = 1e-3  # header round-off between files of one grid stays far below this


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` is "error" or "warning"."""

    severity: str
    case: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.case}: {self.path}: {self.message}"


class CaseRules:
    """Load a case's files and check them; every method raises InputError with the case and the file.

    Args:
        spatial_dims: 3 refuses single-slice images (they need a 2D model).
        volume_index: which volume of a 4D image to take (e.g. -1: the last b-value); None refuses 4D images.
        label_threshold: binarise a probabilistic label at this value; None refuses non-binary labels.
        optional_channels: channels a case may lack (``null`` in its manifest ``image`` list): the model was
            trained to do without them (``augment.channel_dropout``), so they are blanked. None: any channel
            but the first may be null (``validate``, which knows no model); ``()``: none may.
    """

    def __init__(self, spatial_dims: int = 3, volume_index: int | None = None, label_threshold: float | None = None,
                 optional_channels=None):
        self.spatial_dims, self.volume_index, self.label_threshold = spatial_dims, volume_index, label_threshold
        self.optional_channels = None if optional_channels is None else {int(c) for c in optional_channels}
        self.loader = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True,
                                dtype=np.float32)

    def absent(self, channel: int, case: str) -> None:
        """Refuse a channel given as ``null`` unless the model can do without it."""
        where = f"image[{channel}]"
        if channel == 0:
            raise InputError("channel 0 has no file (null): the first channel is the reference grid", case, where)
        allowed = self.optional_channels
        if allowed is not None and channel not in allowed:
            can = f"only without channel(s) {sorted(allowed)}" if allowed else "only with every channel"
            raise InputError(f"channel {channel} has no file (null in the manifest); this model works {can}",
                             case, where)

    def load(self, path, case: str):
        if not Path(path).is_file():
            raise InputError("missing file", case=case, path=str(path))
        try:
            img = self.loader(path)
            # (x, y, z, 1, 1), as some converters store a volume: MONAI reads it (1, x, y, z, 1)
            return img[..., 0] if img.dim() == 5 and img.shape[-1] == 1 else img
        except Exception as err:  # noqa: BLE001 - nibabel and gzip raise many types for damaged files
            if str(path).endswith(".gz") and _uncompressed_nifti(path):
                raise InputError("named .gz but not gzip-compressed: rename it without .gz (or gzip it)",
                                 case=case, path=str(path)) from None
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"unreadable, truncated or not a NIfTI file ({reason})", case=case, path=str(path)) \
                from None

    def image(self, img, case: str, path):
        """The checked image (one volume of a 4D file when ``volume_index`` says which; with a ``.bval`` file
        beside it and no ``volume_index``, the trace-weighted image of its highest b-value)."""
        fail = lambda msg: InputError(msg, case=case, path=str(path))  # noqa: E731
        if img.dim() == 3:
            raise fail(f"2D image {tuple(img.shape[1:])}: the pipeline reads 3D volumes (a 2D model "
                       "segments their axial slices)")
        if img.dim() != 4:
            raise fail(f"image has {img.dim() - 1} spatial dimensions; expected 3")
        if img.shape[0] > 1 and self.volume_index is None and (bvals := sibling_bvals(path)) is not None:
            if len(bvals) != img.shape[0]:
                raise fail(f"4D image with {img.shape[0]} volumes but {len(bvals)} b-values in its .bval file")
            img = MetaTensor(trace_weighted(img.as_tensor(), bvals), meta=dict(img.meta))  # dcm2niix's series
        if img.shape[0] > 1:
            if self.volume_index is None:
                raise fail(f"4D image with {img.shape[0]} volumes: choose one with the config key volume_index "
                           "(e.g. the last: train --volume_index -1, infer/validate --volume-index -1), or put "
                           "its .bval file beside it (the highest b-value's trace is then taken)")
            if not -img.shape[0] <= self.volume_index < img.shape[0]:
                raise fail(f"volume_index {self.volume_index} is outside the image's {img.shape[0]} volumes")
            img = img[self.volume_index: self.volume_index + 1 or None]
        # MONAI and nibabel (which writes the outputs) read a header each: a broken one may fool only one of them
        affines = [np.asarray(img.affine, float), np.asarray(nib.load(str(path)).affine, float)]
        if (problem := next(filter(None, map(_degenerate_affine, affines)), None)) is not None:
            raise fail(f"header gives no usable voxel grid ({problem}): fix the header, e.g. convert the scan "
                       "from its DICOM again")
        if self.spatial_dims == 3 and 1 in img.shape[1:]:
            raise fail(f"single-slice image {tuple(img.shape[1:])} given to a 3D model; use a 2D model "
                       "(spatial_dims 2) or the whole volume")
        values = img.as_tensor()  # plain tensor: no MetaTensor bookkeeping on whole-volume checks
        low, high = (float(v) for v in torch.aminmax(values))  # NaN and Inf reach these (1 ms; isfinite 15 ms)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise fail(f"{int((~torch.isfinite(values)).sum())} NaN/Inf voxels; if they are background (some "
                       "fitting tools write NaN where no ADC was fitted), write them as 0, e.g. fslmaths IN -nan OUT")
        if low == high:  # a blank channel (failed export, wrong series) holds nothing to segment
            raise fail("image is all zero" if high == 0 else f"image is constant (every voxel {high:g})")
        return img

    def label(self, label, reference, case: str, path):
        """The checked label on ``reference``'s grid (binarised at ``label_threshold`` when set)."""
        fail = lambda msg: InputError(msg, case=case, path=str(path))  # noqa: E731
        if label.dim() == 4 and label.shape[0] > 1:
            raise fail(f"label has {label.shape[0]} volumes; expected one")
        if not on_grid_of(label, reference):
            reordered = reorder_onto(label[0].numpy(), np.asarray(label.affine), np.asarray(reference.affine),
                                     reference.shape[1:])
            if reordered is None:  # resampling a mask across grids would change the annotation: refuse
                if tuple(label.shape[1:]) != tuple(reference.shape[1:]):
                    raise fail(f"label shape {tuple(label.shape[1:])} differs from image shape "
                               f"{tuple(reference.shape[1:])}")
                diff = float((label.affine - reference.affine).abs().max())
                raise fail(f"label affine differs from the image's by up to {diff:.3g} mm")
            # the same voxels in another order (LPS vs RAS, reversed slices): copied onto the image's grid
            meta = {k: v for k, v in reference.meta.items() if k != "affine"}
            meta["filename_or_obj"] = label.meta.get("filename_or_obj", str(path))
            label = MetaTensor(torch.from_numpy(reordered)[None], affine=reference.affine.clone(), meta=meta)
        if not bool(torch.isfinite(label).all()):
            raise fail("label has NaN/Inf voxels")
        if self.label_threshold is not None:
            return (label >= self.label_threshold).float()
        values = torch.unique(label)
        if not set(values.tolist()) <= {0.0, 1.0}:
            shown = ", ".join(f"{v:g}" for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
            raise fail(f"label is not binary: values {{{shown}}}; set label_threshold "
                       "(e.g. 0.5: every value at or above it is lesion) to binarise it")
        return label


class LoadCheckedd(MapTransform):
    """Load channel files and a label (channel-first MetaTensors) and check them with :class:`CaseRules`.

    Args:
        keys: the channel keys, each holding one file path; the first is the reference grid.
        label_key: the label's key, or None (inference).
        spatial_dims, volume_index, label_threshold: as :class:`CaseRules`.
    """

    def __init__(self, keys, label_key: str | None = "label", spatial_dims: int = 3, volume_index: int | None = None,
                 label_threshold: float | None = None, optional_channels=()):
        super().__init__(keys)
        self.label_key = label_key
        self.rules = CaseRules(spatial_dims, volume_index, label_threshold, optional_channels)

    def __call__(self, data):
        d = dict(data)
        case = str(d.get("id", "?"))
        for i, key in enumerate(self.keys):
            if d[key] is None:  # a channel the case lacks: zeros on the first channel's grid, 0 after normalisation
                self.rules.absent(i, case)
                d[key] = MetaTensor(torch.zeros_like(d[self.keys[0]].as_tensor()), meta=dict(d[self.keys[0]].meta))
                continue
            d[key] = self.rules.image(self.rules.load(d[key], case), case, d[key])
        if self.label_key and self.label_key in d:
            path = d[self.label_key]
            d[self.label_key] = self.rules.label(self.rules.load(path, case), d[self.keys[0]], case, path)
        return d


def _orientation_unknown(path) -> bool:
    """Whether a file's header says nothing of its orientation: a NIfTI with qform and sform codes 0, or ANALYZE;
    FreeSurfer's MGH/MGZ always holds its scanner affine."""
    header = nib.load(str(path)).header
    if isinstance(header, nib.Nifti1Header):  # NIfTI-2's header derives from it
        return not int(header["qform_code"]) and not int(header["sform_code"])
    return isinstance(header, nib.AnalyzeHeader)


def _degenerate_affine(affine: np.ndarray) -> str | None:
    """Why a voxel-to-scanner affine cannot place voxels (not finite, a zero-length or collinear voxel axis),
    or None."""
    if not np.isfinite(affine).all():
        return "affine not finite"
    rzs = affine[:3, :3]
    sizes = np.linalg.norm(rzs, axis=0)
    if (sizes < 1e-6).any():
        return f"voxel size {tuple(round(float(v), 6) for v in sizes)} mm"
    if abs(np.linalg.det(rzs)) < 1e-3 * float(np.prod(sizes)):
        return "voxel axes collinear: affine determinant 0"
    return None


def check_case(case: dict, rules: CaseRules) -> list[Problem]:
    """Every file's first problem (errors), and channels on another grid than the first (warnings)."""
    cid, found, first = str(case["id"]), [], None
    for i, path in enumerate(case["image"]):
        try:
            if path is None:
                rules.absent(i, cid)
                found.append(Problem("warning", cid, f"image[{i}]", f"channel {i} has no file (null): blanked, for "
                                     "models trained to do without it (augment.channel_dropout); others refuse "
                                     "the case"))
                continue
            img = rules.image(rules.load(path, cid), cid, path)
        except InputError as err:
            found.append(Problem("error", cid, str(err.path or path), err.reason))  # a null channel: image[i]
            continue
        if _orientation_unknown(path):
            found.append(Problem("warning", cid, str(path), "no orientation in the header (qform and sform codes "
                                 "0, or ANALYZE): its voxel axes are taken as R, A, S; check the mask's side"))
        if i == 0:
            first = img
        elif first is not None and not on_grid_of(img, first):
            from pipeline.data.sitk_transforms import coverage_fraction

            share = coverage_fraction(img.affine, img.shape[1:], first.affine, first.shape[1:])
            if share == 0:
                found.append(Problem("error", cid, str(path), f"does not overlap {Path(case['image'][0]).name}'s "
                                     "field of view at all: a wrong file or a broken header"))
                continue
            found.append(Problem("warning", cid, str(path), f"on another grid than {Path(case['image'][0]).name} "
                                 f"(shape {tuple(img.shape[1:])} vs {tuple(first.shape[1:])}; it covers "
                                 f"{share:.0%} of it); it will be resampled onto it"))
    if case.get("label") and first is not None:
        try:
            label = rules.load(case["label"], cid)
            rules.label(label, first, cid, case["label"])
            if not on_grid_of(label, first):
                found.append(Problem("warning", cid, str(case["label"]), "stored in another voxel order than "
                                     f"{Path(case['image'][0]).name} (axes flipped or permuted): copied onto "
                                     "its grid voxel for voxel"))
        except InputError as err:
            found.append(Problem("error", cid, str(case["label"]), err.reason))
    elif case.get("label") and not Path(case["label"]).is_file():
        found.append(Problem("error", cid, str(case["label"]), "missing file"))
    return found


def validate_manifest(path: str | Path, dataset_dir: str | Path | None = None, progress: bool = True,
                      workers: int | None = None, splits: tuple[str, ...] = ("training", "testing"),
                      spatial_dims: int = 3, volume_index: int | None = None,
                      label_threshold: float | None = None) -> list[Problem]:
    """Open every file of the manifest's ``splits`` and return every problem found (errors and warnings),
    with the rules training and inference apply (``spatial_dims``, ``volume_index``, ``label_threshold``)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    data = load_manifest(path, dataset_dir)
    cases = [c for split in splits for c in data.get(split, [])]
    problems = [Problem("error", cid, str(path), f"duplicate case id ({n} cases)")
                for cid, n in Counter(str(c["id"]) for c in cases).items() if n > 1]
    for c in data.get("training", []) if "training" in splits else []:
        if not c.get("label"):
            problems.append(Problem("error", str(c["id"]), str(path), "training case has no 'label'"))
    rules = CaseRules(spatial_dims, volume_index, label_threshold)
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:  # zlib and numpy release the GIL
        for found in tqdm(pool.map(lambda c: check_case(c, rules), cases), total=len(cases), desc="validating",
                          unit="case", disable=not progress):
            problems.extend(found)
    return problems


def read_volume(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a NIfTI file fully (masks, for evaluation); raise ValueError with a plain reason when it is missing
    or damaged."""
    path = Path(path)
    if not path.exists():
        raise ValueError("missing file")
    try:
        img = nib.load(path)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for foreign files
        raise ValueError(f"unreadable, not a NIfTI file ({type(err).__name__}: {err})") from None
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, OSError, ValueError) as err:
        raise ValueError(f"truncated or corrupt data ({type(err).__name__}: {err})") from None
    return data, img


def same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image) -> bool:
    """Whether two images share shape (first three axes) and affine (to ``AFFINE_ATOL_MM``, as training checks)."""
    return a.shape[:3] == b.shape[:3] and float(np.abs(a.affine - b.affine).max()) <= AFFINE_ATOL_MM


def on_grid_of(a, b) -> bool:
    """Whether two channel-first MetaTensors share the spatial shape and affine (to ``AFFINE_ATOL_MM``)."""
    return tuple(a.shape[1:]) == tuple(b.shape[1:]) and float((a.affine - b.affine).abs().max()) <= AFFINE_ATOL_MM


def _uncompressed_nifti(path) -> bool:
    """Whether a file starts as an uncompressed NIfTI-1/-2 header does (sizeof_hdr 348 or 540, either byte order)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and {int.from_bytes(head, "little"), int.from_bytes(head, "big")} & {348, 540} != set()
