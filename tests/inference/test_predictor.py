"""Prediction on grids unlike the training data: masks land on each case's own grid."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BrightIsLesion, oblique_lps_case
from pipeline.evaluation.metrics import dice
from pipeline.inference.batch import segment_datalist
from pipeline.inference.predictor import Predictor, lesion_probability, mirrored_to_window, mirrorings
from pipeline.inference.settings import Settings


@pytest.mark.parametrize("spatial_dims, roi", [(3, [32, 32, 32]), (2, [48, 48])])
def test_mask_comes_back_on_the_oblique_lps_anisotropic_grid(tmp_path, spatial_dims, roi):
    case, blob = oblique_lps_case(tmp_path)
    settings = Settings(spatial_dims=spatial_dims, roi_size=roi, channels=2, spacing=[1.5, 1.5, 1.5])
    result = Predictor(BrightIsLesion(spatial_dims), settings).predict_case(case)
    ref = nib.load(case["image"][0])
    assert result["mask"].shape == ref.shape and result["mask"].dtype == np.uint8
    assert dice(result["mask"] > 0, blob) > 0.8  # in the right place, not merely the right shape


def test_written_masks_copy_the_grid_and_header_codes_and_tta_gives_uncertainty(tmp_path):
    case, _ = oblique_lps_case(tmp_path / "in")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [case]}))
    settings = Settings(roi_size=[32, 32, 32], channels=2, spacing=[2.0, 2.0, 2.0], tta_axes=[0, 1, 2])
    report = segment_datalist(Predictor(BrightIsLesion(), settings), manifest, tmp_path / "out", save_prob=True,
                              save_unc=True, progress=False)
    assert report.written == ["case"] and not report.failures
    ref, out = nib.load(case["image"][0]), nib.load(tmp_path / "out" / "case.nii.gz")
    assert out.shape == ref.shape and np.array_equal(out.affine, ref.affine)
    assert np.allclose(out.get_qform(), ref.get_qform()) and np.allclose(out.get_sform(), ref.get_sform())
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 1
    assert out.get_data_dtype() == np.uint8
    assert nib.load(tmp_path / "out" / "case_unc.nii.gz").shape == ref.shape
    prob = nib.load(tmp_path / "out" / "case_prob.nii.gz").get_fdata()
    assert 0 <= prob.min() and prob.max() <= 1
    rows = (tmp_path / "out" / "volumes.csv").read_text().splitlines()
    assert rows[0] == "id,lesion_ml,components,notes" and rows[1].startswith("case,") and rows[1].endswith(",1,")


def test_output_headers_carry_geometry_but_no_text_from_the_input(tmp_path):
    case, _ = oblique_lps_case(tmp_path / "in")
    img = nib.load(case["image"][0])
    img.header["descrip"] = b"Doe^Jane 1950-01-01"
    img.header["aux_file"] = b"ward7"
    img.header.set_intent("estimate", name="patient")
    nib.save(img, case["image"][0])
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [case]}))
    predictor = Predictor(BrightIsLesion(), Settings(roi_size=[32, 32, 32], channels=2, spacing=[2.0, 2.0, 2.0]))
    segment_datalist(predictor, manifest, tmp_path / "out", save_prob=True, progress=False)
    for name in ("case.nii.gz", "case_prob.nii.gz"):
        header = nib.load(tmp_path / "out" / name).header
        assert header["descrip"].item() == b"" and header["aux_file"].item() == b""
        assert header["intent_name"].item() == b""
        assert np.allclose(header.get_zooms()[:3], img.header.get_zooms()[:3])


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return [{k: float(v) if k != "id" else v for k, v in r.items()} for r in csv.DictReader(f)]


def test_tta_averages_all_eight_mirrorings():
    assert mirrorings([0, 1, 2]) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    seen = []

    class Corner(torch.nn.Module):  # lesion logit grows towards one corner: not mirror-symmetric
        def forward(self, x):
            seen.append(x.shape[0])
            ramp = torch.linspace(-4, 4, x.shape[2])[:, None, None] + torch.linspace(-4, 4, x.shape[4])
            z = ramp.expand(x.shape[2:])[None, None].repeat(x.shape[0], 1, 1, 1, 1)
            return torch.cat([-z, z], 1)

    image = torch.ones(1, 1, 16, 16, 16)
    mean, var = lesion_probability(Corner(), image, 3, [16, 16, 16], tta_axes=[0, 1, 2], skip_empty=False)
    assert len(seen) == 8 and var is not None
    # flipping axis 0 or 2 mirrors the ramp, so the 8-pass mean is symmetric along both
    assert torch.allclose(mean, torch.flip(mean, dims=[2]), atol=1e-6)
    assert torch.allclose(mean, torch.flip(mean, dims=[4]), atol=1e-6)


def test_a_slab_thinner_than_the_window_reaches_the_network_mirrored_not_cut_off_by_zeros():
    """A scan covering less than a window (a few thick slices) is mirrored at its faces, so the network sees
    anatomy continue across the cut instead of a flat edge it never trained on; the result keeps the slab's grid."""
    seen = []

    class Spy(torch.nn.Module):  # records its windows; the lesion logit is the first channel's value
        def forward(self, x):
            seen.append(x.clone())
            return torch.cat([-x[:, :1], x[:, :1]], 1)

    image = torch.rand(1, 2, 40, 36, 5) + 0.5  # tissue up to both faces of a 5-slice slab
    prob, _ = lesion_probability(Spy(), image, 3, [32, 32, 32], overlap=0.25, skip_empty=False)
    assert prob.shape == (1, 1, 40, 36, 5)
    assert torch.allclose(prob, torch.sigmoid(2 * image[:, :1]), atol=1e-5)  # each voxel its own answer
    assert seen and all(bool((w.abs().amax(dim=(0, 1, 2, 3)) > 0).all()) for w in seen)  # no zero plane
    mirrored, inside = mirrored_to_window(image, [32, 32, 32])
    assert np.array_equal(mirrored.numpy(), np.pad(image.numpy(), [(0, 0)] * 4 + [(13, 14)], mode="symmetric"))
    assert torch.equal(mirrored[inside], image)
    assert mirrored_to_window(image, [32, 32])[0] is image  # 2D windows over axial slices: left to the inferer


