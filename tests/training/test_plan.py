"""The planner's rules against hand-computed examples, and its overlay trained for an epoch."""

import json

import numpy as np
import pytest
import yaml

from conftest import ROOT, run_cli, write_nifti
from pipeline.errors import ConfigError
from pipeline.training import plan as rules
from pipeline.training.plan import fit_patch, lowres_spacing, make_plan, plan_overlay, pooling, target_spacing


def test_target_spacing_is_the_median_unless_one_axis_is_thick():
    assert target_spacing([[1.0, 1.0, 1.0], [1.2, 1.2, 1.2], [0.8, 0.8, 0.8]]) == [1.0, 1.0, 1.0]
    # a mixed set: median z 3.0 is not more than 3x the in-plane 1.0 -> kept
    assert target_spacing([[1, 1, 1], [1, 1, 1], [0.9, 0.9, 5], [1, 1, 6]]) == [1.0, 1.0, 3.0]
    # thick slices: z median 5.0 > 3 x 0.9 -> its 10th percentile (4.4 of 4, 5, 5, 5, 6)
    assert target_spacing([[0.9, 0.9, 4], [0.9, 0.9, 5], [0.9, 0.9, 5], [0.9, 0.9, 5], [0.9, 0.9, 6]]) == \
        [0.9, 0.9, 4.4]
    # ... but never finer than the in-plane spacing
    assert target_spacing([[1, 1, 1], [1, 1, 1], [1, 1, 5], [1, 1, 5], [1, 1, 6]]) == [1.0, 1.0, 1.0]


def test_isotropic_pooling_halves_every_axis_down_to_the_minimum_feature_map():
    strides, kernels = pooling([1.0, 1.0, 1.0], [64, 64, 64])
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 4  # 64 -> 32 -> 16 -> 8 -> 4
    assert kernels == [[3, 3, 3]] * 5


def test_thick_slices_get_in_plane_pooling_and_3x3x1_kernels_until_the_spacings_meet():
    strides, kernels = pooling([0.9, 0.9, 5.0], [96, 128, 20])
    # in-plane 0.9 -> 1.8 -> 3.6: only then is z (5.0) within 2x of the finest, so it is pooled from level 3
    assert strides[:4] == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2]]
    assert kernels[:3] == [[3, 3, 1], [3, 3, 1], [3, 3, 3]]


def test_on_cpu_the_patch_also_fits_the_work_of_the_budget_cube():
    # 64^3 x 16^2 + 32^3 x 32^2 + 16^3 x 64^2 + 8^3 x 128^2 + 4^3 x 128^2
    cube = rules.step_cost([1.0, 1.0, 1.0], [64, 64, 64])
    assert cube == 67_108_864 + 33_554_432 + 16_777_216 + 8_388_608 + 1_048_576
    # thick slices pool in-plane first, so their deeper levels stay large: the voxel budget alone allows 1.85x
    # the cube's work (23 epochs where the fixed default trained 40 in the same time)
    by_voxels = fit_patch([150, 180, 30], [1.2, 1.2, 5.0], 64 ** 3)
    assert by_voxels == [96, 112, 24] and rules.step_cost([1.2, 1.2, 5.0], by_voxels) > 1.8 * cube
    # 80x80x20: 128000 x 16^2 + 32000 x 32^2 + 8000 x 64^2 + 1000 x 128^2 + 125 x 128^2
    assert fit_patch([150, 180, 30], [1.2, 1.2, 5.0], 64 ** 3, cube) == [80, 80, 20]
    assert rules.step_cost([1.2, 1.2, 5.0], [80, 80, 20]) == 32_768_000 * 3 + 16_384_000 + 2_048_000 <= cube
    # the planner applies it on the CPU budget only; an isotropic plan is the cube itself, unchanged
    assert make_plan([[1.2, 1.2, 5.0]] * 4, [[150, 180, 30]] * 4, "cpu")["patch_size"] == [80, 80, 20]
    assert make_plan([[1.0, 1.0, 1.0]] * 4, [[160, 192, 160]] * 4, "cpu")["patch_size"] == [64, 64, 64]
    gpu = make_plan([[0.9, 0.9, 5.0]] * 4, [[200, 230, 30]] * 4, "gpu-8gb")["patch_size"]
    assert gpu == fit_patch([200, 230, 30], [0.9, 0.9, 5.0], 112 ** 3)


def test_the_patch_shrinks_to_the_budget_and_divides_by_the_strides():
    assert fit_patch([160, 192, 160], [1.0, 1.0, 1.0], 64 ** 3) == [64, 64, 64]
    patch = fit_patch([200, 230, 30], [0.9, 0.9, 5.0], 64 ** 3)
    strides, _ = pooling([0.9, 0.9, 5.0], patch)
    assert np.prod(patch) <= 64 ** 3 and patch[2] == 20  # the thin axis shrinks, the 30 slices stay near whole
    assert all(p % d == 0 for p, d in zip(patch, np.prod(strides, axis=0), strict=True))
    assert fit_patch([40, 40, 40], [2.0, 2.0, 2.0], 64 ** 3) == [40, 40, 40]  # small images: the whole crop


