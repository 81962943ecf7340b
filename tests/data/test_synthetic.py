import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to
from scipy import ndimage

from pipeline.data.anatomy import lesion_maps
from pipeline.data.synthetic import isles22_paths, load_anatomy, synthesize_subject


@pytest.fixture(scope="module")
def anatomy():
    return load_anatomy()


def test_same_seed_same_subject_other_seed_other_head(anatomy):
    a = synthesize_subject(anatomy, 0, seed=11, spacing=4.0)
    b = synthesize_subject(anatomy, 0, seed=11, spacing=4.0)
    c = synthesize_subject(anatomy, 0, seed=12, spacing=4.0)
    for key in ("dwi", "adc", "flair", "msk"):
        assert np.array_equal(a[key].get_fdata(), b[key].get_fdata()), key
    assert not np.array_equal(a["dwi"].get_fdata(), c["dwi"].get_fdata())


def _ring_means(case, key):
    """Mean intensity inside the lesion and in a 2-voxel tissue ring around it."""
    mask = case["msk"].get_fdata() > 0
    img = case[key]
    if key == "flair":  # FLAIR lives on its own grid
        img = resample_from_to(img, case["msk"], order=1)
    vol = img.get_fdata()
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask & (case["dwi"].get_fdata() > 0)
    return vol[mask].mean(), vol[ring].mean()


@pytest.mark.parametrize("index", [0, 2, 3])
def test_lesions_bright_on_dwi_dark_on_adc_brighter_on_flair(anatomy, index):
    case = synthesize_subject(anatomy, index, seed=5, spacing=2.0)
    assert case["msk"].get_fdata().sum() > 0
    lesion, ring = _ring_means(case, "dwi")
    assert lesion > 1.4 * ring
    lesion, ring = _ring_means(case, "adc")
    assert lesion < 0.75 * ring
    lesion, ring = _ring_means(case, "flair")
    assert lesion > 1.05 * ring


def test_lesions_inside_the_brain_and_one_subject_in_six_lesion_free(anatomy):
    case = synthesize_subject(anatomy, 1, seed=5, spacing=4.0)
    mask = case["msk"].get_fdata() > 0
    assert mask.any() and np.all(case["dwi"].get_fdata()[mask] > 0)
    assert not synthesize_subject(anatomy, 5, seed=5, spacing=4.0)["msk"].get_fdata().any()


def test_lesion_volumes_span_well_under_1ml_to_over_50ml(anatomy):
    volumes = []
    for seed in range(40):
        lesion, _, _ = lesion_maps(anatomy, np.random.default_rng(seed))
        labels, n = ndimage.label(lesion > 0.5)
        volumes += list(np.bincount(labels.ravel())[1:] / 1000.0)  # 1 mm voxels -> mL
    assert min(volumes) < 0.5 and max(volumes) > 50


def test_headers_like_a_scanner_and_flair_on_its_own_grid(anatomy):
    case = synthesize_subject(anatomy, 0, seed=3, spacing=2.0)
    for key in ("dwi", "adc", "flair", "msk"):
        hdr = case[key].header
        assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    assert case["dwi"].get_data_dtype() == np.int16 and case["msk"].get_data_dtype() == np.uint8
    assert case["msk"].shape == case["dwi"].shape and np.allclose(case["msk"].affine, case["dwi"].affine)
    assert case["flair"].shape != case["dwi"].shape
    assert nib.aff2axcodes(case["dwi"].affine) == ("R", "A", "S")
    assert nib.aff2axcodes(case["flair"].affine) != ("R", "A", "S")
    assert 0 < case["adc"].get_fdata().max() <= 4000  # 1e-6 mm^2/s like ISLES'22


def test_tree_written_in_the_isles22_release_layout(synth_set):
    data_dir, _ = synth_set
    for rel in isles22_paths("sub-strokecase0001").values():
        assert (data_dir / rel).is_file(), rel
    assert (data_dir / "sub-strokecase0001/ses-0001/anat/sub-strokecase0001_ses-0001_FLAIR.nii.gz").is_file()


def test_the_same_files_whatever_the_number_of_worker_processes(tmp_path):
    import gzip

    from pipeline.data.synthetic import synthesize

    for workers in (1, 2):
        synthesize(tmp_path / f"w{workers}", subjects=2, seed=4, spacing=5.0, workers=workers, progress=False)
    files = sorted(p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").rglob("*.nii.gz"))
    assert len(files) == 8
    for rel in files:
        assert gzip.open(tmp_path / "w1" / rel).read() == gzip.open(tmp_path / "w2" / rel).read(), rel
