"""Shared fixtures: small real NIfTI data written to temporary folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``data`` as a compressed NIfTI with scanner qform/sform codes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, path)
    return path


def lps_affine(spacing=(1.2, 0.9, 3.0), degrees=0.0, origin=(40.0, 30.0, -12.0)) -> np.ndarray:
    """A scanner affine with LPS voxel axes, rotated ``degrees`` about z (an oblique acquisition)."""
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = origin
    return affine


class BrightIsLesion(torch.nn.Module):
    """A fixed 'network' whose lesion logit is the normalised first channel minus 1: it finds bright blobs,
    so a right answer proves the predictor maps the model grid back onto the scanner grid correctly."""

    def __init__(self, spatial_dims: int = 3):
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, x):
        z = 8 * (x[:, :1] - 1.0)
        return torch.cat([-z, z], 1)


def oblique_lps_case(tmp_path, name="case", shape=(48, 44, 14), spacing=(1.1, 1.3, 4.5), degrees=12.0):
    """An LPS, oblique, anisotropic 2-channel case: a head with a bright blob, and the blob's mask."""
    affine = lps_affine(spacing, degrees, origin=(30.0, 25.0, -20.0))
    i, j, k = np.indices(shape)
    head = ((i - 24) / 20) ** 2 + ((j - 22) / 18) ** 2 + ((k - 7) / 6.5) ** 2 < 1
    blob = ((i - 30) / 6) ** 2 + ((j - 16) / 5) ** 2 + ((k - 7) / 2.2) ** 2 < 1
    rng = np.random.default_rng(0)
    dwi = np.where(head, 100 + rng.normal(0, 3, shape), 0) + 250 * blob
    paths = [write_nifti(tmp_path / f"{name}_dwi.nii.gz", dwi.astype(np.float32), affine),
             write_nifti(tmp_path / f"{name}_adc.nii.gz", np.where(head, 800.0, 0).astype(np.float32), affine)]
    label = write_nifti(tmp_path / f"{name}_msk.nii.gz", blob.astype(np.uint8), affine)
    return dict(id=name, image=[str(p) for p in paths], label=str(label)), blob


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline ARGS`` as a user would; return the finished process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory) -> tuple[Path, Path]:
    """Six synthetic subjects at 4 mm (one lesion-free) and their manifest: (data dir, manifest)."""
    from pipeline.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root / "data", subjects=6, seed=7, spacing=4.0, manifest=root / "synth.json",
               folds=2, test_fraction=0.2, progress=False)
    return root / "data", root / "synth.json"


def tiny_overrides(manifest: Path, out: Path, tracking_uri: str, epochs: int = 2) -> list[str]:
    """Overrides for a tiny run on the 4 mm synthetic set: 32^3 patches, a 3-level net, no workers."""
    return ["--datalist", str(manifest), "--output_dir", str(out), "--tracking_uri", tracking_uri,
            "--max_epochs", str(epochs), "--spacing", "[4.0, 4.0, 4.0]", "--patch_size_3d", "[32, 32, 32]",
            "--patch_size_2d", "[32, 32]", "--network_def#channels", "[8, 16, 32]", "--network_def#strides", "[2, 2]",
            "--num_workers", "0", "--trainer#check_val_every_n_epoch", "1", "--lightning_module#scheduler#warmup_steps",
            "0", "--experiment_name", "tests"]


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_set, tmp_path_factory) -> Path:
    """The best checkpoint of a 1-epoch tiny training on the synthetic set (trained once per session)."""
    root = tmp_path_factory.mktemp("tiny_training")
    result = run_cli("train", *tiny_overrides(synth_set[1], root / "out", f"sqlite:///{root}/mlflow.db", epochs=1),
                     cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return next((root / "out" / "checkpoints").glob("best-*.ckpt"))


def write_dicom_series(folder: Path, volume: np.ndarray, affine: np.ndarray, description: str, series_number: int,
                       patient: str = "P001", study_uid: str | None = None, slope: float = 1.0,
                       bvalue: float | None = None, reverse: bool = False) -> list[Path]:
    """An MR DICOM series (one file per slice, uint16) of a (x, y, z) ``volume`` on the RAS ``affine`` grid:
    voxel axis x runs along a row, y down a column, z from slice to slice (``reverse`` writes them in the
    opposite instance order). Stored value = volume / ``slope``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row_dir, col_dir = lps @ affine[:3, 0] / spacing[0], lps @ affine[:3, 1] / spacing[1]
    series_uid, study_uid = generate_uid(), study_uid or generate_uid()
    frame_uid = generate_uid(entropy_srcs=[study_uid])
    paths = []
    order = range(volume.shape[2])[::-1] if reverse else range(volume.shape[2])
    for instance, k in enumerate(order, start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "MR", patient, "Test^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = series_number, instance, description
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "19500101", "O", ""
        ds.Manufacturer, ds.ImageType = "TEST", ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ImagePositionPatient = [float(v) for v in lps @ (affine @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0.0
        if bvalue is not None:
            ds.DiffusionBValue = bvalue
        ds.PixelData = np.clip(np.rint(volume[:, :, k].T / slope), 0, 65535).astype("<u2").tobytes()
        path = folder / f"{series_number:03d}_{instance:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def partial_volume_scene(radius_mm=7.0, shape=(40, 40, 16), zooms=(1.0, 1.0, 3.0), seed=0, noise=1.0):
    """A noisy head with one round infarct whose voxels mix lesion and tissue by the share the lesion fills
    (4x super-sampled), as a scanner's voxels do: S0 and S_b add up over the two parts and the ADC is fitted from
    them (b 1250 s/mm^2, tissue ADC 800e-6 mm^2/s); the truth is a share of at least one half. ``noise`` scales
    the noise (1: a lesion 27 noise levels above its tissue on DWI)."""
    rng = np.random.default_rng(seed)
    fine = [np.arange(n * 4) / 4 + 1 / 8 for n in shape]
    x, y, z = np.meshgrid(*[(f - n / 2) * s for f, n, s in zip(fine, shape, zooms, strict=True)], indexing="ij")
    inside = (x ** 2 + y ** 2 + z ** 2 < radius_mm ** 2).astype(np.float32)
    share = inside.reshape(shape[0], 4, shape[1], 4, shape[2], 4).mean((1, 3, 5))
    b, adc_tissue, adc_lesion = 1250.0, 800e-6, 450e-6      # ADC 0.56x the tissue's
    sb = 100 + 80 * share                                   # DWI 1.8x the tissue
    s0 = (1 - share) * 100 * np.exp(b * adc_tissue) + share * 180 * np.exp(b * adc_lesion)
    dwi = sb + rng.normal(0, 3 * noise, shape)
    adc = np.log(s0 / sb) / b * 1e6 + rng.normal(0, 20 * noise, shape)   # stored in 1e-6 mm^2/s
    flair = 300 + rng.normal(0, 5, shape)                     # FLAIR-negative
    return np.stack([dwi, adc, flair]).astype(np.float32), share >= 0.5, zooms


def rim_call(truth, zooms, grow_mm):
    """What a network on a 2 mm grid draws: the lesion ``grow_mm`` too large (or small), sure in its core."""
    spacing = np.asarray(zooms)
    outside = ndimage.distance_transform_edt(~truth, sampling=spacing)
    inside = ndimage.distance_transform_edt(truth, sampling=spacing)
    mask = (outside <= grow_mm) & ~truth | (inside > -grow_mm) & truth if grow_mm >= 0 else inside > -grow_mm
    prob = np.where(mask, 0.6, 0.05).astype(np.float32)
    prob[inside > 2.5] = 0.97
    return mask, prob
