"""Two models on the same cases, paired case by case (``compare --paired``), from real evaluate folders."""

import json

import numpy as np
import pytest

from conftest import run_cli, write_nifti
from pipeline.evaluation.compare import paired_differences
from pipeline.evaluation.report import evaluate

SIDES = (4, 5, 6, 8)  # one cube lesion per case; model B's is shifted one voxel: Dice (n - 1) / n


@pytest.fixture()
def two_models(tmp_path):
    """Evaluate folders of model A (every lesion exact) and model B (each cube one voxel off; no prediction for
    the last case, which fails and is left out of the pairing)."""
    cases = []
    for i, n in enumerate((*SIDES, 4)):
        truth = np.zeros((16, 16, 16), np.uint8)
        truth[4:4 + n, 4:4 + n, 4:4 + n] = 1
        cid = f"case{i}"
        write_nifti(tmp_path / "data" / f"{cid}_dwi.nii.gz", truth.astype(np.float32) + 1)
        write_nifti(tmp_path / "data" / f"{cid}_msk.nii.gz", truth)
        write_nifti(tmp_path / "pred_a" / f"{cid}.nii.gz", truth)
        if i < len(SIDES):
            write_nifti(tmp_path / "pred_b" / f"{cid}.nii.gz", np.roll(truth, 1, axis=0))
        cases.append({"id": cid, "image": [f"data/{cid}_dwi.nii.gz"], "label": f"data/{cid}_msk.nii.gz"})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"testing": cases, "training": []}))
    for model in "ab":
        evaluate(manifest, tmp_path / f"pred_{model}", tmp_path / f"eval_{model}", progress=False, viewer=False)
    return tmp_path / "eval_a", tmp_path / "eval_b"


def test_paired_difference_is_the_mean_of_per_case_differences_with_its_interval_and_wilcoxon_p(two_models):
    a, b = two_models
    d = paired_differences(a, b)
    expected = [(n - 1) / n - 1.0 for n in SIDES]  # -0.25, -0.2, -0.167, -0.125
    assert d["cases"] == 4 and d["only_one"] == 1  # the case B has no prediction for
    assert d["reference"] == pytest.approx(1.0) and d["other"] == pytest.approx(1 + np.mean(expected))
    assert d["mean_difference"] == pytest.approx(np.mean(expected))
    assert min(expected) - 1e-9 <= d["ci95"][0] <= d["ci95"][1] <= max(expected) + 1e-9
    assert d["wilcoxon_p"] == pytest.approx(0.125)  # exact two-sided: all 4 of one sign, 2 / 2**4
    assert (d["higher"], d["equal"], d["lower"]) == (0, 0, 4)
    flipped = paired_differences(b, a)
    assert flipped["mean_difference"] == pytest.approx(-d["mean_difference"]) and flipped["higher"] == 4
    same = paired_differences(a, a)
    assert same["mean_difference"] == 0 and same["wilcoxon_p"] == 1.0 and same["equal"] == 5


def test_compare_cli_prints_the_paired_table(two_models, tmp_path):
    a, b = two_models
    result = run_cli("compare", f"A={a}", f"B={b}", "--paired", "--out", str(tmp_path / "table.md"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (tmp_path / "table.md").read_text().splitlines()
    paired = rows[rows.index("") + 1:]
    assert paired[0].startswith("| dice: against A | cases | A | other | difference (95% CI) | Wilcoxon p")
    assert paired[2].startswith("| B | 4 (1 in one only) | 1.000 | 0.815 | -0.185 (") and "| 0 / 0 / 4 |" in paired[2]
    result = run_cli("compare", f"A={a}", f"B={tmp_path}", "--paired")  # a folder with no evaluation in it
    assert result.returncode != 0 and "no summary.json" in result.stderr
