"""The paper's U-Net: size arithmetic, overlap-tile inference, the boundary weight map and its loss, and the
weight penalties."""

import numpy as np
import pytest
import torch

from pipeline.data.weight_map import BoundaryWeightMapd, boundary_weight_map


def test_weight_map_between_two_blobs_in_millimetres():
    label = np.zeros((30, 10, 10), np.uint8)
    label[5:10, 3:7, 3:7] = 1   # blob A ends at x = 9
    label[16:21, 3:7, 3:7] = 1  # blob B starts at x = 16
    spacing, w0, sigma = (2.0, 1.0, 1.0), 10.0, 5.0
    w = boundary_weight_map(label, spacing, w0=w0, sigma_mm=sigma, class_balance=True)
    n, n_fg = label.size, label.sum()
    w_bg, w_fg = n / (2 * (n - n_fg)), n / (2 * n_fg)
    # x = 12 on the blobs' axis: 3 voxels (6 mm) from A, 4 voxels (8 mm) from B
    assert w[12, 5, 5] == pytest.approx(w_bg + w0 * np.exp(-((6.0 + 8.0) ** 2) / (2 * sigma**2)), rel=1e-5)
    # inside A at x = 9 (its edge): d1 = 0, d2 = 7 voxels = 14 mm to B
    assert w[9, 5, 5] == pytest.approx(w_fg + w0 * np.exp(-(14.0**2) / (2 * sigma**2)), rel=1e-5)
    # far from both (18.5 and 40.2 mm), only the class weight is left
    assert w[29, 0, 0] == pytest.approx(w_bg, abs=1e-6)
    one_blob = label.copy()
    one_blob[16:] = 0
    plain = boundary_weight_map(one_blob, spacing, w0=w0, sigma_mm=sigma, class_balance=False)
    assert np.all(plain == 1.0)  # one lesion: no gap to stress, no class balancing asked


def test_weight_map_transform_reads_the_spacing_from_the_affine():
    from monai.data import MetaTensor

    label = np.zeros((1, 30, 10, 10), np.float32)
    label[0, 5:10, 3:7, 3:7] = label[0, 16:21, 3:7, 3:7] = 1
    affine = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0]))
    out = BoundaryWeightMapd("label", w0=10, sigma_mm=5, class_balance=False)({"label": MetaTensor(label, affine)})
    assert out["weight"].shape == (1, 30, 10, 10)
    assert float(out["weight"][0, 12, 5, 5]) == pytest.approx(1 + 10 * np.exp(-(14.0**2) / 50), rel=1e-5)


