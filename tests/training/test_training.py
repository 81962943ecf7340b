"""Training end to end, as a user runs it: CLI and `monai.bundle run`, MLflow stores and servers, resume."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from conftest import ROOT, run_cli
from conftest import tiny_overrides as tiny

pytestmark = pytest.mark.slow
TRAIN_YAML = ROOT / "bundles/stroke_mri_segmentation/configs/train.yaml"


def only_run(tracking_uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_3d_training_writes_checkpoints_and_a_complete_mlflow_run(synth_set, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli("train", *tiny(synth_set[1], tmp_path / "out", uri), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpts = tmp_path / "out" / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and list(ckpts.glob("best-*.ckpt"))
    client, run = only_run(uri)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "unet3d-dice_ce-4mm-synth-e2-s0"  # what was run, not MLflow's random words
    scans = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]["training_scans"]
    assert run.data.params["training_scans.slice_mm"] == str(scans["slice_mm"])  # the range inference notes against
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/dice")] and \
        len(client.get_metric_history(run.info.run_id, "val/dice")) == 2
    assert len(client.get_metric_history(run.info.run_id, "val/lesion_f1")) == 2
    assert run.data.params["network_def.channels"] == "[8, 16, 32]"
    assert run.data.params["spatial_dims"] == "3" and run.data.params["patch_size"] == "[32, 32, 32]"
    assert run.data.tags["manifest.sha256"] and run.data.tags["git.commit"]
    assert run.data.tags["version.monai"].startswith("1.")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config" in artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "config")} == {"config/config.yaml"}
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "validation")]
    assert len(pictures) == 2 and all(p.endswith(".png") for p in pictures)
    best = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert len(best) == 1 and best[0].startswith("checkpoints/best-") and best[0].endswith(".ckpt")


def test_2d_training_through_monai_bundle_run(synth_set, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(TRAIN_YAML), "--spatial_dims", "2",
           *tiny(synth_set[1], tmp_path / "out", uri, epochs=1)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()
    state = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    conv = next(v for k, v in state["state_dict"].items() if k.endswith("weight") and v.dim() > 2)
    assert conv.dim() == 4  # a 2D network: (out, in, kx, ky)
    client, run = only_run(uri)
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "val/dice")) == 1


def test_resume_continues_the_run_to_the_configured_epochs_with_the_optimizer_state(synth_set, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "out"
    first = run_cli("train", *tiny(synth_set[1], out, uri, epochs=1), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    after_one = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    steps_per_epoch = after_one["global_step"]
    run_id = (out / "mlflow_run_id.txt").read_text().strip()

    second = run_cli("train", *tiny(synth_set[1], out, uri, epochs=3), "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    final = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 2  # the third epoch, 0-based: max_epochs reached
    assert final["global_step"] == 3 * steps_per_epoch
    # AdamW's step counter went on from the first run's: its state was restored, not restarted
    adam_steps = {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {3.0 * steps_per_epoch}
    client, run = only_run(uri)
    assert run.info.run_id == run_id
    assert [m.step for m in client.get_metric_history(run_id, "epoch")]
    assert len(client.get_metric_history(run_id, "val/dice")) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, local artifacts), stopped after the test."""
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
           "--artifacts-destination", (tmp_path / "server-artifacts").as_uri(), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_training_against_a_real_mlflow_server(synth_set, tmp_path, mlflow_server):
    result = run_cli("train", *tiny(synth_set[1], tmp_path / "out", mlflow_server, epochs=1), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(mlflow_server)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val/dice")) == 1
    assert "config" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store


def test_unknown_config_id_is_one_line_with_a_suggestion(tmp_path):
    result = run_cli("train", "--max_epoch", "2", cwd=ROOT)
    assert result.returncode == 2
    assert "no such config ID; did you mean --max_epochs?" in result.stderr


def test_four_subjects_one_epoch_trains_validates_once_and_prints_cleanly(tmp_path):
    """What a new user tries first: `synth --subjects 4`, then `train --max_epochs 1` with the config's
    validation interval (every 2 epochs): it trains, validates on the last epoch, writes a best checkpoint,
    and its output has each log line once, no advertising and the best score as a number."""
    result = run_cli("synth", "--out", str(tmp_path / "d"), "--subjects", "4", "--spacing", "4",
                     "--manifest", str(tmp_path / "m.json"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = tiny(tmp_path / "m.json", tmp_path / "out", uri, epochs=1)
    i = overrides.index("--trainer#check_val_every_n_epoch")
    del overrides[i:i + 2]  # keep train.yaml's interval
    result = run_cli("train", *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "out" / "checkpoints").glob("best-*.ckpt"))
    client, run = only_run(uri)
    assert len(client.get_metric_history(run.info.run_id, "val/dice")) == 1
    text = result.stdout + result.stderr
    lines = [ln for ln in text.splitlines() if ln.strip() and "it/s" not in ln and "\r" not in ln]
    assert len(lines) == len(set(lines)), [ln for ln in lines if lines.count(ln) > 1][:3]
    assert "Tip:" not in text and "litlogger" not in text.lower() and "tensor(" not in text
    assert "best val/dice" in text.lower() or "val/dice" in text
