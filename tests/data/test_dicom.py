"""DICOM in: series under a folder -> ISLES'22-layout NIfTI with the scanner geometry, and a manifest."""

import json

import nibabel as nib
import numpy as np

from conftest import lps_affine, run_cli, write_dicom_series
from pipeline.data.dicom import classify, dicom_to_nifti

DESCRIPTIONS = {"dwi": "ep2d_diff_3scan_trace b1000", "adc": "ep2d_diff_3scan_trace_ADC",
                "flair": "t2_tirm_tra_dark-fluid"}


def _study(folder, patient="P001", shape=(40, 36, 12), affine=None, skip=(), reverse=False):
    """Three series of one patient on an oblique LPS grid; returns the volumes written."""
    affine = lps_affine(spacing=(1.2, 0.9, 3.0), degrees=12.0) if affine is None else affine
    rng = np.random.default_rng(0)
    volumes = {k: rng.integers(0, 3000, shape).astype(float) for k in DESCRIPTIONS}
    for number, (kind, desc) in enumerate(DESCRIPTIONS.items(), start=1):
        if kind not in skip:
            write_dicom_series(folder / patient / kind, volumes[kind], affine, desc, number, patient=patient,
                               study_uid=f"1.2.3.{len(patient)}", reverse=reverse and kind == "dwi")
    return volumes, affine


def test_series_become_nifti_on_the_scanner_grid_whatever_the_instance_order(tmp_path):
    volumes, affine = _study(tmp_path / "dicom", reverse=True)
    result = dicom_to_nifti(tmp_path / "dicom", tmp_path / "nifti")
    [case] = result["testing"]
    assert case["id"] == "sub-P001_ses-0001" and not result["failed"]
    for path, kind in zip(case["image"], ("dwi", "adc", "flair"), strict=True):
        img = nib.load(tmp_path / "nifti" / path)
        assert np.allclose(img.affine, affine, atol=1e-3), kind
        assert np.allclose(img.get_fdata(), volumes[kind]), kind
    assert len(case["dicom_source"]["files"]) == 12
    manifest = json.loads((tmp_path / "nifti" / "dataset.json").read_text())
    assert manifest["testing"][0]["image"][2].endswith("anat/sub-P001_ses-0001_FLAIR.nii.gz")


def test_a_subject_without_adc_is_named_and_the_others_are_converted(tmp_path):
    _study(tmp_path / "dicom", patient="P001")
    _study(tmp_path / "dicom", patient="P0002", skip=("adc",))
    result = run_cli("dicom2nifti", "--in", str(tmp_path / "dicom"), "--out", str(tmp_path / "nifti"))
    assert result.returncode == 1
    assert "FAILED sub-P0002: no ADC series" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "1 case(s) converted, 1 failed" in result.stdout
    manifest = json.loads((tmp_path / "nifti" / "dataset.json").read_text())
    assert [c["id"] for c in manifest["testing"]] == ["sub-P001_ses-0001"]


def test_a_subject_without_flair_is_converted_with_flair_null(tmp_path):
    volumes, affine = _study(tmp_path / "dicom", patient="P003", skip=("flair",))
    result = run_cli("dicom2nifti", "--in", str(tmp_path / "dicom"), "--out", str(tmp_path / "nifti"))
    assert result.returncode == 0, result.stderr
    assert "sub-P003: no FLAIR series" in result.stderr and "FLAIR left null" in result.stderr
    [case] = json.loads((tmp_path / "nifti" / "dataset.json").read_text())["testing"]
    assert case["image"][2] is None and not list((tmp_path / "nifti").glob("**/*FLAIR*"))
    assert np.allclose(nib.load(tmp_path / "nifti" / case["image"][1]).get_fdata(), volumes["adc"])


def test_a_series_holding_b0_and_b1000_keeps_the_b1000_volume(tmp_path):
    affine = lps_affine(spacing=(2.0, 2.0, 4.0))
    b0, b1000 = np.full((16, 16, 6), 2000.0), np.full((16, 16, 6), 700.0)
    folder = tmp_path / "dicom" / "dwi"
    write_dicom_series(folder, b0, affine, "diffusion", 1, bvalue=0)
    for i, path in enumerate(write_dicom_series(tmp_path / "b1000", b1000, affine, "diffusion", 1, bvalue=1000)):
        path.rename(folder / f"b1000_{i}.dcm")
    import pydicom

    first = pydicom.dcmread(next(folder.glob("001_*.dcm")))  # one series: give the b1000 files its UID
    for path in folder.glob("b1000_*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.StudyInstanceUID = first.SeriesInstanceUID, first.StudyInstanceUID
        ds.FrameOfReferenceUID = first.FrameOfReferenceUID
        ds.save_as(path)
    from pipeline.data.dicom import find_series

    [series] = find_series(tmp_path / "dicom")
    assert len(series.files) == 6 and all("b1000" in f for f in series.files)


def test_series_are_told_apart_by_their_description_and_image_type():
    class Header:
        def __init__(self, description, image_type=()):
            self.SeriesDescription, self.ImageType = description, list(image_type)

    assert classify(Header("ep2d_diff_3scan_trace_ADC")) == "adc"
    assert classify(Header("AX DWI", ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"])) == "dwi"
    assert classify(Header("Ax T2 FLAIR")) == "flair"
    assert classify(Header("t1_mprage")) is None


def test_a_damaged_file_fails_its_subject_in_one_line_naming_it_and_the_others_are_converted(tmp_path):
    _study(tmp_path / "dicom", patient="P001")
    _study(tmp_path / "dicom", patient="P0002")
    broken = sorted((tmp_path / "dicom" / "P0002" / "adc").glob("*.dcm"))[3]
    broken.write_bytes(broken.read_bytes()[:-700])  # pixel data cut short, as a failed copy leaves it
    result = dicom_to_nifti(tmp_path / "dicom", tmp_path / "nifti")
    assert [c["id"] for c in result["testing"]] == ["sub-P001_ses-0001"]
    [(subject, reason)] = result["failed"]
    assert subject == "sub-P0002" and "\n" not in reason and "adc" in reason
    assert not (tmp_path / "nifti" / "sub-P0002").exists()  # nothing half-written


def test_a_missing_slice_is_named_instead_of_a_silently_stretched_volume(tmp_path):
    _study(tmp_path / "dicom", patient="P001")
    sorted((tmp_path / "dicom" / "P001" / "dwi").glob("*.dcm"))[5].unlink()
    result = dicom_to_nifti(tmp_path / "dicom", tmp_path / "nifti")
    [(subject, reason)] = result["failed"]
    assert subject == "sub-P001" and "not evenly spaced" in reason and "dwi" in reason


def test_b_values_are_read_from_the_standard_and_the_vendor_tags():
    import pydicom

    from pipeline.data.dicom import _bvalue

    standard, siemens, ge, none = (pydicom.Dataset() for _ in range(4))
    standard.DiffusionBValue = 1000
    siemens.add_new((0x0019, 0x100C), "UN", b"800\0")  # a private tag read without its dictionary
    ge.add_new((0x0043, 0x1039), "IS", [1000001500, 8, 0, 0])
    assert (_bvalue(standard), _bvalue(siemens), _bvalue(ge), _bvalue(none)) == (1000.0, 800.0, 1500.0, None)
