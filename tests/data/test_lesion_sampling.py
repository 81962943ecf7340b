import numpy as np
import pytest

from conftest import write_nifti
from pipeline.data.lesion_sampling import LesionWeightedIndicesd, lesion_weighted_indices
from pipeline.data.transforms import train_transforms


def _two_lesions(shape=(40, 40, 40)):
    label = np.zeros(shape, np.uint8)
    label[4:16, 4:16, 4:16] = 1          # 1728 voxels
    label[30:32, 30:32, 30:32] = 1       # 8 voxels: 216x smaller
    return label


def _share_of_small(indices, label):
    small = np.zeros_like(label, bool)
    small[30:32, 30:32, 30:32] = True
    return float(small.ravel()[indices].mean())


@pytest.mark.parametrize("power, expected", [(0.0, 0.5), (0.5, 8 ** 0.5 / (8 ** 0.5 + 1728 ** 0.5)),
                                             (1.0, 8 / 1736)])
def test_each_lesion_gets_its_share_by_size_to_the_power(power, expected):
    label = _two_lesions()
    fg = np.flatnonzero(label)
    out = lesion_weighted_indices(label, fg, power)
    assert set(out.tolist()) == set(fg.tolist())  # every lesion voxel can still be drawn, nothing else
    assert _share_of_small(out, label) == pytest.approx(expected, rel=0.05)


def test_no_lesion_and_power_1_leave_the_indices_as_they_are():
    empty = np.zeros((8, 8, 8), np.uint8)
    assert lesion_weighted_indices(empty, np.array([], int), 0.0).size == 0
    label = _two_lesions()
    fg = np.flatnonzero(label)
    assert lesion_weighted_indices(label, fg, 1.0) is fg
    with pytest.raises(ValueError, match="size_power"):
        LesionWeightedIndicesd("label", size_power=-1)


def test_training_chain_centres_as_many_patches_on_the_small_lesion_as_on_the_large(tmp_path):
    rng = np.random.default_rng(0)
    label = _two_lesions((48, 48, 48))
    image = (rng.random(label.shape) + 1 + label).astype(np.float32)
    write_nifti(tmp_path / "img.nii.gz", image)
    write_nifti(tmp_path / "lab.nii.gz", label)
    case = {"id": "two", "image": [str(tmp_path / "img.nii.gz")], "label": str(tmp_path / "lab.nii.gz")}

    def small_share(power):
        t = train_transforms(channels=1, spatial_dims=3, spacing=None, patch_size=[8, 8, 8], pos=1.0, neg=0.0,
                             num_samples=200, pos_size_power=power)
        t.set_random_state(0)
        # an 8^3 patch centred on the small lesion holds all 8 of its voxels and none of the large one's
        return np.mean([float(s["label"].sum()) == 8 and float(s["label"][0, 0, 0, 0]) == 0
                        for s in t(dict(case))])

    assert small_share(1.0) < 0.05
    assert 0.35 < small_share(0.0) < 0.65
