"""Accuracy with a trained model: fast inference against the MONAI baseline, and generalisation.

* Fast inference: Dice of the project's inference settings against the MONAI baseline on the test split of the
  synthetic manifest; seconds per case beside each.
* Generalisation: the same model on the in-domain test split, on the shifted-domain test set (acquisitions
  outside the training ranges, ``make data``), and on the in-domain test split re-sliced to ``--thickness`` mm
  (:mod:`pipeline.data.reslice`), on the first two cut to ``--coverage`` mm slabs around their lesions (a scan
  covering part of the head), on the first two without each channel the model can do without (FLAIR:
  ``null``, as for cases that lack it), and on ``--independent`` cases of a second simulator that shares no code
  with the project's generator (``independent_cases.py``: its own warp, tissue model, lesion shapes, acquisition
  and storage): mean Dice, lesion F1, and the largest volume error of lesions over 5 mL;
  beside them, the Dice the model grid allows: each truth mask resampled onto the model's grid as training
  sees it, then put back onto the scan's grid as inference does. The gap between the two is the model's.

The model is ``--model`` (a checkpoint or bundle), else the newest best checkpoint of ``outputs/train``
(``make train``), else one trained here for ``--epochs`` epochs into ``outputs/bench_model`` (kept for the
next run). Writes ``benchmarks/results_accuracy.json`` and ``.md``.

Run: ``make bench`` (or ``python benchmarks/bench_accuracy.py --datalist data_manifests/synthetic.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

VARIANTS = {  # name -> Settings overrides of the project's defaults
    "project defaults": {},
    "project, overlap 0.5": {"overlap": 0.5},
    "project, eager PyTorch": {"runtime": "torch"},
    "project + 8-fold mirroring TTA": {"tta_axes": [0, 1, 2]},
    "project, lesions allowed outside the head": {"inside_head_only": False},
    "project, the network's own borders (no border refinement)": {"border_refinement": False},
}


def find_model(model: str | None, datalist: str, epochs: int) -> Path:
    """The model to evaluate, training a quick one when there is none."""
    if model:
        return Path(model)
    trained = sorted((ROOT / "outputs" / "train" / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if trained:
        return trained[-1]
    out = ROOT / "outputs" / "bench_model"
    quick = sorted((out / "checkpoints").glob("best-*.ckpt"))
    if not quick:
        print(f"no trained model: training one for {epochs} epochs into {out}", flush=True)
        subprocess.run([sys.executable, "-m", "pipeline", "train", "--datalist", datalist, "--output_dir", str(out),
                        "--max_epochs", str(epochs), "--experiment_name", "bench"], check=True, cwd=ROOT)
        quick = sorted((out / "checkpoints").glob("best-*.ckpt"))
    return quick[-1]


def score(predict, cases: list[dict]) -> dict:
    from pipeline.evaluation.metrics import dice

    dices, seconds = [], []
    for case in cases:
        t = time.perf_counter()
        mask = predict(case)
        seconds.append(time.perf_counter() - t)
        dices.append(dice(mask > 0, np.asarray(nib.load(case["label"]).dataobj) > 0))
    return dict(dice=float(np.mean(dices)), dice_per_case=dices, seconds_per_case=statistics.median(seconds))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", default=str(ROOT / "data_manifests" / "synthetic.json"))
    parser.add_argument("--model")
    parser.add_argument("--shifted", default=str(ROOT / "data_manifests" / "shifted.json"),
                        help="shifted-domain test manifest (skipped when missing)")
    parser.add_argument("--thickness", type=float, default=4.5, help="re-slice the test split to this many mm")
    parser.add_argument("--coverage", type=float, default=36.0,
                        help="also cut both test sets to slabs of this many mm around their lesions")
    parser.add_argument("--independent", type=int, default=18,
                        help="cases of the independent simulator (0: none)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--output", default=str(HERE / "results_accuracy.json"))
    args = parser.parse_args(argv)
    from bench_inference import MonaiBaseline

    from pipeline.data.manifest import select_cases
    from pipeline.inference import Predictor

    model = find_model(args.model, args.datalist, args.epochs)
    cases = select_cases(args.datalist, "testing")
    fast = Predictor.from_path(model, device="cpu")
    s = fast.settings
    baseline = MonaiBaseline(fast.network, s.spacing[0], s.roi_size, s.head, s.normalise)
    results = dict(model=str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model), cases=len(cases),
                   baseline=score(lambda c: baseline.predict_case(c)["mask"], cases))
    for name, overrides in VARIANTS.items():
        predictor = Predictor.from_path(model, device="cpu", **overrides)
        results[name] = score(lambda c, p=predictor: p.predict_case(c)["mask"], cases)
        results[name]["dice_minus_baseline"] = results[name]["dice"] - results["baseline"]["dice"]
        print(name, round(results[name]["dice"], 4), flush=True)
    results["generalisation"] = generalisation(fast, args.datalist, args.shifted, args.thickness, args.coverage,
                                               args.independent)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    Path(args.output).with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


def evaluate_set(predictor, cases: list[dict]) -> dict:
    """Mean Dice and lesion F1 of the project's defaults, and each case's volumes (mL)."""
    from pipeline.data.transforms import val_transforms
    from pipeline.evaluation.metrics import dice, lesion_f1

    s = predictor.settings
    prepare = val_transforms(s.channels, s.spacing, register=s.register, n4=s.n4, spatial_dims=s.spatial_dims,
                             volume_index=s.volume_index, crop_to_head=s.crop_to_head, normalise=s.normalise,
                             optional_channels=s.optional_channels)
    rows = []
    for case in cases:
        label = nib.load(case["label"])
        truth = np.asarray(label.dataobj) > 0
        mask = predictor.predict_case(case)["mask"] > 0
        voxel_ml = float(np.prod(label.header.get_zooms()[:3])) / 1000
        rows.append(dict(id=case["id"], dice=dice(mask, truth), lesion_f1=lesion_f1(mask, truth),
                         true_ml=float(truth.sum()) * voxel_ml, pred_ml=float(mask.sum()) * voxel_ml,
                         grid_ceiling=dice(truth_through_grid(prepare, case, label), truth)))
    big = [r for r in rows if r["true_ml"] > 5]
    return dict(cases=len(rows), dice=float(np.mean([r["dice"] for r in rows])),
                lesion_f1=float(np.mean([r["lesion_f1"] for r in rows])),
                grid_ceiling=float(np.mean([r["grid_ceiling"] for r in rows])),
                max_volume_error_over_5ml=max((abs(r["pred_ml"] - r["true_ml"]) / r["true_ml"] for r in big),
                                              default=None), rows=rows)


def truth_through_grid(prepare, case: dict, label: nib.Nifti1Image) -> np.ndarray:
    """The truth mask resampled onto the model's grid by ``prepare`` (the model's preprocessing with the label, as
    training sees it) and put back onto its own grid (as inference puts probabilities back), cut at 0.5."""
    from pipeline.inference.grid import to_grid

    prepared = prepare(dict(case))
    on_grid = np.asarray(prepared["label"][0], dtype=np.float32)
    return to_grid(on_grid, np.asarray(prepared["image"].affine), label) >= 0.5


def generalisation(predictor, datalist: str, shifted: str, thickness: float, coverage: float | None = None,
                   independent: int = 0) -> dict:
    """The model on the in-domain test split, the shifted-domain test set and the test split re-sliced; on the
    first two cut to ``coverage`` mm around their lesions; on the first two with each channel the model can
    do without (``optional_channels``, e.g. FLAIR) missing; and on ``independent`` cases of the independent
    simulator."""
    import tempfile

    from pipeline.data.manifest import load_manifest, select_cases
    from pipeline.data.reslice import reslice_manifest

    sets = {"in-domain": select_cases(datalist, "testing")}
    if Path(shifted).is_file():
        sets["shifted"] = select_cases(shifted, "testing")
    out = {name: evaluate_set(predictor, cases) for name, cases in sets.items()}
    names = load_manifest(datalist).get("channels") or []
    for channel in predictor.settings.optional_channels:
        missing = names[channel].upper() if channel < len(names) else f"channel {channel}"
        for name, cases in sets.items():
            out[f"{name} without {missing} (null)"] = evaluate_set(predictor, [
                dict(c, image=[None if i == channel else p for i, p in enumerate(c["image"])]) for c in cases])
    with tempfile.TemporaryDirectory() as tmp:
        reslice_manifest(datalist, tmp, thickness)
        out[f"in-domain re-sliced to {thickness:g} mm"] = evaluate_set(predictor, select_cases(
            Path(tmp) / "manifest.json", "testing"))
    for name, manifest in (("in-domain", datalist), ("shifted", shifted)):
        if coverage and name in sets:
            with tempfile.TemporaryDirectory() as tmp:
                reslice_manifest(manifest, tmp, None, coverage_mm=coverage)
                out[f"{name} cut to {coverage:g} mm around the lesion"] = evaluate_set(predictor, select_cases(
                    Path(tmp) / "manifest.json", "testing"))
    if independent:
        from independent_cases import generate

        with tempfile.TemporaryDirectory() as tmp:
            manifest = generate(Path(tmp) / "cases", independent)
            out["independent simulator"] = evaluate_set(predictor, select_cases(manifest, "testing"))
    for name, r in out.items():
        print(f"{name}: Dice {r['dice']:.4f} (the grid allows {r['grid_ceiling']:.4f}), lesion F1 {r['lesion_f1']:.4f}",
              flush=True)
    return out


def to_markdown(r: dict) -> str:
    lines = [f"Accuracy of fast inference: mean Dice over the {r['cases']} test cases, model {r['model']}", "",
             "| inference | Dice | Dice - baseline | seconds per case (median) |", "| --- | --- | --- | --- |",
             f"| baseline: MONAI transforms + sliding window, whole volume, overlap 0.5, eager | "
             f"{r['baseline']['dice']:.4f} | 0 | {r['baseline']['seconds_per_case']:.2f} |"]
    for name in VARIANTS:
        v = r[name]
        lines.append(f"| {name} | {v['dice']:.4f} | {v['dice_minus_baseline']:+.4f} | {v['seconds_per_case']:.2f} |")
    lines += ["", "Generalisation: the same model (project defaults) on data unlike its training data", "",
              "| test set | cases | Dice | lesion F1 | largest volume error, lesions > 5 mL | Dice the model grid "
              "allows (truth there and back) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, g in r.get("generalisation", {}).items():
        err = "" if g["max_volume_error_over_5ml"] is None else f"{100 * g['max_volume_error_over_5ml']:.0f}%"
        lines.append(f"| {name} | {g['cases']} | {g['dice']:.4f} | {g['lesion_f1']:.4f} | {err} | "
                     f"{g['grid_ceiling']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
