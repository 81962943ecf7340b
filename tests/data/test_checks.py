"""One test per kind of bad input: each becomes an InputError naming the case and the file."""

import gzip
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import run_cli, write_nifti
from pipeline.data.checks import LoadCheckedd, validate_manifest
from pipeline.data.manifest import load_manifest
from pipeline.errors import InputError


def ramp(shape):
    """A non-constant image (a constant one is refused as blank)."""
    return np.linspace(1, 2, int(np.prod(shape)), dtype=np.float32).reshape(shape)


def case(tmp_path, image=None, label=None, affine=None, label_affine=None, n=1):
    image = ramp((10, 10, 8)) if image is None else image
    label = np.zeros(image.shape[:3], np.uint8) if label is None else label
    paths = [str(write_nifti(tmp_path / f"img{i}.nii.gz", image, affine)) for i in range(n)]
    lab = str(write_nifti(tmp_path / "lab.nii.gz", label, label_affine if label_affine is not None else affine))
    return {"id": "case7", **{f"image_{i}": p for i, p in enumerate(paths)}, "label": lab}


def load(d, n=1, **kw):
    return LoadCheckedd([f"image_{i}" for i in range(n)], **kw)(d)


def expect(d, message, n=1, **kw):
    with pytest.raises(InputError, match=message) as info:
        load(d, n, **kw)
    assert info.value.case == "case7" and info.value.path
    return info.value


def test_good_case_loads(tmp_path):
    out = load(case(tmp_path))
    assert tuple(out["image_0"].shape) == (1, 10, 10, 8) and tuple(out["label"].shape) == (1, 10, 10, 8)


def test_missing_file(tmp_path):
    d = case(tmp_path)
    d["image_0"] = str(tmp_path / "gone.nii.gz")
    assert expect(d, "missing file").path.endswith("gone.nii.gz")


def test_truncated_gzip(tmp_path):
    d = case(tmp_path, image=np.random.default_rng(0).random((30, 30, 30)).astype(np.float32))
    raw = open(d["image_0"], "rb").read()
    open(d["image_0"], "wb").write(raw[: len(raw) // 2])
    expect(d, "unreadable, truncated or not a NIfTI file")


def test_not_a_nifti(tmp_path):
    d = case(tmp_path)
    open(d["image_0"], "wb").write(b"<html>download failed</html>")
    expect(d, "unreadable, truncated or not a NIfTI file")


def test_4d_image_needs_a_volume_index_and_then_loads(tmp_path):
    vols = np.stack([np.full((10, 10, 8), v, np.float32) for v in (1, 2, 3)], -1)
    vols[0, 0, 0] = 0
    d = case(tmp_path, image=vols)
    expect(d, "4D image with 3 volumes: choose one with the config key volume_index")
    assert float(load(dict(d), volume_index=-1)["image_0"].max()) == 3.0
    expect(dict(d), "volume_index 5 is outside", volume_index=5)


def test_a_4d_dwi_with_its_bval_file_gives_the_trace_of_the_highest_b_value(tmp_path):
    """dcm2niix's DWI series: b=0 then three directions at b=1000, with ``dwi.bval`` beside it: the geometric
    mean of the three b=1000 volumes (the scanner's trace-weighted image); 0 where any of them is 0."""
    rng = np.random.default_rng(0)
    b0 = np.linspace(400, 500, 800, dtype=np.float32).reshape(10, 10, 8)
    directions = rng.uniform(50, 150, (3, 10, 10, 8)).astype(np.float32)
    directions[:, 0, 0, 0] = [0.0, 80.0, 90.0]
    path = write_nifti(tmp_path / "dwi.nii.gz", np.stack([b0, *directions], -1))
    (tmp_path / "dwi.bval").write_text("0 1000 1000 1000\n")
    d = {"id": "case7", "image_0": str(path)}
    trace = load(dict(d))["image_0"][0].numpy()
    expected = np.exp(np.log(directions).mean(0))
    assert np.allclose(trace[1:], expected[1:], rtol=1e-5) and trace[0, 0, 0] == 0
    (tmp_path / "dwi.bval").write_text("0 1000 1000\n")
    expect(d, "4D image with 4 volumes but 3 b-values in its .bval file")
    (tmp_path / "dwi.bval").write_text("0 1000 1000 1000\n")
    assert float(load(dict(d), volume_index=0)["image_0"].max()) == 500.0  # volume_index still picks one


def test_a_volume_stored_with_two_trailing_singleton_axes_loads_as_3d(tmp_path):
    """(x, y, z, 1, 1), as some converters write a volume, image and label alike."""
    image = ramp((10, 10, 8))
    label = (image > image.mean()).astype(np.uint8)
    d = case(tmp_path, image=image[..., None, None], label=label[..., None, None])
    out = load(dict(d))
    assert tuple(out["image_0"].shape) == (1, 10, 10, 8) and np.allclose(out["image_0"][0].numpy(), image)
    assert np.array_equal(out["label"][0].numpy(), label)


def test_a_header_without_a_usable_voxel_grid_is_refused(tmp_path):
    """Zero voxel sizes, or a collinear axis that MONAI's reader papers over but nibabel (which writes the
    outputs) keeps: refused naming the file, not segmented onto a grid nobody can place."""
    for name, affine in (("zero", np.diag([0.0, 0.0, 0.0, 1.0])),
                         ("collinear", np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]))):
        header = nib.Nifti1Header()
        header.set_data_shape((10, 10, 8))
        header.set_sform(affine, code=1)
        header.set_qform(None, code=0)
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(ramp((10, 10, 8)), None, header=header), path)
        d = {"id": "case7", "image_0": str(path), "label": str(write_nifti(tmp_path / f"{name}_lab.nii.gz",
                                                                             np.zeros((10, 10, 8), np.uint8)))}
        error = expect(d, "header gives no usable voxel grid")
        assert error.path == str(path)


