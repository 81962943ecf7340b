"""Prediction on grids unlike the training data: masks land on each case's own grid."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli, write_nifti


class BrightIsLesion(torch.nn.Module):
    """A fixed 'network' whose lesion logit is the normalised first channel minus 1: it finds bright blobs,
    so a right answer proves the predictor maps the model grid back onto the scanner grid correctly."""

    def __init__(self, spatial_dims: int = 3):
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, x):
        z = 8 * (x[:, :1] - 1.0)
        return torch.cat([-z, z], 1)


def oblique_lps_case(tmp_path, name="case", shape=(48, 44, 14), spacing=(1.1, 1.3, 4.5), degrees=12.0):
    """An LPS, oblique, anisotropic 2-channel case: a head with a bright blob, and the blob's mask."""
    angle = np.deg2rad(degrees)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = [30.0, 25.0, -20.0]
    i, j, k = np.indices(shape)
    head = ((i - 24) / 20) ** 2 + ((j - 22) / 18) ** 2 + ((k - 7) / 6.5) ** 2 < 1
    blob = ((i - 30) / 6) ** 2 + ((j - 16) / 5) ** 2 + ((k - 7) / 2.2) ** 2 < 1
    rng = np.random.default_rng(0)
    dwi = np.where(head, 100 + rng.normal(0, 3, shape), 0) + 250 * blob
    paths = [write_nifti(tmp_path / f"{name}_dwi.nii.gz", dwi.astype(np.float32), affine),
             write_nifti(tmp_path / f"{name}_adc.nii.gz", np.where(head, 800.0, 0).astype(np.float32), affine)]
    label = write_nifti(tmp_path / f"{name}_msk.nii.gz", blob.astype(np.uint8), affine)
    return dict(id=name, image=[str(p) for p in paths], label=str(label)), blob


@pytest.mark.slow
def test_infer_and_evaluate_cli_from_a_trained_checkpoint(synth_set, tiny_checkpoint, tmp_path):
    """infer -> evaluate with a trained checkpoint, as a user runs them; the report files exist and agree."""
    pred = tmp_path / "pred"
    result = run_cli("infer", "--model", str(tiny_checkpoint), "--datalist", str(synth_set[1]), "--output", str(pred),
                     "--split", "all", "--tta", "--save-unc")
    assert result.returncode == 0, result.stderr[-2000:]
    cases = json.loads(synth_set[1].read_text())
    ids = sorted(c["id"] for c in cases["training"] + cases["testing"])
    assert sorted(p.name[: -len(".nii.gz")] for p in pred.glob("sub-strokecase????.nii.gz")) == ids
    assert len(list(pred.glob("*_unc.nii.gz"))) == len(ids)
    result = run_cli("evaluate", "--datalist", str(synth_set[1]), "--predictions", str(pred), "--output",
                     str(tmp_path / "eval"), "--split", "all")
    assert result.returncode == 0, result.stderr[-2000:]
    header = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()[0]
    assert header == "id,dice,iou,hd95_mm,assd_mm,nsd,avd_ml,lesion_count_diff,lesion_f1,true_ml,pred_ml"
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["cases"] == len(ids) and set(summary["metrics"]["dice"]) == {"mean", "median", "std", "ci95", "n"}
    for name in ("per_case_scores.png", "volumes.png", "best_worst_cases.png", "report.html"):
        assert (tmp_path / "eval" / name).stat().st_size > 5000
    assert "data:image/png;base64" in (tmp_path / "eval" / "report.html").read_text()
    free = summary["lesion_free"]
    assert free["cases"] == sum(r["true_ml"] == 0 for r in _rows(tmp_path / "eval" / "metrics.csv"))
    assert f"lesion-free cases with a false lesion: {free['with_false_lesion']} of {free['cases']}" in result.stdout
    # two evaluations side by side, as make demo prints the in-domain and shifted-domain tests
    result = run_cli("compare", f"in-domain={tmp_path / 'eval'}", f"again={tmp_path / 'eval'}", "--out",
                     str(tmp_path / "table.md"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (tmp_path / "table.md").read_text().splitlines()
    assert rows[0].startswith("| test set | cases | Dice (95% CI)") and len(rows) == 4
    dice = summary["metrics"]["dice"]["mean"]
    assert rows[2].startswith(f"| in-domain | {len(ids)} | {dice:.3f} (") and rows[3].startswith("| again |")
    # an evaluation logged to the training's MLflow run under its own name (make shifted: shifted/dice)
    from mlflow import MlflowClient

    train_root = tiny_checkpoint.parents[2]
    run_id = (train_root / "out" / "mlflow_run_id.txt").read_text().strip()
    uri = f"sqlite:///{train_root}/mlflow.db"
    result = run_cli("evaluate", "--datalist", str(synth_set[1]), "--predictions", str(pred), "--output",
                     str(tmp_path / "eval_named"), "--split", "all", "--name", "shifted", "--run-id", run_id,
                     "--tracking-uri", uri)
    assert result.returncode == 0, result.stderr[-2000:]
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.metrics["shifted/dice"] == pytest.approx(dice)
    assert "evaluation_shifted" in {a.path for a in MlflowClient(uri).list_artifacts(run_id)}


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return [{k: float(v) if k != "id" else v for k, v in r.items()} for r in csv.DictReader(f)]


def test_compare_refuses_an_evaluation_that_scored_no_case_in_one_line(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "summary.json").write_text(json.dumps(
        {"cases": 0, "metrics": {}, "failures": [{"id": "a", "reason": "prediction: missing file"}]}))
    result = run_cli("compare", f"planned={tmp_path / 'e'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "planned: no case was scored (1 failed" in result.stderr
