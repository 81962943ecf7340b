"""Evaluation as a user runs it: metrics CSV, summary with CIs, plots, report.html, compare, MLflow."""

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_infer_and_evaluate_cli_from_a_trained_checkpoint(synth_set, tiny_checkpoint, tmp_path):
    """infer -> evaluate with a trained checkpoint, as a user runs them; the report files exist and agree."""
    pred = tmp_path / "pred"
    result = run_cli("infer", "--model", str(tiny_checkpoint), "--datalist", str(synth_set[1]), "--output", str(pred),
                     "--split", "all", "--tta", "--save-unc", "--save-prob")
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
    assert 0 <= summary["calibration"]["ece"] <= 1 and summary["calibration"]["voxels"] > 0  # from --save-prob
    lesions = _rows_text(pred / "lesions.csv")
    volumes = _rows_text(pred / "volumes.csv")
    predicted = [r for r in lesions if r["kind"] == "predicted"]
    assert len(predicted) == sum(int(v["components"]) for v in volumes)  # one row per lesion
    assert all(r["detected"] in ("True", "False") and r["mean_tta_var"] != "" for r in predicted)
    for name in ("per_case_scores.png", "volumes.png", "best_worst_cases.png", "report.html", "calibration.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 5000
    assert "data:image/png;base64" in (tmp_path / "eval" / "report.html").read_text()
    free = summary["lesion_free"]
    assert free["cases"] == sum(r["true_ml"] == 0 for r in _rows(tmp_path / "eval" / "metrics.csv"))
    assert f"lesion-free cases with a false lesion: {free['with_false_lesion']} of {free['cases']}" in result.stdout
    vol = summary["volume_agreement"]
    assert vol["cases"] == sum(r["true_ml"] > 5 for r in _rows(tmp_path / "eval" / "metrics.csv"))
    assert f"lesions over 5 mL measured within 30%: {vol['within']} of {vol['cases']} cases" in result.stdout
    # two evaluations side by side, as make demo prints the in-domain and shifted-domain tests
    result = run_cli("compare", f"in-domain={tmp_path / 'eval'}", f"again={tmp_path / 'eval'}", "--out",
                     str(tmp_path / "table.md"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (tmp_path / "table.md").read_text().splitlines()
    assert rows[0].startswith("| test set | cases | Dice (95% CI)") and len(rows) == 4
    dice = summary["metrics"]["dice"]["mean"]
    assert rows[2].startswith(f"| in-domain | {len(ids)} | {dice:.3f} (") and rows[3].startswith("| again |")
    assert rows[2].endswith(f"| {vol['within']} of {vol['cases']} |")
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


def test_volume_agreement_counts_large_lesions_measured_within_the_tolerance():
    from pipeline.evaluation.report import volume_agreement

    rows = [dict(true_ml=10.0, pred_ml=13.0),   # +30%: within (the bound counts)
            dict(true_ml=10.0, pred_ml=6.9),    # -31%: outside
            dict(true_ml=20.0, pred_ml=26.5),   # +32.5%: outside
            dict(true_ml=5.0, pred_ml=50.0),    # not over 5 mL: not counted
            dict(true_ml=0.0, pred_ml=0.0)]
    assert volume_agreement(rows) == dict(min_true_ml=5.0, tolerance=0.3, cases=3, within=1)
    assert volume_agreement(rows, min_true_ml=1.0, tolerance=0.35)["within"] == 3


def test_compare_refuses_an_evaluation_that_scored_no_case_in_one_line(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "summary.json").write_text(json.dumps(
        {"cases": 0, "metrics": {}, "failures": [{"id": "a", "reason": "prediction: missing file"}]}))
    result = run_cli("compare", f"planned={tmp_path / 'e'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "planned: no case was scored (1 failed" in result.stderr


def _rows_text(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_label_stored_in_another_voxel_order_scores_as_on_the_image_grid(tmp_path):
    """A mask saved by another tool in another axis order (LPS vs RAS) is the same mask: same metrics."""
    import nibabel as nib
    import numpy as np

    from conftest import lps_affine, write_nifti
    from pipeline.evaluation.report import evaluate

    affine = lps_affine((2.0, 2.0, 4.0), degrees=10)
    truth = np.zeros((30, 32, 12), np.uint8)
    truth[5:15, 8:20, 3:7] = 1
    pred = np.zeros_like(truth)
    pred[6:16, 8:22, 3:7] = 1
    image = write_nifti(tmp_path / "dwi.nii.gz", np.ones(truth.shape, np.float32), affine)
    write_nifti(tmp_path / "pred" / "c.nii.gz", pred, affine)
    write_nifti(tmp_path / "same.nii.gz", truth, affine)
    turned = nib.Nifti1Image(truth, affine).as_reoriented(nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("S", "R", "A"))))
    write_nifti(tmp_path / "turned.nii.gz", np.asarray(turned.dataobj), turned.affine)
    scores = {}
    for name in ("same", "turned"):
        manifest = tmp_path / f"{name}.json"
        manifest.write_text(json.dumps({"testing": [{"id": "c", "image": [str(image)],
                                                     "label": str(tmp_path / f"{name}.nii.gz")}]}))
        summary = evaluate(manifest, tmp_path / "pred", tmp_path / f"eval_{name}", progress=False, viewer=False)
        assert summary["cases"] == 1, summary.get("failures")
        scores[name] = _rows_text(tmp_path / f"eval_{name}" / "metrics.csv")[0]
    assert scores["turned"] == scores["same"] and 0.5 < float(scores["same"]["dice"]) < 1.0


def test_a_prediction_on_another_grid_fails_alone_and_says_how_it_differs(tmp_path):
    """Another shape or a shifted affine: that case is refused naming its file and the difference; the rest score."""
    import numpy as np

    from conftest import write_nifti
    from pipeline.evaluation.report import evaluate

    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    truth = np.zeros((20, 22, 10), np.uint8)
    truth[5:12, 6:14, 3:7] = 1
    moved = affine.copy()
    moved[0, 3] += 3.0
    cases = []
    for cid, (pred, pred_affine) in {"ok": (truth, affine), "shape": (truth[:-2], affine),
                                     "moved": (truth, moved)}.items():
        write_nifti(tmp_path / "pred" / f"{cid}.nii.gz", pred, pred_affine)
        label = write_nifti(tmp_path / f"{cid}_label.nii.gz", truth, affine)
        cases.append({"id": cid, "image": [str(label)], "label": str(label)})
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": cases}))
    summary = evaluate(manifest, tmp_path / "pred", tmp_path / "eval", progress=False, viewer=False)
    failures = {f["id"]: f["reason"] for f in summary["failures"]}
    assert summary["cases"] == 1 and set(failures) == {"shape", "moved"}
    assert "shape (18, 22, 10) differs from the label's (20, 22, 10)" in failures["shape"]
    assert "affine differs from the label's by up to 3 mm (same shape)" in failures["moved"]
    assert float(_rows_text(tmp_path / "eval" / "metrics.csv")[0]["dice"]) == 1.0


@pytest.mark.slow
def test_cases_without_flair_are_segmented_by_a_model_trained_with_flair_dropout(synth_set, tiny_checkpoint,
                                                                                  tmp_path):
    """A null FLAIR (a case that lacks it) is blanked, as the default training's channel dropout taught the model:
    validate warns, infer writes every mask on the DWI grid, from a manifest or from `--image DWI ADC none`."""
    import nibabel as nib
    import numpy as np
    import torch

    from pipeline.data.manifest import load_manifest
    from pipeline.inference.settings import Settings

    hparams = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert Settings.from_hparams(hparams).optional_channels == [2]  # the channel train.yaml drops out
    cases = load_manifest(synth_set[1])["testing"]
    for case in cases:
        case["image"][2] = None
    manifest = tmp_path / "no_flair.json"
    manifest.write_text(json.dumps({"channels": ["dwi", "adc", "flair"], "testing": cases}))
    result = run_cli("validate", str(manifest), "--verbose")
    assert result.returncode == 0 and result.stdout.count("channel 2 has no file (null)") == len(cases), result.stdout
    pred = tmp_path / "pred"
    result = run_cli("infer", "--model", str(tiny_checkpoint), "--datalist", str(manifest), "--output", str(pred),
                     "--no-mni")
    assert result.returncode == 0, result.stderr[-2000:]
    for case in cases:
        mask, dwi = nib.load(pred / f"{case['id']}.nii.gz"), nib.load(case["image"][0])
        assert mask.shape == dwi.shape and np.allclose(mask.affine, dwi.affine, atol=1e-4)
    # one case straight from its files, no manifest: the same mask
    result = run_cli("infer", "--model", str(tiny_checkpoint), "--image", cases[0]["image"][0], cases[0]["image"][1],
                     "none", "--id", "one", "--output", str(tmp_path / "single"), "--no-mni")
    assert result.returncode == 0 and "1 written" in result.stdout, result.stderr[-2000:]
    assert np.array_equal(nib.load(tmp_path / "single" / "one.nii.gz").get_fdata(),
                          nib.load(pred / f"{cases[0]['id']}.nii.gz").get_fdata())


@pytest.mark.slow
def test_a_4d_dwi_is_refused_in_one_line_then_segmented_with_volume_index(synth_set, tiny_checkpoint, tmp_path):
    """dcm2niix writes DWI as 4D (b0 first, b1000 last): infer names the fix, and --volume-index -1 gives the mask
    of the b1000 volume alone."""
    import nibabel as nib
    import numpy as np

    from pipeline.data.manifest import load_manifest

    case = load_manifest(synth_set[1])["testing"][0]
    dwi = nib.load(case["image"][0])
    b1000 = dwi.get_fdata(dtype=np.float32)
    stacked = tmp_path / "dwi_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([b1000 * 3, b1000], -1), dwi.affine), stacked)
    common = ["infer", "--model", str(tiny_checkpoint), "--no-mni", "--id", "c"]
    result = run_cli(*common, "--image", str(stacked), *case["image"][1:], "--output", str(tmp_path / "a"))
    assert result.returncode == 1 and "4D image with 2 volumes" in result.stderr
    assert "infer/validate --volume-index -1" in result.stderr
    result = run_cli(*common, "--image", str(stacked), *case["image"][1:], "--output", str(tmp_path / "b"),
                     "--volume-index", "-1")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(*common, "--image", *case["image"], "--output", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr[-2000:]
    mask, alone = nib.load(tmp_path / "b" / "c.nii.gz"), nib.load(tmp_path / "c" / "c.nii.gz")
    assert mask.shape == dwi.shape and np.array_equal(mask.get_fdata(), alone.get_fdata())
