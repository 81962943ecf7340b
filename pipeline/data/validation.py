"""Check every file of a manifest before hours of training are spent on it.

Every problem is collected (not only the first), one per line with the case id and the file.

Example:
    >>> problems = validate_manifest("data_manifests/synthetic.json")  # doctest: +SKIP
    >>> [str(p) for p in problems if p.severity == "error"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.data.manifest import load_manifest

__all__ = ["Problem", "validate_manifest", "read_volume", "same_grid"]

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


def read_volume(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a NIfTI file fully; raise ValueError with a plain reason when it is missing or damaged."""
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


def _check_case(case: dict, volume_index: int | None = None, label_threshold: float | None = None) -> list[Problem]:
    cid, found = str(case["id"]), []
    add = lambda sev, path, msg: found.append(Problem(sev, cid, str(path), msg))  # noqa: E731
    first = None
    for i, path in enumerate(case["image"]):
        try:
            data, img = read_volume(path)
        except ValueError as err:
            add("error", path, str(err))
            continue
        if data.ndim == 4 and data.shape[3] > 1 and volume_index is not None:
            data = data[..., volume_index]
        if data.ndim == 4 and data.shape[3] > 1:
            add("error", path, f"4D image with {data.shape[3]} volumes: choose one with the config key volume_index")
            continue
        if data.ndim != 3 and not (data.ndim == 4 and data.shape[3] == 1):
            add("error", path, f"not a 3D volume: shape {data.shape}")
            continue
        values = data.astype(np.float32, copy=False)
        bad = np.count_nonzero(~np.isfinite(values))
        if bad:
            add("error", path, f"{bad} NaN/Inf voxels")
        if not np.any(values[np.isfinite(values)]):
            add("error", path, "image is all zero")
        if i == 0:
            first = img
        elif first is not None and not same_grid(img, first):
            add("warning", path, f"on another grid than {Path(case['image'][0]).name} "
                                 f"(shape {img.shape[:3]} vs {first.shape[:3]}); it will be resampled onto it")
    label = case.get("label")
    if label:
        try:
            data, img = read_volume(label)
        except ValueError as err:
            add("error", label, str(err))
            return found
        values = np.unique(data[np.isfinite(data)]) if data.dtype.kind == "f" else np.unique(data)
        if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
            add("error", label, "label has NaN/Inf voxels")
        if label_threshold is None and not set(values.tolist()) <= {0, 1}:
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
            add("error", label, f"label is not binary: values {{{shown}}}")
        if first is not None:
            if img.shape[:3] != first.shape[:3]:
                add("error", label, f"label shape {img.shape[:3]} differs from image shape {first.shape[:3]}")
            elif not same_grid(img, first):
                diff = np.abs(img.affine - first.affine).max()
                add("error", label, f"label affine differs from the image's by up to {diff:.3g} mm")
    return found


def validate_manifest(path: str | Path, dataset_dir: str | Path | None = None, progress: bool = True,
                      workers: int | None = None, splits: tuple[str, ...] = ("training", "testing"),
                      volume_index: int | None = None, label_threshold: float | None = None) -> list[Problem]:
    """Open every file of the manifest's ``splits`` and return every problem found (errors and warnings).

    ``volume_index`` and ``label_threshold`` accept 4D images and probabilistic labels as training does.
    """
    from functools import partial

    from tqdm.auto import tqdm

    data = load_manifest(path, dataset_dir)
    cases = [c for split in splits for c in data.get(split, [])]
    problems = [Problem("error", cid, str(path), f"duplicate case id ({n} cases)")
                for cid, n in Counter(str(c["id"]) for c in cases).items() if n > 1]
    for c in data.get("training", []) if "training" in splits else []:
        if not c.get("label"):
            problems.append(Problem("error", str(c["id"]), str(path), "training case has no 'label'"))
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # zlib and numpy release the GIL
        check = partial(_check_case, volume_index=volume_index, label_threshold=label_threshold)
        for found in tqdm(pool.map(check, cases), total=len(cases), desc="validating",
                          unit="case", disable=not progress):
            problems.extend(found)
    return problems