def test_2d_image_and_single_slice_for_a_3d_model(tmp_path):
    d = case(tmp_path / "a", image=ramp((10, 10)), label=np.zeros((10, 10, 1), np.uint8))
    expect(d, "2D image")
    d = case(tmp_path / "b", image=ramp((10, 10, 1)))
    expect(d, "single-slice image .* given to a 3D model")
    assert load(dict(d), spatial_dims=2)["image_0"].shape[-1] == 1  # a 2D model takes it


def test_label_on_another_shape_or_affine(tmp_path):
    expect(case(tmp_path / "a", label=np.zeros((10, 10, 7), np.uint8)), "label shape")
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    expect(case(tmp_path / "b", label_affine=shifted), "label affine differs from the image's by up to 2 mm")
    tiny_shift = np.eye(4)
    tiny_shift[0, 3] = 1e-5  # header round-off is tolerated
    load(case(tmp_path / "c", label_affine=tiny_shift))


def reordered(data: np.ndarray, affine: np.ndarray, codes=("A", "L", "I")):
    """The same voxels stored in another axis order and direction, as another tool may save a mask."""
    img = nib.Nifti1Image(data, affine)
    turn = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.axcodes2ornt(codes))
    out = img.as_reoriented(turn)
    return np.asarray(out.dataobj), out.affine


def test_label_stored_in_another_voxel_order_is_copied_onto_the_image_grid(tmp_path):
    from conftest import lps_affine

    affine = lps_affine(degrees=10)
    label = np.zeros((10, 12, 8), np.uint8)
    label[2:5, 3:9, 1:4] = 1
    data, label_affine = reordered(label, affine)
    assert data.shape == (12, 10, 8) and not np.allclose(label_affine, affine)
    d = case(tmp_path, image=ramp((10, 12, 8)), label=data, affine=affine, label_affine=label_affine)
    out = load(d)
    assert np.array_equal(out["label"][0].numpy(), label)  # voxel for voxel, no resampling
    assert np.allclose(out["label"].affine.numpy(), out["image_0"].affine.numpy())
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"training": [{"id": "case7", "image": [d["image_0"]], "label": d["label"]}]}))
    problems = validate_manifest(manifest, progress=False)
    assert [(p.severity, Path(p.path).name) for p in problems] == [("warning", "lab.nii.gz")]
    assert "another voxel order" in problems[0].message
    # one voxel off after reordering is not the same grid: refused, never resampled
    shifted = label_affine.copy()
    shifted[:3, 3] += label_affine[:3, 0]
    expect(case(tmp_path / "b", image=ramp((10, 12, 8)), label=data, affine=affine,
                label_affine=shifted), "label shape")


