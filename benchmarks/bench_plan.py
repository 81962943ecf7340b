"""Planned vs fixed configuration: Dice and training seconds on the project's synthetic sets.

For each set (1 mm and 2 mm isotropic, and 1.2 x 1.2 x 5 mm slices; one protocol each) the script synthesises the
data, plans it (``python -m pipeline plan --budget cpu``), trains the fixed default (``train.yaml``: 2 mm, 64^3)
for ``--epochs`` and then the planned overlay for the same number of epochs *or the fixed run's training time,
whichever comes first* (Lightning's ``max_time``; its schedule is still set for ``--epochs``, which if anything
handicaps the planned run), segments the held-out cases and evaluates them, all through the CLI a user runs.

Six held-out cases cannot tell two models 0.01-0.02 apart, so each set also gets ``--extra-test`` independent test
subjects (same protocol, another seed), and the two runs are compared case by case on all test cases
(``compare --paired``: the mean difference, its 95% bootstrap interval and the Wilcoxon p).
Writes ``benchmarks/results_plan.{json,md}``. About 20 minutes on 2 cores.
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


def run_set(name: str, synth_args: list[str], out: Path, epochs: int, extra_test: int) -> dict:
    from pipeline.evaluation.compare import paired_differences

    manifest, extra = out / f"{name}.json", out / f"{name}_extra_test.json"
    if not manifest.is_file():
        cli("synth", "--out", str(out / name), "--subjects", "24", "--seed", "5", "--test-fraction", "0.25",
            "--manifest", str(manifest), *synth_args)
    if extra_test and not extra.is_file():
        cli("synth", "--out", str(out / f"{name}_extra_test"), "--subjects", str(extra_test), "--seed", "1005",
            "--all-testing", "--manifest", str(extra), *synth_args)
    cli("plan", "--datalist", str(manifest), "--out", str(out / "plans" / f"{name}.yaml"))
    row = {"plan": _plan(out / "plans" / f"{name}.yaml")}
    budget = []  # the planned run gets the fixed run's training time
    for variant, configs in (("fixed", [str(TRAIN)]), ("planned", [str(TRAIN), str(out / "plans" / f"{name}.yaml")])):
        runs = out / name / f"runs_{variant}"
        cli("train", "--config", *configs, "--datalist", str(manifest), "--output_dir", str(runs),
            "--max_epochs", str(epochs), "--tracking_uri", f"sqlite:///{out}/mlflow.db", *budget)
        summary = json.loads((runs / "summary.json").read_text())
        budget = ["--trainer#max_time", f"{{seconds: {int(summary['train_seconds'])}}}"]
        for suffix, datalist in (("", manifest), ("_extra", extra))[: 2 if extra_test else 1]:
            cli("infer", "--model", summary["best_checkpoint"], "--datalist", str(datalist), "--output",
                str(runs / f"pred{suffix}"), "--overwrite")
            cli("evaluate", "--datalist", str(datalist), "--predictions", str(runs / f"pred{suffix}"), "--output",
                str(runs / f"eval{suffix}"), "--no-viewer")
        scores = json.loads((runs / "eval" / "summary.json").read_text())["metrics"]
        row[variant] = dict(dice=scores["dice"]["mean"], lesion_f1=scores["lesion_f1"]["mean"],
                            train_seconds=summary["train_seconds"], epochs=summary["epochs"],
                            best_val_dice=summary["best_val_dice"])
    if extra_test:  # every test case, held-out and extra, paired between the two runs
        pooled = {v: _pool(out / name / f"runs_{v}", ("eval", "eval_extra")) for v in ("fixed", "planned")}
        row["all_test"] = paired_differences(pooled["fixed"], pooled["planned"])
    return row


def _pool(runs: Path, evaluations: tuple[str, ...]) -> Path:
    """One metrics.csv with the rows of several evaluations of a run (their case ids differ: other seeds)."""
    folder = runs / "eval_all"
    folder.mkdir(exist_ok=True)
    header, rows = None, []
    for name in evaluations:
        lines = (runs / name / "metrics.csv").read_text().splitlines()
        header, rows = lines[0], rows + [f"{name}:{line}" for line in lines[1:]]
    (folder / "metrics.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder


def _plan(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())["plan"]


def to_markdown(results: dict) -> str:
    lines = [f"Planned vs fixed configuration, 2 CPU cores (one seed): the fixed default trains {results['epochs']} "
             "epochs, the planned one as many or the fixed run's training time, whichever comes first", "",
             "| data | plan | fixed: Dice (s, epochs) | planned: Dice (s, epochs) "
             "| all test cases: fixed, planned, difference (95% CI), Wilcoxon p |", "| --- | --- | --- | --- | --- |"]
    for name, r in results["sets"].items():
        p, f, q, a = r["plan"], r["fixed"], r["planned"], r.get("all_test")
        paired = (f"{a['cases']}: {a['reference']:.3f}, {a['other']:.3f}, {a['mean_difference']:+.3f} "
                  f"({a['ci95'][0]:+.3f} to {a['ci95'][1]:+.3f}), p {a['wilcoxon_p']:.2g}") if a else "n/a"
        lines.append(f"| {name} | {p['target_spacing']} mm, patch {p['patch_size']} | {f['dice']:.3f} "
                     f"({f['train_seconds']:.0f}, {f.get('epochs', '')}) | {q['dice']:.3f} "
                     f"({q['train_seconds']:.0f}, {q.get('epochs', '')}) | {paired} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_plan"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--extra-test", type=int, default=24, help="independent test subjects per set (0: none)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "thick.yaml").write_text(THICK)
    sets = {"1mm": ["--domain", "fixed", "--spacing", "1"], "2mm": ["--domain", "fixed", "--spacing", "2"],
            "5mm_slices": ["--domain", str(out / "thick.yaml")]}
    results = {"epochs": args.epochs, "extra_test": args.extra_test,
               "sets": {n: run_set(n, a, out, args.epochs, args.extra_test) for n, a in sets.items()}}
    (HERE / "results_plan.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results_plan.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
