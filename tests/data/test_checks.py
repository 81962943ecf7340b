"""One test per kind of bad input: each becomes an InputError naming the case and the file."""

import json

import numpy as np
import pytest

from conftest import write_nifti
from pipeline.data.checks import LoadCheckedd
from pipeline.data.manifest import load_manifest
from pipeline.errors import InputError


def case(tmp_path, image=None, label=None, affine=None, label_affine=None, n=1):
    image = np.ones((10, 10, 8), np.float32) if image is None else image
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
    d = case(tmp_path, image=vols)
    expect(d, "4D image with 3 volumes: choose one with the config key volume_index")
    assert float(load(dict(d), volume_index=-1)["image_0"].max()) == 3.0
    expect(dict(d), "volume_index 5 is outside", volume_index=5)


def test_2d_image_and_single_slice_for_a_3d_model(tmp_path):
    d = case(tmp_path / "a", image=np.ones((10, 10), np.float32), label=np.zeros((10, 10, 1), np.uint8))
    expect(d, "2D image")
    d = case(tmp_path / "b", image=np.ones((10, 10, 1), np.float32))
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


def test_non_binary_label_and_probabilities_with_a_threshold(tmp_path):
    label = np.zeros((10, 10, 8), np.float32)
    label[2:4, 2:4, 2:4] = 0.8
    label[5, 5, 5] = 0.3
    d = case(tmp_path, label=label)
    expect(d, "label is not binary")
    out = load(dict(d), label_threshold=0.5)
    assert float(out["label"].sum()) == 8.0


def test_nan_and_all_zero_images(tmp_path):
    img = np.ones((10, 10, 8), np.float32)
    img[1, 2, 3] = np.nan
    img[4, 4, 4] = np.inf
    expect(case(tmp_path / "a", image=img), "2 NaN/Inf voxels")
    expect(case(tmp_path / "b", image=np.zeros((10, 10, 8), np.float32)), "image is all zero")


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
