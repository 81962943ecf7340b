"""DICOM out: a predicted mask as a DICOM SEG (highdicom) that references the DWI series it was made from.

The mask lies on the NIfTI grid that ``dicom2nifti`` wrote from that series; each source slice gets the frame
of mask values at its own pixel centres (from its ImagePositionPatient, ImageOrientationPatient and
PixelSpacing, nearest voxel), so the SEG's frames land on the source slices whatever the slice order or
obliquity. Every frame is kept (an empty SEG says "no lesion"), as PACS viewers expect.

Example:
    >>> write_dicom_seg(mask, affine, case["dicom_source"]["files"], "out/sub-01_seg.dcm")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io import atomic_path

__all__ = ["mask_on_slice", "write_dicom_seg"]

LPS = np.diag([-1.0, -1.0, 1.0])


def mask_on_slice(mask: np.ndarray, affine: np.ndarray, ds) -> np.ndarray:
    """The (Rows, Columns) frame of ``mask`` (RAS ``affine``) at the pixel centres of DICOM image ``ds``."""
    position = np.asarray(ds.ImagePositionPatient, float)
    orientation = np.asarray(ds.ImageOrientationPatient, float)
    row_dir, col_dir = orientation[:3], orientation[3:]       # along a row (columns grow), down a column
    spacing_rows, spacing_cols = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    r, c = np.meshgrid(np.arange(int(ds.Rows)), np.arange(int(ds.Columns)), indexing="ij")
    lps = position + c[..., None] * spacing_cols * row_dir + r[..., None] * spacing_rows * col_dir
    ras = lps @ LPS.T
    voxel = np.rint((ras - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    inside = np.all((voxel >= 0) & (voxel < np.array(mask.shape[:3])), axis=-1)
    frame = np.zeros(r.shape, np.uint8)
    v = voxel[inside]
    frame[inside] = mask[v[:, 0], v[:, 1], v[:, 2]] > 0
    return frame


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stroke-pipeline")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def write_dicom_seg(mask: np.ndarray, affine: np.ndarray, source_files: list[str], path: str | Path,
                    series_number: int = 300, software: str = "stroke-pipeline") -> Path:
    """Write ``mask`` as a binary DICOM SEG of the source series (one frame per source slice)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    __version__ = _version()
    sources = [pydicom.dcmread(f) for f in source_files]
    frames = np.stack([mask_on_slice(mask, np.asarray(affine, float), ds) for ds in sources])
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="ischemic lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=Code("55641003", "SCT", "Infarct"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=software, version=__version__, family=codes.cid7162.ArtificialIntelligence))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=software, manufacturer_model_name="3D U-Net",
        software_versions=__version__, device_serial_number="0", omit_empty_frames=False,
        series_description="Stroke lesion (research use only)")
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
