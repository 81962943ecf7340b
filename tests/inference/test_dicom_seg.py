"""DICOM out: a DICOM SEG whose frames land on the source series' slices, read back with highdicom."""

import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import lps_affine, run_cli, write_dicom_series
from pipeline.inference.dicom_seg import write_dicom_seg


def _frames_by_source(seg_path, source_files):
    """The SEG's frame for each source instance, in the order of ``source_files``."""
    seg = hd.seg.segread(seg_path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source_files]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    return seg, frames[..., 0]


def test_seg_frames_are_the_mask_slices_of_an_oblique_series_written_in_reverse(tmp_path):
    affine = lps_affine(spacing=(1.2, 0.9, 3.0), degrees=12.0)
    shape = (30, 26, 8)
    files = write_dicom_series(tmp_path / "dwi", np.full(shape, 500.0), affine, "dwi", 5, reverse=True)
    mask = np.zeros(shape, np.uint8)
    mask[5:12, 8:20, 2:4] = 1   # slices 2 and 3
    mask[20:24, 3:6, 6] = 1     # slice 6
    write_dicom_seg(mask, affine, [str(f) for f in files], tmp_path / "seg.dcm")
    seg, frames = _frames_by_source(tmp_path / "seg.dcm", files)
    assert seg.SeriesDescription.startswith("Stroke lesion") and seg.Modality == "SEG"
    for frame, path in zip(frames, files, strict=True):
        k = shape[2] - int(pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber)  # reversed order
        assert np.array_equal(frame, mask[:, :, k].T), k   # rows run along y, columns along x
    assert frames.sum() == mask.sum()


@pytest.mark.slow
def test_dicom_series_go_through_dicom2nifti_infer_and_back_as_a_seg(synth_set, tiny_checkpoint, tmp_path):
    """A synthetic subject written as three DICOM series -> dicom2nifti -> infer --dicom-seg -> the SEG read back
    with highdicom has the predicted mask on the same slices."""
    case = json.loads(synth_set[1].read_text())["testing"][0]
    root = synth_set[1].parent / json.loads(synth_set[1].read_text())["dataset_dir"]
    descriptions = ("ep2d_diff_trace b1000", "ep2d_diff_ADC", "t2_flair_tra")
    for number, (path, description) in enumerate(zip(case["image"], descriptions, strict=True), start=1):
        img = nib.load(root / path)
        write_dicom_series(tmp_path / "dicom" / description, np.clip(img.get_fdata(), 0, None) * 4.0, img.affine,
                           description, number, study_uid="1.2.826.0.1.1")
    result = run_cli("dicom2nifti", "--in", str(tmp_path / "dicom"), "--out", str(tmp_path / "nifti"))
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = tmp_path / "nifti" / "dataset.json"
    result = run_cli("infer", "--model", str(tiny_checkpoint), "--datalist", str(manifest), "--output",
                     str(tmp_path / "pred"), "--dicom-seg", "--no-mni", "--save-prob",
                     "--no-diffusion-check")  # a one-epoch model's lesions need not show restricted diffusion
    assert result.returncode == 0, result.stderr[-2000:]
    [converted] = json.loads(manifest.read_text())["testing"]
    mask_img = nib.load(tmp_path / "pred" / f"{converted['id']}.nii.gz")
    mask = np.asarray(mask_img.dataobj)
    files = converted["dicom_source"]["files"]
    _, frames = _frames_by_source(tmp_path / "pred" / f"{converted['id']}_seg.dcm", files)
    prob = nib.load(tmp_path / "pred" / f"{converted['id']}_prob.nii.gz").get_fdata()
    assert mask.any(), f"nothing found (max probability {prob.max():.3f}): the SEG would be trivially empty"
    assert frames.shape[0] == mask.shape[2] == len(files)
    for frame, path in zip(frames, files, strict=True):
        position = np.asarray(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient, float)
        ras = np.diag([-1.0, -1.0, 1.0]) @ position
        k = int(round((np.linalg.inv(mask_img.affine) @ [*ras, 1])[2]))
        assert np.array_equal(frame, mask[:, :, k].T)
    assert frames.sum() == mask.sum()
