"""Putting the probability map back onto the scanner grid: a voxel copy where it can be, trilinear otherwise."""

import nibabel as nib
import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from conftest import lps_affine
from pipeline.data.transforms import RAS_LABELS
from pipeline.inference.grid import aligned_copy, to_grid


def test_reoriented_and_cropped_map_is_copied_back_exactly_as_monai_resamples_it():
    rng = np.random.default_rng(0)
    native = MetaTensor(torch.as_tensor(rng.random((1, 30, 26, 9), dtype=np.float32)), affine=lps_affine())
    ras = mt.Orientation(axcodes="RAS", labels=RAS_LABELS)(native)
    cropped = mt.SpatialCrop(roi_start=[3, 2, 1], roi_end=[25, 20, 8])(ras)
    reference = nib.Nifti1Image(np.zeros((30, 26, 9), np.float32), lps_affine())
    fast = aligned_copy(cropped[0].numpy(), np.asarray(cropped.affine), reference.affine, reference.shape)
    dst = MetaTensor(torch.zeros((1, 30, 26, 9)), affine=torch.as_tensor(reference.affine))
    slow = mt.ResampleToMatch(mode="bilinear", padding_mode="zeros")(cropped, dst)[0].numpy()
    assert fast is not None and np.abs(fast - slow).max() < 1e-5
    inside = np.zeros_like(fast, dtype=bool)
    inside[5:27, 6:24, 1:8] = True  # the kept region in LPS voxel order: x = 29 - x_ras, y = 25 - y_ras
    assert np.array_equal(fast[inside], native[0].numpy()[inside]) and not fast[~inside].any()
    # an oblique destination is no copy: to_grid falls back to resampling
    oblique = nib.Nifti1Image(np.zeros((30, 26, 9), np.float32), lps_affine(degrees=10))
    assert aligned_copy(cropped[0].numpy(), np.asarray(cropped.affine), oblique.affine, oblique.shape) is None
    assert to_grid(cropped[0].numpy(), np.asarray(cropped.affine), oblique).shape == (30, 26, 9)


def test_a_map_resampled_back_is_what_monai_resamples_inside_its_grid():
    """An oblique 1 mm scan and a 2 mm model grid: to_grid's trilinear values are MONAI's ``ResampleToMatch``'s
    wherever the scan's voxel lies inside the map's grid, and 0 well outside it."""
    rng = np.random.default_rng(0)
    model_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    model_affine[:3, 3] = [-20.0, -24.0, -12.0]
    prob = rng.random((20, 24, 12), dtype=np.float32)
    reference = nib.Nifti1Image(np.zeros((44, 52, 30), np.float32), lps_affine((1.0, 1.0, 1.0), degrees=12))
    back = to_grid(prob, model_affine, reference)
    dst = MetaTensor(torch.zeros((1, *reference.shape)), affine=torch.as_tensor(reference.affine))
    monai = mt.ResampleToMatch(mode="bilinear", padding_mode="zeros")(
        MetaTensor(torch.as_tensor(prob)[None], affine=torch.as_tensor(model_affine)), dst)[0].numpy()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in reference.shape], indexing="ij"), -1).reshape(-1, 3)
    index = (np.linalg.inv(model_affine) @ reference.affine @ np.c_[grid, np.ones(len(grid))].T)[:3].T
    inside = ((index >= 0) & (index <= np.array(prob.shape) - 1)).all(1).reshape(reference.shape)
    outside = ((index < -1) | (index > np.array(prob.shape))).any(1).reshape(reference.shape)
    assert inside.sum() > 1000 and outside.sum() > 1000
    assert np.abs(back[inside] - monai[inside]).max() < 1e-4
    assert not back[outside].any()


def test_lesions_on_the_first_and_last_thick_slices_come_back():
    """The model grid ends near the centre of the outermost slices: a slice is averaged over the part of it
    the model grid covers (counting the rest as zero dropped lesions that touched the first or last slice)."""
    tilt = np.deg2rad(15)  # about x, as an oblique axial DWI: the slab edges are not planes of the model grid
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[1:3, 1:3] = [[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]]
    reference = nib.Nifti1Image(np.zeros((24, 20, 8), np.float32), affine @ lps_affine((2.0, 2.0, 6.5)))
    label = np.zeros(reference.shape, np.float32)
    label[8:14, 6:12, 0] = label[8:14, 6:12, -1] = label[10:16, 8:14, 4] = 1
    native = MetaTensor(torch.as_tensor(label)[None], affine=torch.as_tensor(reference.affine))
    ras = mt.Orientation(axcodes="RAS", labels=RAS_LABELS)(native)
    model = mt.Spacing(pixdim=(2.0, 2.0, 2.0), mode="nearest", padding_mode="zeros")(ras)
    back = to_grid(model[0].numpy(), np.asarray(model.affine), reference)
    for z in (0, 4, 7):  # each slice's lesion comes back whole, where it was, at nearly full probability
        lesion = label[..., z] > 0
        assert back[..., z][lesion].mean() > 0.8, z  # counted as zero: 0.6 on the outer slices
        assert ((back[..., z] >= 0.5) == lesion).mean() > 0.98, z


def test_a_freesurfer_mgz_scan_is_segmented_onto_its_own_grid(tmp_path):
    """MGH/MGZ (FreeSurfer) input: no 'no orientation' warning (its header holds the scanner affine), and the mask
    comes back as a NIfTI on the scan's grid whose bright blob it finds."""
    from conftest import BrightIsLesion, oblique_lps_case
    from pipeline.data.checks import CaseRules, check_case
    from pipeline.inference.batch import segment_cases
    from pipeline.inference.predictor import Predictor
    from pipeline.inference.settings import Settings

    case, blob = oblique_lps_case(tmp_path)
    for i, path in enumerate(case["image"]):
        img = nib.load(path)
        case["image"][i] = str(tmp_path / f"channel{i}.mgz")
        nib.save(nib.MGHImage(np.asarray(img.dataobj, np.float32), img.affine), case["image"][i])
    assert [p.message for p in check_case(case, CaseRules()) if "orientation" in p.message] == []
    predictor = Predictor(BrightIsLesion(), Settings(roi_size=[32, 32, 16], channels=2, spacing=[2.0, 2.0, 4.0],
                                                     min_lesion_ml=0.0))
    report = segment_cases(predictor, [case], tmp_path / "out", progress=False, lesion_table=False, mni=False)
    assert report.failures == []
    mask = nib.load(tmp_path / "out" / "case.nii.gz")
    assert np.allclose(mask.affine, nib.load(case["image"][0]).affine, atol=1e-4)
    assert int(mask.header["sform_code"]) == 1
    got = np.asarray(mask.dataobj) > 0
    assert 2 * (got & blob).sum() / (got.sum() + blob.sum()) > 0.7
