"""Metric values worked out on paper (comments give the arithmetic)."""

import numpy as np
import pytest

from pipeline.evaluation.metrics import case_metrics, lesion_counts

SHAPE = (20, 20, 20)


def box(*slices):
    m = np.zeros(SHAPE, bool)
    m[slices] = True
    return m


A = box(slice(2, 4), slice(2, 4), slice(2, 4))        # 8 voxels
B = box(slice(10, 13), slice(10, 13), slice(10, 13))  # 27 voxels
C = box(slice(17, 18), slice(17, 18), slice(17, 18))  # 1 voxel


def test_both_empty_is_perfect():
    m = case_metrics(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool), [1, 1, 1])
    assert m["dice"] == 1.0 and m["lesion_f1"] == 1.0 and m["iou"] == 1.0 and m["nsd"] == 1.0
    assert m["avd_ml"] == 0.0 and m["lesion_count_diff"] == 0 and m["hd95_mm"] == 0.0


def test_one_lesion_missed():
    m = case_metrics(A, A | B, [1, 1, 1])
    assert m["dice"] == pytest.approx(2 * 8 / (8 + 35), abs=1e-6)      # 16/43
    assert m["iou"] == pytest.approx(8 / 35, abs=1e-6)
    assert m["lesion_f1"] == pytest.approx(1 / (1 + (0 + 1) / 2), abs=1e-6)  # TP 1, FN 1: 2/3
    assert m["lesion_count_diff"] == 1
    assert m["avd_ml"] == pytest.approx(27 / 1000, abs=1e-9) and m["true_ml"] == pytest.approx(0.035)


def test_one_extra_lesion():
    m = case_metrics(A | C, A, [1, 1, 1])
    assert m["dice"] == pytest.approx(16 / 17, abs=1e-6)
    assert m["lesion_f1"] == pytest.approx(2 / 3, abs=1e-6)              # TP 1, FP 1
    assert m["lesion_count_diff"] == 1 and m["pred_ml"] == pytest.approx(0.009)


def test_anisotropic_voxels_scale_volumes_and_distances():
    truth, pred = box(5, 5, 5), box(5, 5, 7)  # one voxel each, two slices apart
    m = case_metrics(pred, truth, [1.0, 1.0, 3.0])
    assert m["true_ml"] == pytest.approx(0.003) and m["avd_ml"] == pytest.approx(0.0)
    assert m["hd95_mm"] == pytest.approx(6.0, abs=1e-6) and m["assd_mm"] == pytest.approx(6.0, abs=1e-6)
    assert m["dice"] == 0.0 and m["lesion_f1"] == 0.0                    # TP 0, FP 1, FN 1
    assert m["nsd"] == 0.0                                               # 6 mm apart > 2 mm tolerance


def test_corner_touching_voxels_are_one_26_connected_lesion():
    truth = box(1, 1, 1) | box(2, 2, 2)
    counts = lesion_counts(box(1, 1, 1), truth)
    assert counts == dict(tp=1, fn=0, fp=0, n_truth=1, n_pred=1)
    assert case_metrics(box(1, 1, 1), truth, [1, 1, 1])["lesion_f1"] == 1.0


def test_prediction_only_and_truth_only():
    only_pred = case_metrics(A, np.zeros(SHAPE, bool), [1, 1, 1])
    assert only_pred["dice"] == 0.0 and only_pred["lesion_f1"] == 0.0 and np.isnan(only_pred["hd95_mm"])
    only_truth = case_metrics(np.zeros(SHAPE, bool), A, [2, 2, 2])
    assert only_truth["avd_ml"] == pytest.approx(8 * 8 / 1000) and only_truth["lesion_count_diff"] == 1
