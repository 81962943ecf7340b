"""Accuracy of fast inference: Dice of the project's inference settings against the MONAI baseline, with a
trained model, on the test split of the synthetic manifest; seconds per case beside each.

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
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--output", default=str(HERE / "results_accuracy.json"))
    args = parser.parse_args(argv)
    from bench_inference import MonaiBaseline

    from pipeline.batch_inference import select_cases
    from pipeline.inference import Predictor

    model = find_model(args.model, args.datalist, args.epochs)
    cases = select_cases(args.datalist, "testing")
    fast = Predictor.from_path(model, device="cpu")
    s = fast.settings
    baseline = MonaiBaseline(fast.network, s.spacing[0], s.roi_size, s.head)
    results = dict(model=str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model), cases=len(cases),
                   baseline=score(lambda c: baseline.predict_case(c)["mask"], cases))
    for name, overrides in VARIANTS.items():
        predictor = Predictor.from_path(model, device="cpu", **overrides)
        results[name] = score(lambda c, p=predictor: p.predict_case(c)["mask"], cases)
        results[name]["dice_minus_baseline"] = results[name]["dice"] - results["baseline"]["dice"]
        print(name, round(results[name]["dice"], 4), flush=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    Path(args.output).with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


def to_markdown(r: dict) -> str:
    lines = [f"Accuracy of fast inference: mean Dice over the {r['cases']} test cases, model {r['model']}", "",
             "| inference | Dice | Dice - baseline | seconds per case (median) |", "| --- | --- | --- | --- |",
             f"| baseline: MONAI transforms + sliding window, whole volume, overlap 0.5, eager | "
             f"{r['baseline']['dice']:.4f} | 0 | {r['baseline']['seconds_per_case']:.2f} |"]
    for name in VARIANTS:
        v = r[name]
        lines.append(f"| {name} | {v['dice']:.4f} | {v['dice_minus_baseline']:+.4f} | {v['seconds_per_case']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
