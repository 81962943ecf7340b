"""Several evaluations side by side: the in-domain and the shifted-domain test in one table; or two models on the
same cases, paired case by case.

Two models' mean Dice on a dozen cases differ by 0.01-0.02 from the seed alone. :func:`paired_table` scores each
evaluation against the first on the cases both scored: the mean of the per-case differences with its 95%
bootstrap interval, the Wilcoxon signed-rank p, and how many cases scored higher or lower; an interval that spans 0
says the test set cannot tell the two apart.

Example:
    >>> table = domain_table({"in-domain": "outputs/evaluation",
    ...                       "shifted": "outputs/shifted/evaluation"})  # doctest: +SKIP
    >>> paired = paired_table({"fixed": "runs_fixed/eval", "planned": "runs_planned/eval"})  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.evaluation.report import bootstrap_ci

__all__ = ["domain_table", "paired_differences", "paired_table"]

def _summary(folder: str | Path) -> dict:
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise InputError("no summary.json: run `python -m pipeline evaluate` into this folder first", path=str(path))
    return json.loads(path.read_text())


def _agreement(summary: dict) -> str:
    vol = summary.get("volume_agreement")  # absent in evaluations written before it was added
    return f"{vol['within']} of {vol['cases']}" if vol else "n/a"


def domain_table(evaluations: dict[str, str | Path]) -> str:
    """Markdown table of mean Dice (95% CI), lesion F1, absolute volume difference, false lesions in
    lesion-free cases and volumes within 30% where the lesion is over 5 mL, one row per evaluation folder."""
    lines = ["| test set | cases | Dice (95% CI) | lesion F1 | AVD (mL) | lesion-free cases with a false lesion "
             "| volume within 30% (lesions > 5 mL) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, folder in evaluations.items():
        summary = _summary(folder)
        m = summary["metrics"]
        if "dice" not in m:
            raise InputError(f"{name}: no case was scored ({len(summary.get('failures', []))} failed; see "
                             "failures in summary.json)", path=str(Path(folder) / "summary.json"))
        ci = m["dice"]["ci95"] or [float("nan")] * 2
        free = summary.get("lesion_free", {"cases": 0, "with_false_lesion": 0})
        lines.append(f"| {name} | {summary['cases']} | {m['dice']['mean']:.3f} ({ci[0]:.3f}-{ci[1]:.3f}) | "
                     f"{m['lesion_f1']['mean']:.3f} | {m['avd_ml']['mean']:.2f} | "
                     f"{free['with_false_lesion']} of {free['cases']} | {_agreement(summary)} |")
    return "\n".join(lines) + "\n"


def _case_scores(folder: str | Path, metric: str) -> dict[str, float]:
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        raise InputError("no metrics.csv: run `python -m pipeline evaluate` into this folder first", path=str(path))
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and metric not in rows[0]:
        raise InputError(f"no column {metric!r} (columns: {', '.join(rows[0])})", path=str(path))
    return {r["id"]: float(r[metric]) for r in rows if r[metric] not in ("", "nan")}


def paired_differences(reference: str | Path, other: str | Path, metric: str = "dice") -> dict:
    """``other`` minus ``reference``, case by case, on the cases both evaluations scored: the mean difference,
    its 95% bootstrap interval, the Wilcoxon signed-rank p (two-sided; 1.0 when no case differs) and the counts
    of cases scoring higher, equal and lower (for a metric where lower is better, such as
    ``avd_ml``, "higher" is worse)."""
    from scipy.stats import wilcoxon

    a, b = _case_scores(reference, metric), _case_scores(other, metric)
    common = sorted(set(a) & set(b))
    if not common:
        raise InputError(f"no case scored in both evaluations ({reference} and {other})", path=str(other))
    diff = np.array([b[c] - a[c] for c in common])
    p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    low, high = bootstrap_ci(diff)
    return dict(metric=metric, cases=len(common), only_one=len(set(a) ^ set(b)),
                reference=float(np.mean([a[c] for c in common])), other=float(np.mean([b[c] for c in common])),
                mean_difference=float(diff.mean()), ci95=[low, high], wilcoxon_p=p,
                higher=int((diff > 0).sum()), equal=int((diff == 0).sum()), lower=int((diff < 0).sum()))


def paired_table(evaluations: dict[str, str | Path], metric: str = "dice") -> str:
    """Markdown table: every evaluation after the first against the first, paired on the cases both scored."""
    names = list(evaluations)
    if len(names) < 2:
        raise InputError("a paired comparison needs two evaluations or more")
    ref = names[0]
    lines = [f"| {metric}: against {ref} | cases | {ref} | other | difference (95% CI) | Wilcoxon p "
             "| higher / equal / lower |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in names[1:]:
        d = paired_differences(evaluations[ref], evaluations[name], metric)
        cases = f"{d['cases']} ({d['only_one']} in one only)" if d["only_one"] else str(d["cases"])
        lines.append(f"| {name} | {cases} | {d['reference']:.3f} | {d['other']:.3f} | {d['mean_difference']:+.3f} "
                     f"({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}) | {d['wilcoxon_p']:.3g} | "
                     f"{d['higher']} / {d['equal']} / {d['lower']} |")
    return "\n".join(lines) + "\n"