def test_cpu_plans_take_the_lowres_spacing_at_which_four_patches_hold_the_median_head():
    # 160 x 192 x 160 mm at 1 mm is 18.75 patches of 64^3: every axis coarsened by 3% steps to 1.702 mm
    # (1.03^18 = 1.702: 3.8 patches; one step earlier, 1.653 mm, still 4.15)
    assert lowres_spacing([1.0, 1.0, 1.0], [160, 192, 160], 64 ** 3) == [1.702, 1.702, 1.702]
    assert lowres_spacing([2.0, 2.0, 2.0], [160, 190, 160], 64 ** 3) == [2.0, 2.0, 2.0]  # already coarse enough
    assert lowres_spacing([1.0, 1.0, 5.0], [200, 200, 150], 64 ** 3)[2] == 5.0  # the thick axis is left alone
    gpu = make_plan([[1.0] * 3] * 2, [[160, 192, 160]] * 2, "gpu-8gb")
    assert gpu["target_spacing"] == [1.0, 1.0, 1.0]  # GPU budgets keep the full resolution


def test_a_plan_and_its_overlays():
    plan = make_plan([[0.9, 0.9, 5.0]] * 4, [[200, 230, 30]] * 4, "cpu")
    assert plan["fullres_spacing"] == [0.9, 0.9, 5.0] and plan["batch_size"] == 2
    assert plan["target_spacing"] == [1.043, 1.043, 5.0]  # cpu: coarsened in-plane until 4 patches hold the head
    assert plan["filters"][:4] == [16, 32, 64, 128] and len(plan["filters"]) == len(plan["strides"])
    assert plan["plan_2d"] == {"patch_size": [128, 128], "batch_size": 8}  # anisotropic: a 2D alternative
    overlay = plan_overlay(plan)
    assert overlay["network_def#strides"] == plan["strides"][1:] and overlay["patch_size_3d"] == plan["patch_size"]
    assert plan_overlay(plan, two_d=True)["spatial_dims"] == 2
    assert "network_def#kernel_sizes" not in overlay  # cpu: MONAI's UNet
    gpu = make_plan([[1.0] * 3] * 2, [[100] * 3] * 2, "gpu-8gb")
    assert "plan_2d" not in gpu and plan_overlay(gpu)["network_def#kernel_sizes"] == gpu["kernel_sizes"]
    with pytest.raises(ConfigError, match="budget must be one of"):
        make_plan([[1.0] * 3], [[100] * 3], "tpu")


@pytest.mark.slow
def test_plan_of_the_synthetic_set_trains_one_epoch_with_its_overlay(synth_set, tmp_path):
    result = run_cli("plan", "--datalist", str(synth_set[1]), "--out", str(tmp_path / "plans" / "synth.yaml"),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    overlay = yaml.safe_load((tmp_path / "plans" / "synth.yaml").read_text())
    fingerprint = json.loads((tmp_path / "plans" / "synth_fingerprint.json").read_text())
    assert overlay["spacing"] == [4.0, 4.0, 4.0] and len(fingerprint["cases"]) == 5  # 4 mm set, 5 training cases
    assert all(c["lesions"]["count"] >= 0 and len(c["channels"]) == 3 for c in fingerprint["cases"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli("train", "--config", str(ROOT / "bundles/stroke_mri_segmentation/configs/train.yaml"),
                     str(tmp_path / "plans" / "synth.yaml"), "--datalist", str(synth_set[1]), "--output_dir",
                     str(tmp_path / "out"), "--tracking_uri", uri, "--max_epochs", "1", "--num_workers", "0",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "out" / "checkpoints").glob("best-*.ckpt"))
    from pipeline.tracking import client

    mlflow = client(uri)
    run = mlflow.search_runs([mlflow.get_experiment_by_name("stroke_mri_segmentation").experiment_id])[0]
    assert [a.path for a in mlflow.list_artifacts(run.info.run_id, "plan")] == ["plan/synth_fingerprint.json"]
    assert run.data.params["plan.patch_size"] == str(overlay["plan"]["patch_size"])
    from pipeline.inference import Predictor

    net = Predictor.from_path(next((tmp_path / "out" / "checkpoints").glob("best-*.ckpt")), device="cpu",
                              runtime="torch").network
    assert net.build_config["name"] == "unet" and net.build_config["strides"] == overlay["network_def#strides"]


def test_plan_names_a_bad_case_in_one_line_and_stops(synth_set, tmp_path):
    manifest = json.loads(synth_set[1].read_text())
    bad = manifest["training"][0]
    broken = write_nifti(tmp_path / "broken.nii.gz", np.zeros((4, 4), np.float32))  # a 2D image
    manifest["dataset_dir"] = str(synth_set[0])
    bad["image"] = [str(broken), *bad["image"][1:]]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    result = run_cli("plan", "--datalist", str(tmp_path / "m.json"), "--out", str(tmp_path / "p.yaml"), cwd=tmp_path)
    assert result.returncode != 0 and not (tmp_path / "p.yaml").exists()
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and bad["id"] in lines[0] and "broken.nii.gz" in lines[0], result.stderr[-2000:]


def test_plan_of_a_manifest_without_training_cases_says_so(synth_set, tmp_path):
    manifest = json.loads(synth_set[1].read_text())
    manifest["dataset_dir"] = str(synth_set[0])
    (tmp_path / "test_only.json").write_text(json.dumps({**manifest, "training": []}))
    result = run_cli("plan", "--datalist", str(tmp_path / "test_only.json"), "--out", str(tmp_path / "p.yaml"))
    assert result.returncode != 0 and "no training cases to plan from" in result.stderr
    assert "Traceback" not in result.stderr
