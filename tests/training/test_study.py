"""What a user runs for issue #9: the classic U-Net trained and applied through the usual commands, the
explain command, and a normalisation study from one command."""

import csv

import pytest

from conftest import run_cli, tiny_overrides
from pipeline.training.experiment import DEFAULT_CONFIG

CLASSIC = DEFAULT_CONFIG.replace("train.yaml", "classic_unet.yaml")
NORMS = DEFAULT_CONFIG.replace("train.yaml", "norm")


@pytest.mark.slow
def test_normalisation_study_from_one_command(synth_set, tmp_path):
    _, manifest = synth_set
    overrides = tiny_overrides(manifest, tmp_path / "unused", f"sqlite:///{tmp_path}/mlflow.db", epochs=1)
    overrides = [a for i, a in enumerate(overrides) if "--output_dir" not in (a, overrides[i - 1])]
    result = run_cli("study", "--variants", f"{NORMS}/batch.yaml", f"{NORMS}/none.yaml", "--output",
                     str(tmp_path / "study"), *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "study" / "study.csv") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"batch", "none"} and all(r["status"] == "ok" for r in rows.values())
    assert all(0 <= float(r["best_val_dice"]) <= 1 and float(r["peak_rss_mb"]) > 100 for r in rows.values())
    for variant in rows:  # each variant really trained with its own normalisation
        assert f"norm: {variant}" in (tmp_path / "study" / variant / "config.yaml").read_text()
    assert "| batch |" in result.stdout and (tmp_path / "study" / "study.png").is_file()
