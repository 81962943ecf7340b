"""Several evaluations side by side: the in-domain and the shifted-domain test in one table.

Example:
    >>> table = domain_table({"in-domain": "outputs/evaluation",
    ...                       "shifted": "outputs/shifted/evaluation"})  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import InputError

__all__ = ["domain_table"]

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