def test_uncompressed_file_named_gz_and_a_header_without_orientation(tmp_path):
    d = case(tmp_path)
    img = nib.load(d["image_0"])
    nib.save(img, tmp_path / "plain.nii")
    (tmp_path / "plain.nii").rename(d["image_0"])  # .nii.gz name, uncompressed bytes
    expect(d, "named .gz but not gzip-compressed")
    bare = nib.Nifti1Image(ramp((10, 10, 8)), None)  # no qform, no sform
    bare.header.set_qform(None, code=0)
    bare.header.set_sform(None, code=0)
    nib.save(bare, tmp_path / "bare.nii.gz")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [{"id": "case7", "image": [str(tmp_path / "bare.nii.gz")]}]}))
    problems = validate_manifest(manifest, progress=False)
    assert [(p.severity, p.case) for p in problems] == [("warning", "case7")]
    assert "no orientation in the header" in problems[0].message


def test_non_binary_label_and_probabilities_with_a_threshold(tmp_path):
    label = np.zeros((10, 10, 8), np.float32)
    label[2:4, 2:4, 2:4] = 0.8
    label[5, 5, 5] = 0.3
    d = case(tmp_path, label=label)
    expect(d, "label is not binary")
    out = load(dict(d), label_threshold=0.5)
    assert float(out["label"].sum()) == 8.0


def test_nan_all_zero_and_constant_images(tmp_path):
    img = ramp((10, 10, 8))
    img[1, 2, 3] = np.nan
    img[4, 4, 4] = np.inf
    expect(case(tmp_path / "a", image=img), "2 NaN/Inf voxels")
    for i, bad in enumerate((np.inf, -np.inf)):  # an infinity alone, without a NaN beside it
        img = ramp((10, 10, 8))
        img[4, 4, 4] = bad
        expect(case(tmp_path / f"inf{i}", image=img), "1 NaN/Inf voxels")
    expect(case(tmp_path / "b", image=np.zeros((10, 10, 8), np.float32)), "image is all zero")
    expect(case(tmp_path / "c", image=np.full((10, 10, 8), 100, np.int16)), r"image is constant \(every voxel 100\)")


def test_wrong_channel_count_invalid_json_missing_keys(tmp_path):
    from pipeline.data.transforms import val_transforms
    from pipeline.errors import find_pipeline_error

    d = case(tmp_path, n=2)
    with pytest.raises(Exception) as info:
        val_transforms(channels=3, spacing=None)({"id": "case7", "image": [d["image_0"], d["image_1"]]})
    assert "2 image file(s) but the model takes 3" in str(find_pipeline_error(info.value))
    (tmp_path / "bad.json").write_text('{"training": [')
    with pytest.raises(InputError, match="not valid JSON"):
        load_manifest(tmp_path / "bad.json")
    (tmp_path / "nokey.json").write_text(json.dumps({"training": [{"id": "x", "label": "l.nii.gz"}]}))
    with pytest.raises(InputError, match="has no 'image'"):
        load_manifest(tmp_path / "nokey.json")


