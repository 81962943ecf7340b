"""Calibration: ECE and reliability bins of voxel probabilities, and per-lesion detection confidence."""

import numpy as np
import pytest

from pipeline.evaluation.calibration import CalibrationAccumulator, calibration_figure, detection_confidence


def _draw(rng, n, truth_rate):
    prob = rng.uniform(0.0, 1.0, n)
    return prob, rng.uniform(size=n) < truth_rate(prob)


def test_a_calibrated_model_has_a_small_ece_and_an_overconfident_one_a_large_one():
    rng = np.random.default_rng(0)
    calibrated, overconfident = CalibrationAccumulator(), CalibrationAccumulator()
    for _ in range(3):  # pooled over cases
        prob, truth = _draw(rng, 50_000, lambda p: p)
        calibrated.add(prob, truth)
        prob, truth = _draw(rng, 50_000, lambda p: 0.5 * np.ones_like(p))
        overconfident.add(prob, truth)
    good, bad = calibrated.result(), overconfident.result()
    assert good["ece"] < 0.01
    assert bad["ece"] == pytest.approx(0.25, abs=0.01)  # mean |p - 0.5| over p uniform in [0, 1]
    assert sum(b["count"] for b in good["bins"]) == good["voxels"]
    assert good["bins"][9]["lesion_frequency"] == pytest.approx(0.95, abs=0.01)


def test_sure_background_is_left_out_but_lesion_voxels_never_are():
    acc = CalibrationAccumulator(min_prob=0.01)
    prob = np.array([0.0, 0.001, 0.005, 0.5, 0.9])
    truth = np.array([0, 0, 1, 1, 0])
    acc.add(prob, truth)
    result = acc.result()
    assert result["voxels"] == 3  # 0.005 (a missed lesion voxel), 0.5 and 0.9
    assert result["bins"][0]["count"] == 1 and result["bins"][0]["lesion_frequency"] == 1.0


def test_detection_confidence_reads_lesions_csv_and_draws_both_panels(tmp_path):
    (tmp_path / "lesions.csv").write_text(
        "id,lesion,kind,max_prob,detected\n"
        "a,1,predicted,0.99,True\na,2,predicted,0.61,False\na,1,missed,,False\nb,1,predicted,0.97,True\n"
        "c,1,predicted,0.7,\n")
    conf = detection_confidence(tmp_path / "lesions.csv", {"a", "b", "c"})
    assert conf == {"true": [0.99, 0.97], "false": [0.61]}  # missed rows and unlabelled cases are not detections
    assert detection_confidence(tmp_path / "lesions.csv", {"b"}) == {"true": [0.97], "false": []}
    acc = CalibrationAccumulator()
    acc.add(np.array([0.2, 0.8]), np.array([0, 1]))
    path = calibration_figure(acc.result(), conf, tmp_path / "calibration.png")
    assert path.stat().st_size > 5000
    assert calibration_figure(None, None, tmp_path / "none.png") is None
