"""Controlled comparisons: train one variant config per run for the same budget, then tabulate and plot.

Each variant (e.g. ``configs/norm/batch.yaml``: ``network_def#norm: batch``) is merged over the base
config and trained in its own process, with the same seed, data and number of epochs; each writes its
``summary.json`` (best validation Dice, seconds, peak memory) and its MLflow run (experiment ``study``
unless overridden). The study writes ``study.csv``, ``study.md`` and ``study.png`` into its folder.

Example:
    >>> run_study(sorted(Path("bundles/stroke_mri_segmentation/configs/norm").glob("*.yaml")),
    ...           "outputs/norm_study", {"max_epochs": 8})  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import atomic_path
from pipeline.training.experiment import DEFAULT_CONFIG

__all__ = ["run_study", "write_table", "COLUMNS"]

log = logging.getLogger(__name__)
COLUMNS = ["variant", "best_val_dice", "epochs", "train_seconds", "peak_rss_mb", "status"]


def _override_args(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in (f"--{k}", json.dumps(v))]


def run_study(variants: Sequence[str | Path], output_dir: str | Path, overrides: dict | None = None,
              base_config: str = DEFAULT_CONFIG) -> list[dict]:
    """Train every variant (a config file merged over ``base_config``) with ``overrides``; one failing
    variant is reported in the table and does not stop the others."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    overrides = {"experiment_name": "study", **(overrides or {})}
    rows = []
    for variant in map(Path, variants):
        if not variant.is_file():
            raise PipelineError(f"study variant not found: {variant}")
        out = output_dir / variant.stem
        cmd = [sys.executable, "-m", "pipeline", "train", "--config", base_config, str(variant),
               *_override_args({**overrides, "output_dir": str(out), "run_name": f"{output_dir.name}-{variant.stem}"})]
        log.info("study: training %s", variant.stem)
        result = subprocess.run(cmd, capture_output=True, text=True)
        summary_file = out / "summary.json"
        if result.returncode or not summary_file.is_file():
            reason = (result.stderr.strip().splitlines() or ["no summary.json"])[-1][:300]
            log.error("study: %s failed: %s", variant.stem, reason)
            rows.append(dict(variant=variant.stem, status=f"failed: {reason}"))
            continue
        summary = json.loads(summary_file.read_text())
        rows.append(dict(variant=variant.stem, status="ok", **{k: summary.get(k) for k in COLUMNS[1:-1]}))
    write_table(rows, output_dir)
    return rows


def write_table(rows: list[dict], output_dir: Path) -> None:
    """``study.csv``, ``study.md`` and a bar plot ``study.png`` (Dice, time, memory per variant)."""
    with atomic_path(output_dir / "study.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in COLUMNS} for r in rows)
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    lines = ["| variant | best val Dice | epochs | train seconds | peak RSS (MB) |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | {r['status']} | | | |")
            continue
        lines.append(f"| {r['variant']} | {fmt(r['best_val_dice'], '.4f')} | {fmt(r['epochs'], 'd')} | "
                     f"{fmt(r['train_seconds'], '.0f')} | {fmt(r['peak_rss_mb'], '.0f')} |")
    with atomic_path(output_dir / "study.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return
    from pipeline.figures import pyplot, save_figure

    fig, axes = pyplot().subplots(1, 3, figsize=(12, 3.6))
    names = [r["variant"] for r in ok]
    for ax, key, title in zip(axes, ("best_val_dice", "train_seconds", "peak_rss_mb"),
                              ("best validation Dice", "training time (s)", "peak RSS (MB)"), strict=True):
        ax.bar(names, [r[key] or 0 for r in ok], color="tab:blue")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    if all(r["best_val_dice"] is not None for r in ok):
        axes[0].set_ylim(0, 1)
    fig.tight_layout()
    save_figure(fig, output_dir / "study.png", dpi=110)
