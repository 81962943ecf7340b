"""Data manifests: MONAI datalist JSON built from ISLES'22 or ATLAS R2.0 trees, read back, split into folds.

A manifest is what ``monai.data.load_decathlon_datalist`` reads, plus a few keys of our own::

    {"dataset_dir": "../data/synthetic",           # relative to this file unless absolute
     "layout": "isles22", "channels": ["dwi", "adc", "flair"],
     "training": [{"id": "sub-strokecase0001", "image": ["sub-.../dwi/..._dwi.nii.gz", ...],
                   "label": "derivatives/...", "fold": 0, "lesion_ml": 12.5}],
     "testing":  [{"id": ..., "image": [...], "label": ...}]}

A ``null`` in ``image`` is a sequence the case lacks (no FLAIR): models trained to do without that channel
(``augment.channel_dropout``, listed as ``optional_channels``) see it blank; others refuse the case.

Example:
    >>> data = build_manifest("ISLES-2022", layout="isles22", folds=5, test_fraction=0.2)  # doctest: +SKIP
    >>> write_manifest(data, "data_manifests/isles22.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from pipeline.errors import InputError

__all__ = ["LAYOUTS", "build_manifest", "write_manifest", "load_manifest", "select_cases", "stratified_split"]

log = logging.getLogger(__name__)

LAYOUTS = {"isles22": ["dwi", "adc", "flair"], "atlas": ["t1w"]}


def _find_isles22(root: Path) -> list[dict]:
    cases = []
    for dwi in sorted(root.glob("sub-*/ses-*/dwi/*_dwi.nii*")):
        subject, session = dwi.parts[-4], dwi.parts[-3]
        stem = f"{subject}_{session}"
        ext = ".nii.gz" if dwi.name.endswith(".gz") else ".nii"
        adc = dwi.parent / f"{stem}_adc{ext}"
        flair = root / subject / session / "anat" / f"{stem}_FLAIR{ext}"
        label = root / "derivatives" / subject / session / f"{stem}_msk{ext}"
        case_id = subject if session == "ses-0001" else stem
        # no FLAIR: null, which models trained with FLAIR dropout blank (a missing DWI or ADC stays an error)
        cases.append(dict(id=case_id, image=[dwi, adc, flair if flair.exists() else None],
                          label=label if label.exists() else None))
    return cases


def _find_atlas(root: Path) -> list[dict]:
    cases = []
    for t1 in sorted(root.glob("**/sub-*/ses-*/anat/*_T1w.nii*")):
        subject, session = t1.parts[-4], t1.parts[-3]
        ext = ".nii.gz" if t1.name.endswith(".gz") else ".nii"
        labels = sorted(t1.parent.glob(f"{subject}_{session}_*label-L_desc-T1lesion_mask{ext}"))
        cases.append(dict(id=subject, image=[t1], label=labels[0] if labels else None))
    return cases


def _lesion_ml(path: Path) -> float:
    """Lesion volume of a mask file in mL, NaN when it cannot be read (validation reports why)."""
    import nibabel as nib

    try:
        img = nib.load(path)
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        return float(np.count_nonzero(np.asanyarray(img.dataobj) > 0.5)) * voxel_ml
    except Exception as err:  # noqa: BLE001 - any read failure is reported by `validate`
        log.warning("cannot read %s (%s); it is placed as lesion-free for the split", path, err)
        return float("nan")


def stratified_split(volumes: np.ndarray, folds: int, test_fraction: float, seed: int):
    """Test flags and fold ids, stratified by lesion volume.

    Cases are sorted by volume; from each run of ``round(1/test_fraction)`` neighbours one goes to the
    test split, and the rest are dealt folds in random order within each run of ``folds`` neighbours,
    so every fold (and the test split) spans small to large lesions.
    """
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(volumes)), np.nan_to_num(volumes, nan=0.0)))
    is_test = np.zeros(len(volumes), bool)
    if test_fraction > 0:
        step = max(int(round(1 / test_fraction)), 1)
        for start in range(0, len(order), step):
            block = order[start:start + step]
            if len(block) == step or rng.random() < len(block) / step:
                is_test[rng.choice(block)] = True
    fold = np.full(len(volumes), -1)
    rest = order[~is_test[order]]
    if 0 < len(rest) < folds:  # every fold needs a validation case
        log.warning("only %d training case(s): %d fold(s) instead of %d", len(rest), len(rest), folds)
        folds = len(rest)
    for start in range(0, len(rest), folds):
        block = rest[start:start + folds]
        fold[block] = rng.permutation(folds)[: len(block)]
    return is_test, fold


def build_manifest(root: str | Path, layout: str = "isles22", folds: int = 5, test_fraction: float = 0.2,
                   seed: int = 0, progress: bool = True) -> dict:
    """Build a manifest from a tree laid out as a public release (``layout``: isles22 or atlas).

    Labelled cases are split into a test set and ``folds`` cross-validation folds, stratified by lesion
    volume; unlabelled cases (ATLAS ``Testing``) go to ``testing`` without a label. Paths are relative to
    ``root``, which becomes ``dataset_dir``.
    """
    from tqdm.auto import tqdm

    root = Path(root).resolve()
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}", path=str(root))
    if not root.is_dir():
        raise InputError("data set folder does not exist", path=str(root))
    cases = _find_isles22(root) if layout == "isles22" else _find_atlas(root)
    if not cases:
        pattern = "sub-*/ses-*/dwi/*_dwi.nii.gz" if layout == "isles22" else "**/sub-*/ses-*/anat/*_T1w.nii.gz"
        raise InputError(f"no {layout} cases found (looked for {pattern})", path=str(root))
    labelled = [c for c in cases if c["label"] is not None]
    volumes = np.array([_lesion_ml(c["label"]) for c in tqdm(labelled, desc="reading masks", disable=not progress)])
    is_test, fold = stratified_split(volumes, folds, test_fraction, seed)
    folds = int(fold.max()) + 1 if (fold >= 0).any() else folds

    def entry(case, **extra):
        out = dict(id=case["id"], image=[p.relative_to(root).as_posix() if p else None for p in case["image"]])
        if case["label"] is not None:
            out["label"] = case["label"].relative_to(root).as_posix()
        return out | extra

    training, testing = [], []
    for case, test, k, ml in zip(labelled, is_test, fold, volumes, strict=False):
        extra = dict(lesion_ml=None if np.isnan(ml) else round(float(ml), 3))
        (testing if test else training).append(entry(case, **extra) if test else entry(case, fold=int(k), **extra))
    testing += [entry(c) for c in cases if c["label"] is None]
    log.info("%d cases: %d training in %d folds, %d testing", len(cases), len(training), folds, len(testing))
    return dict(name=f"{layout} manifest of {root.name}", layout=layout, channels=LAYOUTS[layout],
                dataset_dir=str(root), folds=folds, seed=seed, training=training, testing=testing)


def write_manifest(data: dict, path: str | Path) -> Path:
    """Write a manifest, storing ``dataset_dir`` relative to the manifest's own folder."""
    from pipeline.io import write_json_atomic

    path = Path(path).resolve()
    data = dict(data)
    if data.get("dataset_dir") and Path(data["dataset_dir"]).is_absolute():
        data["dataset_dir"] = Path(os.path.relpath(data["dataset_dir"], path.parent)).as_posix()
    return write_json_atomic(data, path)


