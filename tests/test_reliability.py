"""Crashes, bad cases and lost servers, with real processes: nothing is lost and every failure explains itself."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli, tiny_overrides, write_nifti
from pipeline.data.manifest import load_manifest

pytestmark = pytest.mark.slow


def _damaged_copies(cases, root):
    """Five damaged copies of a good case: truncated DWI, NaN in ADC, 4D FLAIR, all-zero DWI, missing ADC."""
    src = cases[0]
    out = []
    for kind in ("truncated", "nan", "four_d", "zero", "missing"):
        folder = root / kind
        folder.mkdir(parents=True)
        paths = [str(shutil.copy(p, folder / f"{kind}_{i}.nii.gz")) for i, p in enumerate(src["image"])]
        if kind == "truncated":
            raw = open(paths[0], "rb").read()
            open(paths[0], "wb").write(raw[: len(raw) // 2])
        elif kind == "nan":
            img = nib.load(paths[1])
            data = img.get_fdata(dtype=np.float32)
            data[10, 10, 10] = np.nan
            write_nifti(folder / "nan_1.nii.gz", data, img.affine)
        elif kind == "four_d":
            img = nib.load(paths[2])
            data = np.asanyarray(img.dataobj).astype(np.float32)
            write_nifti(folder / "four_d_2.nii.gz", np.stack([data, data], -1), img.affine)
        elif kind == "zero":
            img = nib.load(paths[0])
            write_nifti(folder / "zero_0.nii.gz", np.zeros(img.shape, np.float32), img.affine)
        else:
            os.remove(paths[1])
        out.append({"id": f"bad_{kind}", "image": paths})
    return out


def test_five_good_and_five_damaged_cases(synth_set, tiny_checkpoint, tmp_path):
    data = load_manifest(synth_set[1])
    good = (data["training"] + data["testing"])[:5]
    bad = _damaged_copies(good, tmp_path / "bad")
    (tmp_path / "cases.json").write_text(json.dumps({"testing": bad[:2] + good + bad[2:]}))
    result = run_cli("infer", "--model", str(tiny_checkpoint), "--datalist", str(tmp_path / "cases.json"),
                     "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == sorted(f"{c['id']}.nii.gz" for c in good)
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 5
    expected = {"bad_truncated": "unreadable, truncated", "bad_nan": "NaN/Inf voxels", "bad_four_d": "4D image",
                "bad_zero": "all zero", "bad_missing": "missing file"}
    for case_id, words in expected.items():
        line = next(x for x in failed if x.startswith(f"FAILED {case_id}:"))
        assert words in line


def test_training_refuses_a_bad_manifest_unless_told_to_skip(synth_set, tmp_path):
    data = json.loads(synth_set[1].read_text())
    root = tmp_path / "data"
    shutil.copytree(synth_set[0], root)
    victim = data["training"][0]
    label = root / victim["label"]
    img = nib.load(label)
    broken = np.asanyarray(img.dataobj).copy()
    broken.flat[0] = 2
    write_nifti(label, broken, img.affine)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(dict(data, dataset_dir=str(root))))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    refused = run_cli("train", *tiny_overrides(manifest, tmp_path / "out", uri, epochs=1), cwd=tmp_path)
    assert refused.returncode == 2
    assert "1 training case(s) fail validation" in refused.stderr and victim["id"] in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out" / "checkpoints").exists()

    skipped = run_cli("train", *tiny_overrides(manifest, tmp_path / "out", uri, epochs=1), "--skip_bad_cases", "true",
                      cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("tests").experiment_id])
    assert [r.data.tags.get("skipped_cases") for r in runs if r.info.status == "FINISHED"] == [victim["id"]]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_mid_training_then_resume_ends_like_an_uninterrupted_run(synth_set, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    straight = run_cli("train", *tiny_overrides(synth_set[1], tmp_path / "a", uri, epochs=4), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]

    args = tiny_overrides(synth_set[1], tmp_path / "b", uri, epochs=4)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # after the first epoch's checkpoint, inside the second epoch
    proc.wait()
    epochs_done = torch.load(last, map_location="cpu", weights_only=True)["loops"]["fit_loop"]["epoch_progress"]
    assert epochs_done["current"]["completed"] < 4
    run_id = (tmp_path / "b" / "mlflow_run_id.txt").read_text().strip()

    resumed = run_cli("train", *args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _state(tmp_path / "a" / "checkpoints" / "last.ckpt"), _state(last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same weights, bit for bit
    assert (tmp_path / "b" / "mlflow_run_id.txt").read_text().strip() == run_id
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "val/dice")) >= 4
    assert not [p for p in (tmp_path / "b" / "checkpoints").iterdir() if p.suffix != ".ckpt"]  # no partial files


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_server_trains_offline_then_syncs(synth_set, tmp_path):
    server = f"http://127.0.0.1:{_closed_port()}"
    result = run_cli("train", *tiny_overrides(synth_set[1], tmp_path / "out", server, epochs=1), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (result.stdout + result.stderr).count("is unreachable") == 1  # said once
    offline = f"sqlite:///{tmp_path / 'out' / 'mlflow_offline.db'}"
    from mlflow import MlflowClient

    client = MlflowClient(offline)
    run = client.search_runs([client.get_experiment_by_name("tests").experiment_id])[0]
    assert len(client.get_metric_history(run.info.run_id, "val/dice")) == 1

    target = f"sqlite:///{tmp_path / 'central.db'}"
    assert run_cli("mlflow-sync", "--source", offline, "--target", target).returncode == 0
    central = MlflowClient(target)
    copied = central.search_runs([central.get_experiment_by_name("tests").experiment_id])[0]
    assert copied.data.tags["synced_from"] == run.info.run_id
    assert copied.data.params == run.data.params
    assert len(central.get_metric_history(copied.info.run_id, "val/dice")) == 1
    assert [a.path for a in central.list_artifacts(copied.info.run_id)] == [
        a.path for a in client.list_artifacts(run.info.run_id)]

    strict = run_cli("train", *tiny_overrides(synth_set[1], tmp_path / "strict", server, epochs=1),
                     "--tracking_required", "true", cwd=tmp_path)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert "unreachable" in strict.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "strict" / "checkpoints").exists()


WRITER = """
import sys, numpy as np, nibabel as nib
from pipeline.io import save_nifti_atomic
data = np.random.default_rng(0).random((400, 400, 300)).astype(np.float32)
save_nifti_atomic(nib.Nifti1Image(data, np.eye(4)), sys.argv[1])
"""


def test_a_writer_killed_mid_write_leaves_no_file_under_the_final_name(tmp_path):
    target = tmp_path / "mask.nii.gz"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=ROOT)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".mask.nii.gz.*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # well inside compressing 190 MB
    assert proc.poll() is None, "the writer finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()


def test_outputs_get_the_permissions_of_an_ordinary_file(tmp_path):
    from pipeline.io import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic({"a": 1}, tmp_path / "summary.json")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644  # readable by the group, as open() makes it