@pytest.fixture
def damaged(synth_set, tmp_path):
    """A copy of the synthetic set with one kind of damage per case; returns (manifest, {kind: file})."""
    data_dir, manifest = synth_set
    shutil.copytree(data_dir, tmp_path / "data")
    shutil.copy(manifest, tmp_path / "m.json")
    cases = json.loads((tmp_path / "m.json").read_text())
    cases = cases["training"] + cases["testing"]
    root = tmp_path / "data"
    files = {}

    def path(i, key):
        return root / (cases[i]["label"] if key == "label" else cases[i]["image"][key])

    files["truncated"] = path(0, 0)  # truncated gzip of a DWI
    raw = files["truncated"].read_bytes()
    files["truncated"].write_bytes(raw[: len(raw) // 2])

    files["label_two"] = path(1, "label")  # label with a 2
    img = nib.load(files["label_two"])
    data = np.asarray(img.dataobj).copy()
    data.flat[0] = 2
    write_nifti(files["label_two"], data, img.affine)

    files["shape"] = path(2, "label")  # label on another shape
    img = nib.load(files["shape"])
    write_nifti(files["shape"], np.zeros(np.array(img.shape) - 1, np.uint8), img.affine)

    files["nan"] = path(3, 1)  # NaN in the ADC
    img = nib.load(files["nan"])
    data = img.get_fdata(dtype=np.float32)
    data[5, 5, 5] = np.nan
    write_nifti(files["nan"], data, img.affine)

    files["not_nifti"] = path(4, 2)
    files["not_nifti"].write_bytes(gzip.compress(b"this is a text file, not an image"))

    files["elsewhere"] = path(5, 1)  # an ADC whose header puts it 300 mm away from its DWI
    img = nib.load(files["elsewhere"])
    moved = img.affine.copy()
    moved[0, 3] += 300.0
    write_nifti(files["elsewhere"], np.asarray(img.dataobj), moved)
    return tmp_path / "m.json", files


def test_clean_set_has_no_errors_and_flair_grid_is_a_warning(synth_set):
    problems = validate_manifest(synth_set[1], progress=False)
    assert [p for p in problems if p.severity == "error"] == []
    assert any("FLAIR" in p.path and "another grid" in p.message for p in problems)


def test_every_damaged_file_is_named_in_one_run(damaged):
    manifest, files = damaged
    errors = [p for p in validate_manifest(manifest, progress=False) if p.severity == "error"]
    by_path = {Path(p.path).name: p.message for p in errors}
    assert "truncated" in by_path[files["truncated"].name]
    assert "not binary" in by_path[files["label_two"].name] and "2" in by_path[files["label_two"].name]
    assert "label shape" in by_path[files["shape"].name]
    assert "NaN/Inf" in by_path[files["nan"].name]
    assert "not a NIfTI" in by_path[files["not_nifti"].name]
    assert "does not overlap" in by_path[files["elsewhere"].name]
    assert all(p.case.startswith("sub-strokecase") for p in errors)


def test_cli_exits_1_and_prints_each_damaged_file_with_its_case(damaged):
    manifest, files = damaged
    result = run_cli("validate", str(manifest))
    assert result.returncode == 1, result.stderr
    for path in files.values():
        line = next(x for x in result.stderr.splitlines() if str(path) in x)
        assert line.startswith("ERROR: sub-strokecase")


def test_missing_all_zero_4d_and_duplicate_ids(tmp_path):
    good = ramp((5, 5, 5))
    write_nifti(tmp_path / "a.nii.gz", good)
    write_nifti(tmp_path / "zero.nii.gz", np.zeros((5, 5, 5), np.float32))
    write_nifti(tmp_path / "four_d.nii.gz", ramp((5, 5, 5, 3)))
    write_nifti(tmp_path / "lab.nii.gz", np.zeros((5, 5, 5), np.uint8))
    write_nifti(tmp_path / "moved.nii.gz", np.zeros((5, 5, 5), np.uint8), np.diag([1, 1, 1.5, 1]))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"training": [
        {"id": "c1", "image": ["a.nii.gz", "missing.nii.gz"], "label": "lab.nii.gz"},
        {"id": "c1", "image": ["zero.nii.gz"], "label": "lab.nii.gz"},
        {"id": "c3", "image": ["four_d.nii.gz"], "label": "lab.nii.gz"},
        {"id": "c4", "image": ["a.nii.gz"], "label": "moved.nii.gz"},
        {"id": "c5", "image": ["a.nii.gz"]}]}))
    found = {(p.case, Path(p.path).name, p.message.split(":")[0].split(" (")[0])
             for p in validate_manifest(manifest, progress=False) if p.severity == "error"}
    assert ("c1", "missing.nii.gz", "missing file") in found
    assert ("c1", "m.json", "duplicate case id") in found
    assert ("c1", "zero.nii.gz", "image is all zero") in found
    assert ("c3", "four_d.nii.gz", "4D image with 3 volumes") in found
    assert ("c4", "moved.nii.gz", "label affine differs from the image's by up to 0.5 mm") in found
    assert ("c5", "m.json", "training case has no 'label'") in found


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"),
                                           ('{"training": [{"id": "x"}]}', "has no 'image'")])
