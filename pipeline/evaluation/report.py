"""Evaluate predicted masks against a manifest's labels: metrics.csv, summary.json, plots, report.html.

Example:
    >>> summary = evaluate("data_manifests/synthetic.json", "outputs/predictions",
    ...                    "outputs/evaluation")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import csv
import html
import logging
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.data.checks import read_volume, same_grid
from pipeline.data.voxel_order import reorder_onto
from pipeline.errors import InputError, describe_error, describe_failure
from pipeline.evaluation.calibration import CalibrationAccumulator, calibration_figure, detection_confidence
from pipeline.evaluation.metrics import METRIC_COLUMNS, case_metrics
from pipeline.evaluation.plots import ras_slice, report_figures
from pipeline.io import atomic_path, write_json_atomic

__all__ = ["evaluate", "summarise", "bootstrap_ci", "volume_agreement"]

log = logging.getLogger(__name__)


def bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean (``scipy.stats.bootstrap``); the value itself for one case."""
    from scipy.stats import bootstrap

    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1 or np.all(values == values[0]):
        return float(values[0]), float(values[0])
    ci = bootstrap((values,), np.mean, n_resamples=n, method="percentile", random_state=seed).confidence_interval
    return float(ci.low), float(ci.high)


def summarise(rows: list[dict]) -> dict:
    """Mean, median, std, 95% bootstrap CI and count of finite values for every metric."""
    out = {}
    for col in METRIC_COLUMNS:
        v = np.array([r[col] for r in rows], float)
        finite = v[np.isfinite(v)]
        lo, hi = bootstrap_ci(v)
        out[col] = dict(mean=float(finite.mean()) if len(finite) else None,
                        median=float(np.median(finite)) if len(finite) else None,
                        std=float(finite.std(ddof=1)) if len(finite) > 1 else None,
                        ci95=[lo, hi] if len(finite) else None, n=int(len(finite)))
    return out


def volume_agreement(rows: list[dict], min_true_ml: float = 5.0, tolerance: float = 0.3) -> dict:
    """How many cases whose true lesion volume exceeds ``min_true_ml`` are measured within ``tolerance`` of it
    (relative): the volume a researcher reads off the mask, where it is large enough to be measured."""
    large = [r for r in rows if r["true_ml"] > min_true_ml]
    within = sum(abs(r["pred_ml"] - r["true_ml"]) <= tolerance * r["true_ml"] for r in large)
    return dict(min_true_ml=min_true_ml, tolerance=tolerance, cases=len(large), within=int(within))


def _evaluate_case(case: dict, predictions: Path, tolerance_mm: float,
                   calibration: CalibrationAccumulator | None = None) -> tuple[dict, tuple]:
    cid = str(case["id"])
    pred_path = predictions / f"{cid}.nii.gz"
    try:
        truth, truth_img = read_volume(case["label"])
    except ValueError as err:
        raise InputError(str(err), case=cid, path=case["label"]) from None
    try:
        pred, pred_img = read_volume(pred_path)
    except ValueError as err:
        raise InputError(f"prediction: {err}", case=cid, path=str(pred_path)) from None
    truth, pred = _as_3d(truth) > 0.5, _as_3d(pred) > 0.5
    if not same_grid(pred_img, truth_img):  # a label stored in another voxel order is copied onto the image grid
        truth = reorder_onto(truth, truth_img.affine, pred_img.affine, pred_img.shape[:3])
        if truth is None:
            shift = float(np.abs(pred_img.affine - truth_img.affine).max())
            what = (f"shape {pred_img.shape[:3]} differs from the label's {truth_img.shape[:3]}"
                    if pred_img.shape[:3] != truth_img.shape[:3] else
                    f"affine differs from the label's by up to {shift:.3g} mm (same shape)")
            raise InputError(f"prediction grid: {what}; segment the case again, or compare on one grid",
                             case=cid, path=str(pred_path))
    spacing = pred_img.header.get_zooms()[:3]
    row = dict(id=cid, **case_metrics(pred, truth, spacing, tolerance_mm))
    prob_path = predictions / f"{cid}_prob.nii.gz"
    if calibration is not None and prob_path.is_file():  # written by infer --save-prob
        prob, prob_img = read_volume(prob_path)
        if not same_grid(prob_img, pred_img):
            raise InputError("probability map grid differs from the mask's", case=cid, path=str(prob_path))
        calibration.add(_as_3d(prob), truth)
    image = _as_3d(np.asanyarray(nib.load(case["image"][0]).dataobj)).astype(np.float32)
    return row, ras_slice(image, truth, pred, pred_img.affine)


