"""Segment every case of a manifest: atomic outputs, no overwriting, one bad case never stops the rest.

Example:
    >>> report = segment_datalist(predictor, "data_manifests/synthetic.json", "outputs/predictions")  # doctest: +SKIP
    >>> report.failures  # [(case id, one-line reason), ...]
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.manifest import select_cases
from pipeline.data.scan_range import coarser_than_trained
from pipeline.errors import InputError, describe_error, describe_failure
from pipeline.inference.grid import like_reference
from pipeline.inference.lesions import LESION_COLUMNS, channel_on_grid, lesion_rows
from pipeline.inference.mni import cached_mapping
from pipeline.inference.predictor import Predictor
from pipeline.io import atomic_path, save_nifti_atomic

__all__ = ["segment_datalist", "segment_cases", "BatchReport", "check_output_dir"]

log = logging.getLogger(__name__)
# notes: what about the case's voxels lies beyond the training cases' (pipeline.data.scan_range)
VOLUME_COLUMNS = ["id", "lesion_ml", "components", "notes"]


@dataclass
class BatchReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    volumes: list[dict] = field(default_factory=list)
    lesions: list[dict] = field(default_factory=list)


def check_output_dir(output: Path, cases: list[dict]) -> None:
    """Refuse an output folder that holds any input file (outputs never overwrite inputs)."""
    out = output.resolve()
    for case in cases:
        for path in [p for p in case["image"] if p] + ([case["label"]] if case.get("label") else []):
            if out in Path(path).resolve().parents:
                raise InputError("the output folder holds this input file; choose another --output",
                                 case=str(case["id"]), path=str(path))


def segment_datalist(predictor: Predictor, manifest: str | Path, output: str | Path, split: str = "testing",
                     dataset_dir=None, overwrite: bool = False, save_prob: bool = False, save_unc: bool = False,
                     progress: bool = True, lesion_table: bool = True, mni: bool = True,
                     dicom_seg: bool = False) -> BatchReport:
    """Write ``OUT/<id>.nii.gz`` (uint8) per case (and ``_prob``/``_unc`` maps), plus ``OUT/volumes.csv`` and
    (``lesion_table``) ``OUT/lesions.csv``, with MNI locations when ``mni`` (registrations cached in
    ``OUT/registration``); ``dicom_seg`` adds ``OUT/<id>_seg.dcm`` for cases converted from DICOM."""

    return segment_cases(predictor, select_cases(manifest, split, dataset_dir), output, overwrite, save_prob,
                         save_unc, progress, lesion_table, mni, dicom_seg)


def segment_cases(predictor: Predictor, cases: list[dict], output: str | Path, overwrite: bool = False,
                  save_prob: bool = False, save_unc: bool = False, progress: bool = True, lesion_table: bool = True,
                  mni: bool = True, dicom_seg: bool = False) -> BatchReport:
    """:func:`segment_datalist` over a list of cases with absolute paths."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    output = Path(output)
    check_output_dir(output, cases)
    output.mkdir(parents=True, exist_ok=True)
    report = BatchReport()
    counts = Counter(str(c["id"]) for c in cases)
    with logging_redirect_tqdm():  # per-case warnings on their own lines, not inside the progress bar
        for case in tqdm(cases, desc="segmenting", unit="case", disable=not progress):
            cid = str(case["id"])
            if counts[cid] > 1:
                report.failures.append((cid, f"duplicate case id ({counts[cid]} cases): their outputs would collide"))
                log.error("%s: %s: %s", cid, case["image"][0], report.failures[-1][1])
                continue
            target = output / f"{cid}.nii.gz"
            if target.exists() and not overwrite:
                report.skipped.append(cid)
                log.warning("%s: %s exists; kept (use --overwrite to replace)", cid, target)
                continue
            try:
                result = predictor.predict_case(case)
                ref = result["reference"]
                notes = coarser_than_trained(ref.affine, predictor.settings.training_scans)
                if save_prob:
                    save_nifti_atomic(like_reference(result["prob"], ref, np.float32), output / f"{cid}_prob.nii.gz")
                if save_unc and result["unc"] is not None:
                    save_nifti_atomic(like_reference(result["unc"], ref, np.float32), output / f"{cid}_unc.nii.gz")
                if dicom_seg:
                    _write_seg(case, result, output / f"{cid}_seg.dcm")
                save_nifti_atomic(like_reference(result["mask"], ref, np.uint8), target)
            except Exception as err:  # noqa: BLE001 - one bad case must not stop the others
                report.failures.append((cid, describe_failure(err, case["image"][0])))
                log.error("%s: %s", cid, report.failures[-1][1])
                log.debug("traceback", exc_info=True)
                continue
            report.written.append(cid)
            if notes:
                log.warning("%s: %s: %s: expect lower accuracy", cid, case["image"][0], "; ".join(notes))
            report.volumes.append(dict(id=cid, lesion_ml=round(result["lesion_ml"], 4), components=result["components"],
                                       notes="; ".join(notes)))
            if lesion_table:
                try:
                    report.lesions += _lesions_of(case, result, predictor.settings, output / "registration" if mni
                                                  else None)
                except Exception as err:  # noqa: BLE001 - the mask is written; only its table rows are missing
                    log.error("%s: %s: no lesions.csv rows: %s", cid, case["image"][0], describe_error(err))
    _merge_csv(output / "volumes.csv", report.volumes, VOLUME_COLUMNS)
    if lesion_table:
        _merge_csv(output / "lesions.csv", report.lesions, LESION_COLUMNS, cases=report.written)
    return report


