"""DICOM in: the DWI, ADC and FLAIR series under a folder become an ISLES'22-layout NIfTI tree and a manifest.

Series are found with SimpleITK's GDCM series reader (which orders slices along the slice normal and keeps
the scanner geometry), told apart by their description, protocol, sequence name and image type, and grouped
by patient and study into subjects. A series with several volumes at the same slice positions (b=0 and
b=1000 in one series) keeps the volume with the highest b-value. Each manifest case records its DWI series
(``dicom_source``) so that ``infer --dicom-seg`` can write a DICOM SEG that references it. A subject without a
DWI or ADC series is reported in one line and left out; the others are converted. A subject without FLAIR is
converted with FLAIR ``null`` in the manifest (a warning), which models trained with FLAIR dropout accept.

Example:
    >>> manifest = dicom_to_nifti("incoming/", "data/from_dicom")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.io import atomic_path

__all__ = ["Series", "find_series", "classify", "dicom_to_nifti", "CHANNELS"]

log = logging.getLogger(__name__)
CHANNELS = ("dwi", "adc", "flair")
OPTIONAL = ("flair",)  # a study without it is kept, FLAIR null (models trained with FLAIR dropout)
_KEYWORDS = (("adc", ("adc", "apparent diffusion")), ("flair", ("flair", "dark fluid", "tirm")),
             ("dwi", ("dwi", "diffusion", "trace", "ep2d_diff", "ep_b", "b1000")))
_BVALUE_TAGS = ((0x0018, 0x9087), (0x0019, 0x100C), (0x0043, 0x1039))  # standard, Siemens, GE (first value)


@dataclass
class Series:
    """One DICOM series: its UID, files (in slice order), and what the first file says about it."""

    uid: str
    files: list[str]
    patient: str
    study: str
    description: str
    number: int
    kind: str | None = None
    bvalues: list[float] = field(default_factory=list)
    problem: str | None = None  # why it cannot be converted (a damaged file, a missing slice)
    headers: list = field(default_factory=list, repr=False)  # of ``files``, read once without pixel data


def classify(ds) -> str | None:
    """``dwi``, ``adc``, ``flair`` or None, from the series description, protocol, sequence name and image type."""
    text = " ".join(str(getattr(ds, key, "")) for key in ("SeriesDescription", "ProtocolName", "SequenceName"))
    text = (text + " " + " ".join(str(v) for v in getattr(ds, "ImageType", []))).lower()
    for kind, words in _KEYWORDS:
        if any(word in text for word in words):
            return kind
    return None


def _bvalue(ds) -> float | None:
    """The diffusion b-value from the standard tag or a vendor's private one (bytes or a list: its first value)."""
    for tag in _BVALUE_TAGS:
        if tag not in ds:
            continue
        value = ds[tag].value
        if isinstance(value, bytes):
            value = value.decode(errors="ignore").strip("\0 ").split("\\")[0]
        elif hasattr(value, "__len__") and not isinstance(value, str):
            value = value[0] if len(value) else None
        try:
            b = float(value)
        except (TypeError, ValueError):
            continue
        return b % 1e9 if b >= 1e9 else b  # GE writes some b-values plus 10^9
    return None


def find_series(root: str | Path) -> list[Series]:
    """Every DICOM series in the folders under ``root``, classified and checked (:func:`_check`)."""
    import pydicom
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    out = []
    for folder in sorted({p.parent for p in Path(root).rglob("*") if p.is_file()}):
        found = []
        for uid in reader.GetGDCMSeriesIDs(str(folder)) or ():
            files = list(reader.GetGDCMSeriesFileNames(str(folder), uid))
            headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
            first = headers[0]
            series = Series(uid, files, str(getattr(first, "PatientID", "") or "anonymous"),
                            str(getattr(first, "StudyInstanceUID", "")), str(getattr(first, "SeriesDescription", "")),
                            int(getattr(first, "SeriesNumber", 0) or 0), classify(first))
            series.bvalues = [_bvalue(h) for h in headers]
            series.headers = headers
            try:
                series.files, series.headers = _one_volume(series, headers)
            except InputError as err:
                series.problem = str(err)
            found.append(series)
        _check(folder, found)
        out += found
    return out


def _check(folder: Path, series: list[Series]) -> None:
    """Mark series that cannot be converted faithfully: an image file of theirs that the series reader left out
    (damaged), pixel data shorter than the header says, or a gap in the slice positions (a missing file)."""
    import pydicom

    listed = {str(Path(f).resolve()) for s in series for f in s.files}
    by_uid = {s.uid: s for s in series}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and str(p.resolve()) not in listed):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM (a note, a DICOMDIR's neighbour): not ours
            continue
        owner = by_uid.get(str(getattr(ds, "SeriesInstanceUID", "")))
        if owner is not None and "ImagePositionPatient" in ds and not owner.problem:
            owner.problem = f"{path}: damaged DICOM file (left out by the series reader)"
    for s in series:
        if s.problem:
            continue
        for path in s.files:
            ds = pydicom.dcmread(path)
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if syntax is not None and not syntax.is_compressed and "PixelData" in ds:
                expected = int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1)) \
                    * int(ds.BitsAllocated) // 8 * int(getattr(ds, "NumberOfFrames", 1) or 1)
                if len(ds.PixelData) < expected:
                    s.problem = f"{path}: pixel data cut short ({len(ds.PixelData)} of {expected} bytes)"
                    break
        if not s.problem:
            s.problem = _slice_gap(s)


