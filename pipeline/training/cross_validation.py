"""K-fold cross-validation: one MLflow parent run, a child run per fold, out-of-fold evaluation, and the
post-processing (threshold, minimum lesion volume) chosen on the out-of-fold predictions, nnU-Net style.

Layout under ``output_dir``::

    fold_<k>/            each fold's training (checkpoints, config.yaml, mlflow_run_id.txt)
    oof/                 out-of-fold masks with the chosen post-processing (+ evaluation/ report)
    cv_table.csv/.md     per-fold and pooled metrics
    postprocessing.json  the chosen threshold and minimum lesion volume, used by ensembles and bundles
    parent_run_id.txt    the MLflow parent run, so `--fold k` re-runs one fold into the same structure

Example:
    >>> run_cv([DEFAULT_CONFIG], {"max_epochs": 10, "output_dir": "outputs/cv"}, folds=5)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, describe_error
from pipeline.inference.loading import POSTPROCESSING_FILE, fold_checkpoints
from pipeline.io import atomic_path, write_json_atomic

__all__ = ["run_cv", "choose_postprocessing", "cv_summary_text", "THRESHOLDS", "MIN_LESION_ML"]

log = logging.getLogger(__name__)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_LESION_ML = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)
PARENT_FILE = "parent_run_id.txt"


def _parent_run(cv_dir: Path, tracking_uri: str | None, experiment: str, folds: int) -> tuple[object, str]:
    from pipeline.tracking import client as mlflow_client
    from pipeline.tracking import experiment_id, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    if (cv_dir / PARENT_FILE).is_file():
        return client, (cv_dir / PARENT_FILE).read_text().strip()
    run = client.create_run(experiment_id(client, experiment, uri), run_name=f"cv-{folds}fold",
                            tags={"cv.folds": str(folds)})
    cv_dir.mkdir(parents=True, exist_ok=True)
    (cv_dir / PARENT_FILE).write_text(run.info.run_id + "\n")
    return client, run.info.run_id


def choose_postprocessing(samples: list[tuple]) -> tuple[dict, list[dict]]:
    """Grid search over threshold x minimum lesion volume on out-of-fold (probability, truth, voxel mL[, refine]):
    ``refine``, where given, takes each mask as inference would (the model's border refinement).

    Criterion: mean Dice + mean lesion-wise F1 (both ISLES'22 headline metrics); ties keep the default
    (0.5, 0 mL). Returns the choice and the whole grid.
    """
    from pipeline.evaluation.metrics import dice, lesion_f1
    from pipeline.inference.predictor import Postprocess

    grid = []
    for threshold, min_ml in itertools.product(THRESHOLDS, MIN_LESION_ML):
        post = Postprocess(threshold, min_ml)
        scores = []
        for prob, truth, voxel_ml, *refine in samples:
            mask = post(prob, voxel_ml)  # once per case and grid point
            mask = refine[0](mask) if refine and refine[0] else mask
            scores.append((dice(mask, truth), lesion_f1(mask, truth)))
        d, f = (float(np.mean([s[i] for s in scores])) for i in (0, 1))
        grid.append(dict(threshold=threshold, min_lesion_ml=min_ml, dice=d, lesion_f1=f, score=d + f))
    default = next(g for g in grid if g["threshold"] == 0.5 and g["min_lesion_ml"] == 0.0)
    best = max(grid, key=lambda g: (round(g["score"], 9), g is default))
    return dict(threshold=best["threshold"], min_lesion_ml=best["min_lesion_ml"], criterion="mean dice + lesion_f1",
                score=best["score"], default_score=default["score"]), grid


def _out_of_fold(cv_dir: Path, manifest: str, dataset_dir, folds: int) -> list[dict]:
    """Predict each fold's validation cases with that fold's model; returns per-case records."""
    import nibabel as nib

    from pipeline.data.datamodule import split_cases
    from pipeline.data.manifest import load_manifest
    from pipeline.inference.predictor import Predictor

    cases = load_manifest(manifest, dataset_dir)["training"]
    records = []
    for fold, ckpt in sorted(fold_checkpoints(cv_dir).items()):
        predictor = Predictor.from_path(ckpt)
        for case in split_cases(cases, fold, num_folds=folds)[1]:
            prob, _, ref, channels = predictor.infer(case)
            truth = np.squeeze(np.asanyarray(nib.load(case["label"]).dataobj)) > 0.5
            voxel_ml = float(np.prod(ref.header.get_zooms()[:3])) / 1000.0
            records.append(dict(id=str(case["id"]), fold=fold, prob=prob, truth=truth, voxel_ml=voxel_ml,
                                reference=ref, refine=_refiner(predictor, prob, channels, ref)))
    return records


def _refiner(predictor, prob: np.ndarray, channels: np.ndarray | None, reference):
    """mask -> the mask inference writes (border refinement), for any threshold of the grid; keeps only the box of
    the channels those masks can reach. None where the model does not refine borders."""
    from pipeline.inference.border import border_settings, refinement_box

    border = predictor.settings.border_refinement
    box = refinement_box(prob >= min(THRESHOLDS), np.linalg.norm(reference.affine[:3, :3], axis=0),
                         **border_settings(border)) if border and channels is not None else None
    if box is None:
        return None
    kept, part = channels[(slice(None), *box)].copy(), prob[box]

    def refine(mask: np.ndarray) -> np.ndarray:
        out = mask.copy()
        out[box] = predictor.refine(mask[box], part, kept, reference.affine)
        return out
    return refine


def _cv_table(metrics_csv: Path, fold_of: dict[str, int]) -> list[dict]:
    """Per-fold and pooled means of the out-of-fold evaluation's per-case metrics."""
    with open(metrics_csv, newline="") as f:
        per_case = [dict(r, fold=fold_of[r["id"]]) for r in csv.DictReader(f)]
    rows = []
    for fold in sorted({r["fold"] for r in per_case}) + ["pooled"]:
        sel = [r for r in per_case if fold == "pooled" or r["fold"] == fold]
        rows.append(dict(fold=fold, cases=len(sel), **{k: float(np.mean([float(r[k]) for r in sel]))
                                                        for k in ("dice", "lesion_f1", "avd_ml", "lesion_count_diff")}))
    return rows


def _write_table(rows: list[dict], cv_dir: Path) -> None:
    with atomic_path(cv_dir / "cv_table.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    head = ("| fold | cases | Dice | lesion F1 | abs. volume diff. (mL) | abs. lesion count diff. |\n"
            "|---|---|---|---|---|---|\n")
    body = "".join(f"| {r['fold']} | {r['cases']} | {r['dice']:.4f} | {r['lesion_f1']:.4f} | {r['avd_ml']:.3f} | "
                   f"{r['lesion_count_diff']:.2f} |\n" for r in rows)
    with atomic_path(cv_dir / "cv_table.md") as tmp:
        tmp.write_text(head + body)


def run_cv(config_files: list[str], overrides: dict, folds: int, only_fold: int | None = None) -> dict:
    """Train the folds (all, or ``only_fold``), then, once every fold has a model, evaluate out of fold,
    choose the post-processing and fill the parent run. Returns a summary dict."""
    from pipeline.evaluation.report import evaluate
    from pipeline.inference.grid import like_reference
    from pipeline.inference.predictor import Postprocess
    from pipeline.io import save_nifti_atomic
    from pipeline.training.experiment import load_workflow, train

    wf = load_workflow(config_files, overrides)
    get = wf.parser.get_parsed_content
    cv_dir = Path(overrides.get("output_dir") or "outputs/cv")
    client, parent = _parent_run(cv_dir, get("tracking_uri"), get("experiment_name"), folds)
    failed = []
    for fold in ([only_fold] if only_fold is not None else range(folds)):
        fold_overrides = {**overrides, "val_fold": fold, "num_folds": folds, "output_dir": str(cv_dir / f"fold_{fold}"),
                          "run_name": f"fold_{fold}", "mlflow_tags": {"mlflow.parentRunId": parent,
                                                                      "cv.fold": str(fold)}}
        try:
            train(config_files, fold_overrides)
        except Exception as err:  # noqa: BLE001 - a crashed fold is re-run alone with --fold
            failed.append(fold)
            log.error("fold %d failed: %s (re-run it alone with --fold %d)", fold, describe_error(err), fold)
    done = fold_checkpoints(cv_dir)
    missing = sorted(set(range(folds)) - set(done))
    summary = dict(parent_run_id=parent, folds=folds, failed=failed, missing=missing)
    if missing:
        log.warning("folds %s have no model yet: out-of-fold evaluation waits for them", missing)
        if failed:
            raise PipelineError(f"fold(s) {failed} failed; re-run each with --fold K")
        return summary

    records = _out_of_fold(cv_dir, get("datalist"), get("dataset_dir"), folds)
    post, grid = choose_postprocessing([(r["prob"], r["truth"], r["voxel_ml"], r["refine"]) for r in records])
    write_json_atomic(dict(post, grid=grid), cv_dir / POSTPROCESSING_FILE)
    apply = Postprocess(post["threshold"], post["min_lesion_ml"])
    for r in records:
        mask = apply(r["prob"], r["voxel_ml"])
        mask = r["refine"](mask) if r["refine"] else mask
        save_nifti_atomic(like_reference(mask, r["reference"], np.uint8), cv_dir / "oof" / f"{r['id']}.nii.gz")
    evaluate(get("datalist"), cv_dir / "oof", cv_dir / "oof" / "evaluation", split="training",
             dataset_dir=get("dataset_dir"), progress=False)
    rows = _cv_table(cv_dir / "oof" / "evaluation" / "metrics.csv", {r["id"]: r["fold"] for r in records})
    _write_table(rows, cv_dir)
    for row in rows:
        client.log_metric(parent, f"cv/dice_fold_{row['fold']}", row["dice"])
    pooled = rows[-1]
    for key in ("dice", "lesion_f1", "avd_ml", "lesion_count_diff"):
        client.log_metric(parent, f"cv/{key}", pooled[key])
    client.log_param(parent, "postprocessing.threshold", post["threshold"])
    client.log_param(parent, "postprocessing.min_lesion_ml", post["min_lesion_ml"])
    for name in ("cv_table.csv", "cv_table.md", "postprocessing.json"):
        client.log_artifact(parent, str(cv_dir / name), "cv")
    client.log_artifacts(parent, str(cv_dir / "oof" / "evaluation"), "cv/evaluation")
    client.set_terminated(parent, "FINISHED")
    summary.update(table=rows, postprocessing=post)
    log.info("cross-validation done: pooled Dice %.4f; post-processing %s", pooled["dice"], post)
    return summary


def cv_summary_text(summary: dict) -> str:
    """A short text for the terminal."""
    if "table" not in summary:
        return json.dumps(summary)
    lines = [f"{'fold':>7} {'cases':>5} {'dice':>7} {'lesionF1':>8} {'avd_ml':>7}"]
    lines += [f"{r['fold']!s:>7} {r['cases']:>5} {r['dice']:7.4f} {r['lesion_f1']:8.4f} {r['avd_ml']:7.3f}"
              for r in summary["table"]]
    p = summary["postprocessing"]
    lines.append(f"post-processing: threshold {p['threshold']}, min lesion {p['min_lesion_ml']} mL "
                 f"(score {p['score']:.4f} vs default {p['default_score']:.4f}); parent run {summary['parent_run_id']}")
    return "\n".join(lines)