def _as_3d(data: np.ndarray) -> np.ndarray:
    """The first volume of a NIfTI's data (x, y, z[, t, ...]), without squeezing away a one-slice axis."""
    data = np.asarray(data)
    return data.reshape(data.shape[:3] + (-1,))[..., 0] if data.ndim > 3 else data


def _html(summary: dict, rows: list[dict], files: dict, failures: list, title: str, viewer: str = "") -> str:
    def img(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'

    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else html.escape(str(v)))  # noqa: E731
    head = "".join(f"<th>{c}</th>" for c in ("metric", "mean", "median", "std", "95% CI", "n"))
    ci = lambda s: "" if not s["ci95"] else f"{s['ci95'][0]:.4g} – {s['ci95'][1]:.4g}"  # noqa: E731
    body = "".join(f"<tr><td>{k}</td><td>{fmt(s['mean'])}</td><td>{fmt(s['median'])}</td><td>{fmt(s['std'])}</td>"
                   f"<td>{ci(s)}</td><td>{s['n']}</td></tr>" for k, s in summary["metrics"].items())
    cols = ["id", *METRIC_COLUMNS]
    noted = (summary.get("coarser_than_trained") or {}).get("cases", {})
    notes_text = "<p>Notes: scans coarser than every training case (volumes.csv of the predictions).</p>"
    cases = "".join("<tr>" + "".join(f"<td>{fmt(r[c])}</td>" for c in cols) + f"<td>{fmt(noted.get(r['id'], ''))}"
                    "</td></tr>" for r in rows)
    fails = "".join(f"<li>{html.escape(c)}: {html.escape(m)}</li>" for c, m in failures)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} cases evaluated{f", {len(failures)} failed" if failures else ""}. ISLES'22 definitions: 26-connected