def _slice_gap(series: Series) -> str | None:
    """A one-line problem when the slice positions along the normal are not evenly spaced (a file missing)."""
    headers = series.headers
    if len(headers) < 3 or any("ImagePositionPatient" not in h for h in headers):
        return None
    orientation = np.asarray(headers[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    steps = np.diff(np.sort([float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))) for h in headers]))
    if steps.min() <= 0 or steps.max() > 1.5 * np.median(steps):
        return (f"slice positions of series {series.description!r} are not evenly spaced (steps {steps.min():.2f}-"
                f"{steps.max():.2f} mm): a slice is missing or repeated in {Path(series.files[0]).parent}")
    return None


def _one_volume(series: Series, headers) -> tuple[list[str], list]:
    """The files (and headers) of one volume: all, or those of the highest b-value when positions repeat."""
    positions = [tuple(round(float(v), 2) for v in getattr(h, "ImagePositionPatient", ())) for h in headers]
    if len(set(positions)) == len(positions):
        return series.files, headers
    known = [b for b in series.bvalues if b is not None]
    if not known:
        raise InputError(f"series {series.description!r} has {len(positions)} images at {len(set(positions))} "
                         "slice positions and no b-values to tell its volumes apart", path=str(series.files[0]))
    top = max(known)
    kept = [i for i, b in enumerate(series.bvalues) if b == top]
    return [series.files[i] for i in kept], [headers[i] for i in kept]


def _subject_id(patient: str, index: int) -> str:
    clean = re.sub(r"[^A-Za-z0-9]", "", patient) or f"{index:04d}"
    return f"sub-{clean}"


def _write_series(series: Series, path: Path) -> None:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series.files)
    image = reader.Execute()
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def dicom_to_nifti(root: str | Path, out: str | Path, manifest: str | Path | None = None) -> dict:
    """Convert the DWI/ADC/FLAIR series under ``root`` into ``out`` (ISLES'22 layout) and write the manifest
    (default ``out/dataset.json``); returns it, with the subjects that could not be converted under
    ``failed`` as (subject, one-line reason)."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise InputError("no such folder", path=str(root))
    series = find_series(root)
    if not series:
        raise InputError("no DICOM series found", path=str(root))
    studies = defaultdict(list)
    for s in series:
        studies[(s.patient, s.study)].append(s)
    cases, failed, seen = [], [], defaultdict(int)
    for index, ((patient, _), members) in enumerate(sorted(studies.items())):
        subject = _subject_id(patient, index)
        seen[subject] += 1
        session = f"ses-{seen[subject]:04d}"
        chosen = {}
        for kind in CHANNELS:
            found = sorted((s for s in members if s.kind == kind), key=lambda s: s.number)
            if len(found) > 1:
                log.warning("%s: %d %s series; using series %d (%s)", subject, len(found), kind, found[0].number,
                            found[0].description)
            if found:
                chosen[kind] = found[0]
        damaged = next((s.problem for s in chosen.values() if s.problem), None)
        if damaged:
            failed.append((subject, damaged))
            continue
        missing = [k for k in CHANNELS if k not in chosen and k not in OPTIONAL]
        found = ", ".join(repr(s.description) for s in members)
        if missing:
            failed.append((subject, f"no {' or '.join(missing).upper()} series among {found} in "
                                    f"{Path(members[0].files[0]).parent}"))
            continue
        paths = {"dwi": f"{subject}/{session}/dwi/{subject}_{session}_dwi.nii.gz",
                 "adc": f"{subject}/{session}/dwi/{subject}_{session}_adc.nii.gz",
                 "flair": f"{subject}/{session}/anat/{subject}_{session}_FLAIR.nii.gz"}
        for kind in (k for k in OPTIONAL if k not in chosen):
            log.warning("%s: no %s series among %s: %s left null (models trained with its dropout do without it)",
                        subject, kind.upper(), found, kind.upper())
        try:
            for kind in chosen:
                _write_series(chosen[kind], out / paths[kind])
        except Exception as err:  # noqa: BLE001 - one unreadable series must not stop the other subjects
            failed.append((subject, f"{err}".splitlines()[0]))
            continue
        dwi = chosen["dwi"]
        cases.append(dict(id=f"{subject}_{session}", image=[paths[k] if k in chosen else None for k in CHANNELS],
                          dicom_source=dict(series_uid=dwi.uid, files=[str(Path(f).resolve()) for f in dwi.files])))
    data = dict(name=f"DICOM from {root}", layout="isles22", channels=list(CHANNELS), dataset_dir=".",
                testing=cases, training=[])
    manifest = Path(manifest) if manifest else out / "dataset.json"
    if manifest.parent.resolve() != out.resolve():
        data["dataset_dir"] = str(out.resolve())
    with atomic_path(manifest) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))
    return dict(data, manifest=str(manifest), failed=failed)
