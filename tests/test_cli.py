import json
import subprocess
import sys

from conftest import ROOT, run_cli

HEAVY = ("torch", "monai", "lightning", "mlflow", "nilearn", "matplotlib")


def test_help_imports_no_heavy_library():
    code = ("import sys; from pipeline.cli import build_parser; build_parser().format_help(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert run_cli("--help").returncode == 0


def test_synth_then_validate_then_preview_as_a_user_would(tmp_path):
    out, manifest, png = tmp_path / "x", tmp_path / "x.json", tmp_path / "x.png"
    result = run_cli("synth", "--output", str(out), "--subjects", "3", "--seed", "3", "--spacing", "4",
                     "--manifest", str(manifest), "--preview", str(png))  # --output as infer names it: --out
    assert result.returncode == 0, result.stderr
    positional, option = run_cli("validate", str(manifest)), run_cli("validate", "--datalist", str(manifest))
    assert positional.returncode == option.returncode == 0 and positional.stdout == option.stdout
    assert f"{manifest}: 0 error(s)" in option.stdout
    for args in ([], [str(manifest), "--datalist", str(png)]):  # no manifest, or two different ones
        result = run_cli("validate", *args)
        assert result.returncode == 2 and "give the manifest once" in result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    data = json.loads(manifest.read_text())  # a case without FLAIR (null) previews with that panel blank
    data["training"][0]["image"][2] = None
    manifest.write_text(json.dumps(data))
    result = run_cli("preview", str(manifest), "--out", str(tmp_path / "null.png"))
    assert result.returncode == 0 and (tmp_path / "null.png").stat().st_size > 20_000, result.stderr


def test_manifest_command_on_a_missing_folder_is_one_line(tmp_path):
    result = run_cli("manifest", "--bids", str(tmp_path / "nope"), "--out", str(tmp_path / "m.json"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "m.json").exists()


def test_a_model_file_that_is_not_one_is_refused_in_one_line(synth_set, tmp_path):
    """Not a checkpoint, a truncated one, or a pickle of other objects: one line naming the file, no traceback."""
    import torch

    garbage, other = tmp_path / "notes.ckpt", tmp_path / "list.ckpt"
    garbage.write_text("not weights\n")
    torch.save([1, 2], other)
    for path, reason in ((garbage, "unreadable weights: not a PyTorch file"),
                         (other, "checkpoint has no network_config")):
        result = run_cli("infer", "--model", str(path), "--datalist", str(synth_set[1]), "--output",
                         str(tmp_path / "out"))
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"error: {path}: {reason}" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written