def test_lesions_are_kept_only_when_their_peak_probability_reaches_min_lesion_peak():
    from pipeline.inference.predictor import Postprocess

    prob = np.zeros((20, 20, 20), np.float32)
    prob[2:6, 2:6, 2:6] = 0.7          # a lesion the model is unsure of everywhere
    prob[10:16, 10:16, 10:16] = 0.6
    prob[12, 12, 12] = 0.97            # one with a confident core: kept whole, rim included
    prob[16, 16, 16] = 0.6             # touches it by a corner only: 26-connected, so part of it
    mask = Postprocess(threshold=0.5, min_lesion_peak=0.9)(prob, voxel_ml=0.001)
    assert not mask[2:6, 2:6, 2:6].any()
    assert mask[10:16, 10:16, 10:16].all() and mask[16, 16, 16]
    assert Postprocess(threshold=0.5)(prob, voxel_ml=0.001).sum() == 64 + 216 + 1  # 0: every lesion


def _stored_as(path: str, storage: str, folder) -> str:
    """The image at ``path`` rewritten as a converter or scanner may store it."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    folder.mkdir(parents=True, exist_ok=True)
    name = folder / path.split("/")[-1].replace(".nii.gz", "")
    if storage == "big_endian":  # older scanners and Analyze-era tools
        header = img.header.as_byteswapped(">")
        out = nib.Nifti1Image(data.astype(data.dtype.newbyteorder(">")), img.affine, header)
        target = f"{name}.nii"
    elif storage == "nifti_pair":  # .hdr/.img (SPM)
        out, target = nib.Nifti1Pair(data, img.affine, img.header), f"{name}.img"
    else:  # int64 scanner units, uncompressed
        out, target = nib.Nifti1Image(np.round(data * 10).astype(np.int64), img.affine, dtype=np.int64), f"{name}.nii"
    nib.save(out, target)
    return target


@pytest.mark.parametrize("storage", ["big_endian", "nifti_pair", "int64_uncompressed"])
def test_storage_a_converter_writes_gives_the_same_mask(tmp_path, storage):
    """Byte order, file pair and integer width are the file's business, not the model's: same mask, same grid."""
    case, blob = oblique_lps_case(tmp_path / "in")
    stored = dict(case, image=[_stored_as(p, storage, tmp_path / storage) for p in case["image"]])
    predictor = Predictor(BrightIsLesion(), Settings(roi_size=[32, 32, 32], channels=2, spacing=[2.0, 2.0, 2.0]))
    manifest = tmp_path / "m.json"
    for name, c in (("plain", case), (storage, stored)):
        manifest.write_text(json.dumps({"testing": [dict(c, id=name)]}))
        report = segment_datalist(predictor, manifest, tmp_path / "out", progress=False)
        assert report.written == [name] and not report.failures
    plain, other = (nib.load(tmp_path / "out" / f"{n}.nii.gz") for n in ("plain", storage))
    assert dice(plain.get_fdata() > 0, blob) > 0.8
    assert np.array_equal(other.get_fdata(), plain.get_fdata()) and np.array_equal(other.affine, plain.affine)