def test_broken_manifest_is_one_line_and_exit_2(tmp_path, text, message):
    (tmp_path / "m.json").write_text(text)
    result = run_cli("validate", str(tmp_path / "m.json"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr


def _damaged_cases(tmp_path) -> list[dict]:
    """One case per rule, and two good ones: (id, image paths, label path)."""
    good = ramp((10, 10, 8))
    good[2:5, 2:5, 2:5] = 3.0
    lab = (good > 2).astype(np.uint8)
    oblique = np.eye(4)
    oblique[0, 3] = 0.5
    images = {"good1": good, "good2": good * 7, "nan": np.where(np.arange(good.size).reshape(good.shape) == 5,
                                                                   np.nan, good).astype(np.float32),
              "zero": np.zeros_like(good), "4d": np.stack([good, good], -1), "2d": good[:, :, 0],
              "single_slice": good[:, :, :1]}
    labels = {"label_two": lab * 2, "label_shape": lab[:-1], "label_4d": np.stack([lab, lab], -1)}
    cases = []
    for cid, data in {**images, **{k: good for k in labels}, "label_affine": good}.items():
        image = write_nifti(tmp_path / cid / "img.nii.gz", data)
        label = labels.get(cid, {"2d": lab[:, :, 0], "single_slice": lab[:, :, :1]}.get(cid, lab))
        label_path = write_nifti(tmp_path / cid / "lab.nii.gz", label, oblique if cid == "label_affine" else None)
        cases.append(dict(id=cid, image=[str(image)], label=str(label_path)))
    truncated = write_nifti(tmp_path / "trunc" / "img.nii.gz", good)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    cases.append(dict(id="truncated", image=[str(truncated)], label=cases[0]["label"]))
    cases.append(dict(id="missing", image=[str(tmp_path / "nope.nii.gz")], label=cases[0]["label"]))
    return cases


@pytest.mark.parametrize("volume_index", [None, 0, 5])
def test_validate_and_training_refuse_exactly_the_same_cases(tmp_path, volume_index):
    """validate's errors and the loader every training and inference chain starts with agree case by case."""
    cases = _damaged_cases(tmp_path)
    (tmp_path / "m.json").write_text(json.dumps({"training": cases}))
    flagged = {p.case for p in validate_manifest(tmp_path / "m.json", progress=False, volume_index=volume_index)
               if p.severity == "error"}
    refused = set()
    loader = LoadCheckedd(["image_0"], label_key="label", volume_index=volume_index)
    for c in cases:
        try:
            loader({"id": c["id"], "image_0": c["image"][0], "label": c["label"]})
        except InputError:
            refused.add(c["id"])
    assert flagged == refused
    assert {"good1", "good2"}.isdisjoint(refused)
    assert {"nan", "zero", "2d", "single_slice", "label_two", "label_shape", "label_4d", "label_affine",
            "truncated", "missing"} <= refused
    assert ("4d" in refused) == (volume_index != 0)  # volume 0 of two is a good image; volume 5 does not exist


def test_a_missing_optional_channel_is_blank_and_any_other_is_refused(tmp_path):
    from pipeline.data.transforms import val_transforms
    from pipeline.errors import find_pipeline_error

    rng = np.random.default_rng(0)
    head = np.zeros((20, 20, 12), np.float32)
    head[3:17, 3:17, 2:10] = 100 + rng.normal(0, 5, (14, 14, 8))
    paths = [str(write_nifti(tmp_path / f"c{i}.nii.gz", head * (i + 1))) for i in range(2)]
    full = val_transforms(2, [2.0, 2.0, 2.0], with_label=False)({"id": "case7", "image": paths})["image"]
    blank = val_transforms(2, [2.0, 2.0, 2.0], with_label=False, optional_channels=[1])(
        {"id": "case7", "image": [paths[0], None]})["image"]
    assert blank.shape == full.shape and not blank[1].any()  # blank: 0 after normalisation, as dropout trains
    assert torch.equal(blank[0], full[0])  # the other channels as they were
    for image, optional, message in [([paths[0], None], (), r"channel 1 has no file \(null in the manifest\); "
                                      "this model works only with every channel"),
                                     ([None, paths[1]], [1], "channel 0 has no file")]:
        with pytest.raises(Exception) as info:  # noqa: PT011 - MONAI wraps it; the InputError is found below
            val_transforms(2, [2.0, 2.0, 2.0], with_label=False, optional_channels=optional)(
                {"id": "case7", "image": image})
        err = find_pipeline_error(info.value)
        assert re.search(message, str(err)) and err.case == "case7" and err.path.startswith("image[")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [{"id": "case7", "image": [paths[0], None]}]}))
    problems = validate_manifest(manifest, progress=False)
    assert [(p.severity, p.case, p.path) for p in problems] == [("warning", "case7", "image[1]")]
    manifest.write_text(json.dumps({"testing": [{"id": "case7", "image": [None, paths[1]]}]}))
    assert [(p.severity, p.path) for p in validate_manifest(manifest, progress=False)] == [("error", "image[0]")]