def read_manifest_json(path: str | Path) -> dict:
    """Read and structurally check a manifest file; raise InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError("manifest file not found", path=str(path))
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"manifest is not valid JSON ({err})", path=str(path)) from None
    if not isinstance(data, dict) or not ({"training", "testing"} & data.keys()):
        raise InputError("manifest needs a 'training' and/or 'testing' list", path=str(path))
    for key in ("training", "testing"):
        entries = data.get(key, [])
        if not isinstance(entries, list):
            raise InputError(f"'{key}' must be a list of cases", path=str(path))
        for i, case in enumerate(entries):
            if not isinstance(case, dict) or "image" not in case:
                raise InputError(f"{key}[{i}] has no 'image'", case=str(case.get("id", i)) if isinstance(case, dict)
                                 else str(i), path=str(path))
    return data


def resolve_dataset_dir(manifest_path: str | Path, data: dict, dataset_dir: str | Path | None = None) -> Path:
    """The folder that case paths are relative to: the override, else ``dataset_dir`` (relative to
    the manifest), else the manifest's own folder."""
    base = Path(manifest_path).resolve().parent
    if dataset_dir is not None:
        return Path(dataset_dir).resolve()
    return (base / data["dataset_dir"]).resolve() if data.get("dataset_dir") else base


def load_manifest(path: str | Path, dataset_dir: str | Path | None = None) -> dict:
    """Read a manifest with every ``image``/``label`` path made absolute.

    Every case gets an ``id`` (its first image's name when the manifest gives none) and ``image`` is
    always a list.
    """
    data = read_manifest_json(path)
    root = resolve_dataset_dir(path, data, dataset_dir)
    out = dict(data, dataset_dir=str(root))
    for key in ("training", "testing"):
        cases = []
        for i, case in enumerate(data.get(key, [])):
            images = case["image"] if isinstance(case["image"], list) else [case["image"]]
            case = dict(case, image=[None if p is None else str(root / p) for p in images])  # null: a missing channel
            if "id" not in case:  # the first image's name (a null first channel is refused later, by its case)
                case["id"] = Path(images[0]).name.split(".")[0] if images and images[0] else f"{key}[{i}]"
            if case.get("label"):
                case["label"] = str(root / case["label"])
            cases.append(case)
        out[key] = cases
    return out


def select_cases(manifest: str | Path, split: str = "testing", dataset_dir=None) -> list[dict]:
    """Cases of ``testing``, ``training`` or ``all``, with absolute paths."""
    data = load_manifest(manifest, dataset_dir)
    if split not in ("testing", "training", "all"):
        raise InputError(f"split must be testing, training or all, not {split!r}", path=str(manifest))
    return (data.get("training", []) + data.get("testing", [])) if split == "all" else data.get(split, [])