lesions, a lesion is detected when it overlaps the other mask by one voxel or more; Dice and lesion F1 are 1 when
both masks are empty. Volumes from the label header's voxel size. NSD at {summary['tolerance_mm']} mm.</p>
<h2>Summary</h2><table><tr>{head}</tr>{body}</table>
{f"<h2>Viewer</h2>{viewer}" if viewer else ""}
<h2>Per-case scores</h2>{img(files['scores'])}
<h2>Lesion volume</h2>{img(files['volumes'])}
{_calibration_html(summary, img(files['calibration'])) if files.get('calibration') else ""}
<h2>Best and worst cases</h2>{img(files['overlays'])}
{f"<h2>Failed cases</h2><ul>{fails}</ul>" if fails else ""}
<h2>Every case</h2>{notes_text if noted else ""}
<table><tr>{''.join(f'<th>{c}</th>' for c in cols)}<th>notes</th></tr>{cases}</table>
</body></html>"""


def evaluate(manifest: str | Path, predictions: str | Path, output: str | Path, split: str = "testing",
             dataset_dir=None, tolerance_mm: float = 2.0, run_id: str | None = None, tracking_uri: str | None = None,
             progress: bool = True, name: str | None = None, viewer: bool = True) -> dict:
    """Score every labelled case of ``split`` that has ``PREDICTIONS/<id>.nii.gz``; write the report files.

    With ``run_id`` the means go to that MLflow run as ``NAME/metric`` (``name`` defaults to the split, e.g.
    ``testing/dice``; ``shifted/dice`` for the shifted-domain test) and the files under ``evaluation_NAME``.
    ``viewer`` adds the interactive NiiVue viewer of every scored case (:mod:`pipeline.evaluation.viewer`).
    Returns the summary (also ``summary.json``), whose ``failures`` lists cases that could not be scored.
    """
    from tqdm.auto import tqdm

    from pipeline.data.manifest import select_cases

    predictions, output = Path(predictions), Path(output)
    cases = [c for c in select_cases(manifest, split, dataset_dir) if c.get("label")]
    if not cases:
        raise InputError(f"no labelled cases in the '{split}' split", path=str(manifest))
    rows, slices, failures, calibration = [], {}, [], CalibrationAccumulator()
    counts = Counter(str(c["id"]) for c in cases)
    for case in tqdm(cases, desc="evaluating", unit="case", disable=not progress):
        cid = str(case["id"])
        if counts[cid] > 1:
            failures.append((cid, f"duplicate case id ({counts[cid]} cases)"))
            log.error("%s: %s", cid, failures[-1][1])
            continue
        try:
            row, slices[cid] = _evaluate_case(case, predictions, tolerance_mm, calibration)
            rows.append(row)
        except Exception as err:  # noqa: BLE001 - one bad case must not stop the others
            failures.append((cid, describe_failure(err, case["label"])))
            log.error("%s: %s", cid, failures[-1][1])
    output.mkdir(parents=True, exist_ok=True)
    with atomic_path(output / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", *METRIC_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    summary = dict(name=name or split, manifest=str(manifest), predictions=str(predictions), split=split,
                   tolerance_mm=tolerance_mm,
                   cases=len(rows), metrics=summarise(rows) if rows else {},
                   lesion_free=dict(cases=sum(r["true_ml"] == 0 for r in rows),
                                    with_false_lesion=sum(r["true_ml"] == 0 and r["pred_ml"] > 0 for r in rows)),
                   volume_agreement=volume_agreement(rows),
                   failures=[dict(id=c, reason=m) for c, m in failures],
                   calibration=calibration.result(),
                   detection_confidence=detection_confidence(predictions / "lesions.csv", {r["id"] for r in rows}),
                   coarser_than_trained=_coarser_cases(rows, predictions / "volumes.csv"))
    write_json_atomic(summary, output / "summary.json")
    if rows:
        files = report_figures(rows, slices, output)
        files["calibration"] = calibration_figure(summary["calibration"], summary["detection_confidence"],
                                                  output / "calibration.png")
        section = _viewer(cases, {r["id"] for r in rows}, predictions, output) if viewer else ""
        with atomic_path(output / "report.html") as tmp:
            tmp.write_text(_html(summary, rows, files, failures, f"Lesion segmentation report: {Path(manifest).name}",
                                 section))
    if run_id:
        _log_to_mlflow(run_id, tracking_uri, summary, output)
    return summary


def _coarser_cases(rows: list[dict], volumes_csv: Path) -> dict | None:
    """The scored cases that ``infer`` noted as coarser than every training case (``notes`` of volumes.csv), and
    the mean Dice of those and of the others; None without such notes."""
    if not volumes_csv.is_file():
        return None
    with open(volumes_csv, newline="") as f:
        notes = {r["id"]: r.get("notes") or "" for r in csv.DictReader(f)}
    noted = [r for r in rows if notes.get(r["id"])]
    if not noted:
        return None
    others = [r["dice"] for r in rows if not notes.get(r["id"])]
    return dict(cases={r["id"]: notes[r["id"]] for r in noted}, dice=float(np.mean([r["dice"] for r in noted])),
                others_dice=float(np.mean(others)) if others else None)


def _calibration_html(summary: dict, figure: str) -> str:
    c = summary["calibration"]
    text = (f"Expected calibration error {c['ece']:.3f} over {c['voxels']} voxels (probability >= {c['min_prob']} "
            "or lesion; the sure background is left out). " if c else "No probability maps (infer --save-prob). ")
    return (f"<h2>Calibration</h2><p>{text}Right: the maximum probability of each predicted lesion, true against "
            f"false detections (from lesions.csv).</p>{figure}")


def _viewer(cases: list[dict], scored: set, predictions: Path, output: Path) -> str:
    """The report's viewer section; a viewer that cannot be built leaves the rest of the report."""
    from pipeline.evaluation.viewer import write_viewer

    try:
        return write_viewer([c for c in cases if str(c["id"]) in scored], predictions, output)
    except Exception as err:  # noqa: BLE001 - the scores and plots do not depend on it
        log.warning("report: no viewer: %s", describe_error(err))
        return ""


def _log_to_mlflow(run_id: str, tracking_uri: str | None, summary: dict, output: Path) -> None:
    from pipeline.tracking import client as mlflow_client

    client = mlflow_client(tracking_uri)
    for name, stats in summary["metrics"].items():
        if stats["mean"] is not None:
            client.log_metric(run_id, f"{summary['name']}/{name}", stats["mean"])
    client.log_artifacts(run_id, str(output), f"evaluation_{summary['name']}")
    log.info("logged the evaluation to MLflow run %s", run_id)

