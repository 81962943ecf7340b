"""Cross-validation, fold ensembles and transfer learning, as a user runs them."""

import json

import pytest
import torch

from conftest import run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def test_two_fold_cv_parent_child_runs_table_postprocessing_and_single_fold_rerun(synth_set, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cv = tmp_path / "cv"
    args = [a for a in tiny_overrides(synth_set[1], cv, uri, epochs=1)]
    result = run_cli("cv", "--folds", "2", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tests").experiment_id
    runs = client.search_runs([exp])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and sorted(r.data.tags["cv.fold"] for r in children) == ["0", "1"]
    assert all(len(client.get_metric_history(r.info.run_id, "val/dice")) == 1 for r in children)
    assert {"cv/dice", "cv/lesion_f1", "cv/dice_fold_0", "cv/dice_fold_1"} <= set(parent.data.metrics)
    assert {"postprocessing.threshold", "postprocessing.min_lesion_ml"} <= set(parent.data.params)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "cv")} >= {
        "cv/cv_table.csv", "cv/cv_table.md", "cv/postprocessing.json", "cv/evaluation"}

    table = (cv / "cv_table.csv").read_text().splitlines()
    assert table[0].startswith("fold,cases,dice") and [r.split(",")[0] for r in table[1:]] == ["0", "1", "pooled"]
    cases = json.loads(synth_set[1].read_text())["training"]
    assert int(table[-1].split(",")[1]) == len(cases)  # every training case predicted out of fold once
    post = json.loads((cv / "postprocessing.json").read_text())
    assert post["score"] >= post["default_score"] and len(post["grid"]) == 30
    assert len(list((cv / "oof").glob("*.nii.gz"))) == len(cases)

    before = (cv / "fold_0" / "mlflow_run_id.txt").read_text()
    again = run_cli("cv", "--folds", "2", "--fold", "1", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (cv / "fold_0" / "mlflow_run_id.txt").read_text() == before  # fold 0 untouched
    runs = client.search_runs([exp])
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]) == 3

    # the fold ensemble: inference straight from the folder, and as one bundle
    pred = tmp_path / "pred"
    result = run_cli("infer", "--model", str(cv), "--datalist", str(synth_set[1]), "--output", str(pred))
    assert result.returncode == 0, result.stderr[-2000:]
    import shutil

    from conftest import ROOT

    bundle = tmp_path / "bundle" / "stroke_mri_segmentation"
    shutil.copytree(ROOT / "bundles" / "stroke_mri_segmentation", bundle, ignore=shutil.ignore_patterns("models"))
    result = run_cli("export", "--checkpoint", str(cv), "--bundle", str(bundle), "--no-mlflow")
    assert result.returncode == 0, result.stderr[-2000:]
    inference = (bundle / "configs" / "inference.yaml").read_text()
    assert "build_ensemble" in inference and "members: 2" in inference
    assert f"threshold: {post['threshold']}" in inference
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("members.1.") for k in state)


def test_fine_tuning_from_a_checkpoint_with_a_frozen_encoder(synth_set, tiny_checkpoint, tmp_path):
    from pipeline.models.networks import build_network
    from pipeline.models.pretrained import encoder_parameter_names

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli("train", *tiny_overrides(synth_set[1], tmp_path / "out", uri, epochs=1), "--init_from",
                     str(tiny_checkpoint), "--freeze_encoder_epochs", "-1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    source = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    tuned = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    encoder = {f"network.{n}" for n in encoder_parameter_names(
        build_network("unet", 3, 3, channels=[8, 16, 32], strides=[2, 2], num_res_units=1))}
    assert encoder and all(torch.equal(source[k], tuned[k]) for k in encoder)  # frozen throughout
    decoder = [k for k in tuned if k.endswith("weight") and k not in encoder and tuned[k].dim() > 1]
    assert any(not torch.equal(source[k], tuned[k]) for k in decoder)  # the rest was trained

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("tests").experiment_id])[0]
    assert run.data.tags["init_from"] == str(tiny_checkpoint) and len(run.data.tags["init_from.sha256"]) == 64
