"""Planned vs fixed configuration: Dice and training seconds on the project's synthetic sets.

For each set (1 mm and 2 mm isotropic, and 1.2 x 1.2 x 5 mm slices; one protocol each) the script synthesises the
data, plans it (``python -m pipeline plan --budget cpu``), trains the fixed default (``train.yaml``: 2 mm, 64^3)
for ``--epochs`` and then the planned overlay for the same number of epochs *or the fixed run's training time,
whichever comes first* (Lightning's ``max_time``; its schedule is still set for ``--epochs``, which if anything
handicaps the planned run), segments the held-out cases and evaluates them, all through the CLI a user runs.
Writes ``benchmarks/results_plan.{json,md}``. About 13 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRAIN = ROOT / "bundles" / "stroke_mri_segmentation" / "configs" / "train.yaml"
THICK = "base: fixed\ndwi: {inplane_mm: [1.2, 1.2], thickness_mm: [5.0, 5.0]}\n"


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, check=True)


def run_set(name: str, synth_args: list[str], out: Path, epochs: int) -> dict:
    manifest = out / f"{name}.json"
    if not manifest.is_file():
        cli("synth", "--out", str(out / name), "--subjects", "24", "--seed", "5", "--test-fraction", "0.25",
            "--manifest", str(manifest), *synth_args)
    cli("plan", "--datalist", str(manifest), "--out", str(out / "plans" / f"{name}.yaml"))
    row = {"plan": _plan(out / "plans" / f"{name}.yaml")}
    budget = []  # the planned run gets the fixed run's training time
    for variant, configs in (("fixed", [str(TRAIN)]), ("planned", [str(TRAIN), str(out / "plans" / f"{name}.yaml")])):
        runs = out / name / f"runs_{variant}"
        cli("train", "--config", *configs, "--datalist", str(manifest), "--output_dir", str(runs),
            "--max_epochs", str(epochs), "--tracking_uri", f"sqlite:///{out}/mlflow.db", *budget)
        summary = json.loads((runs / "summary.json").read_text())
        budget = ["--trainer#max_time", f"{{seconds: {int(summary['train_seconds'])}}}"]
        cli("infer", "--model", summary["best_checkpoint"], "--datalist", str(manifest), "--output",
            str(runs / "pred"), "--overwrite")
        cli("evaluate", "--datalist", str(manifest), "--predictions", str(runs / "pred"), "--output",
            str(runs / "eval"))
        scores = json.loads((runs / "eval" / "summary.json").read_text())["metrics"]
        row[variant] = dict(dice=scores["dice"]["mean"], lesion_f1=scores["lesion_f1"]["mean"],
                            train_seconds=summary["train_seconds"], epochs=summary["epochs"],
                            best_val_dice=summary["best_val_dice"])
    return row


def _plan(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())["plan"]


def to_markdown(results: dict) -> str:
    lines = [f"Planned vs fixed configuration, 2 CPU cores (one seed): the fixed default trains {results['epochs']} "
             "epochs, the planned one as many or the fixed run's training time, whichever comes first", "",
             "| data | plan | fixed: Dice (s, epochs) | planned: Dice (s, epochs) |", "| --- | --- | --- | --- |"]
    for name, r in results["sets"].items():
        p, f, q = r["plan"], r["fixed"], r["planned"]
        lines.append(f"| {name} | {p['target_spacing']} mm, patch {p['patch_size']} | {f['dice']:.3f} "
                     f"({f['train_seconds']:.0f}, {f.get('epochs', '')}) | {q['dice']:.3f} "
                     f"({q['train_seconds']:.0f}, {q.get('epochs', '')}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_plan"))
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "thick.yaml").write_text(THICK)
    sets = {"1mm": ["--domain", "fixed", "--spacing", "1"], "2mm": ["--domain", "fixed", "--spacing", "2"],
            "5mm_slices": ["--domain", str(out / "thick.yaml")]}
    results = {"epochs": args.epochs, "sets": {n: run_set(n, a, out, args.epochs) for n, a in sets.items()}}
    (HERE / "results_plan.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results_plan.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