def _write_seg(case: dict, result: dict, path: Path) -> None:
    """The case's DICOM SEG, referencing the DWI series ``dicom2nifti`` recorded (none for other cases)."""
    source = case.get("dicom_source")
    if not source:
        log.warning("%s: %s: not converted from DICOM (no dicom_source in the manifest): no DICOM SEG", case["id"],
                    case["image"][0])
        return
    from pipeline.inference.dicom_seg import write_dicom_seg

    write_dicom_seg(result["mask"], result["reference"].affine, source["files"], path)


def _lesions_of(case: dict, result: dict, settings, registration_dir: Path | None) -> list[dict]:
    """``lesions.csv`` rows of one segmented case; a registration that fails leaves its MNI columns empty."""
    cid, ref = str(case["id"]), result["reference"]
    check = settings.diffusion_check or {}
    kept = result.get("channels")  # already on the scan's grid: not read and resampled again
    dwi, adc = ((kept[check[k]] if kept is not None and kept.shape[1:] == ref.shape[:3]
                 else channel_on_grid(case["image"][check[k]], ref))
                if k in check and check[k] < len(case["image"]) and case["image"][check[k]] else None
                for k in ("dwi", "adc"))
    truth = channel_on_grid(case["label"], ref, order=0) > 0.5 if case.get("label") else None
    mapping = None
    if registration_dir is not None and (result["mask"].any() or (truth is not None and truth.any())):
        try:
            mapping = cached_mapping(case["image"][0], registration_dir, cid)
        except Exception as err:  # noqa: BLE001 - no location rather than no table
            log.warning("%s: %s: registration to MNI failed (%s): no MNI location", cid, case["image"][0],
                        describe_error(err))
    return lesion_rows(cid, result["mask"], ref, result["prob"], result["unc"], dwi, adc, truth, mapping)


def _merge_csv(path: Path, rows: list[dict], columns: list[str], cases: list[str] | None = None) -> None:
    """Merge this run's rows into the CSV at ``path``: rows of the cases in ``cases`` (default: those in
    ``rows``) are replaced, the others kept, ordered by case id."""
    renewed = set(cases if cases is not None else (r["id"] for r in rows))
    old = []
    if path.is_file():
        with open(path, newline="") as f:
            old = [r for r in csv.DictReader(f) if r["id"] not in renewed]
    merged = sorted(old + rows, key=lambda r: str(r["id"]))  # stable: a case's rows stay in order
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(merged)
