"""A real 2-process DDP run on CPU (gloo): it trains, reduces validation metrics right, and logs one run."""

import lightning.pytorch as pl
import pytest
import torch

from conftest import run_cli, tiny_overrides
from pipeline.training.experiment import DEFAULT_CONFIG, load_workflow, parse_overrides

pytestmark = pytest.mark.slow


def test_two_process_ddp_matches_one_process_validation_and_logs_one_run(synth_set, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # fp32 on both sides: bf16 autocast (precision: auto on bf16 CPUs) rounds differently per thread layout
    args = [*tiny_overrides(synth_set[1], tmp_path / "out", uri, epochs=1), "--precision", "32-true"]
    result = run_cli("train", *args, "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr  # two processes really ran

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    ddp_dice = client.get_metric_history(runs[0].info.run_id, "val/dice")[-1].value
    ddp_cases = client.get_metric_history(runs[0].info.run_id, "val/cases")[-1].value

    # the same weights validated in one process on the same data
    wf = load_workflow([DEFAULT_CONFIG], parse_overrides(args))
    module = wf.parser.get_parsed_content("lightning_module")
    datamodule = wf.parser.get_parsed_content("datamodule")
    state = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, precision=wf.parser.get_parsed_content("trainer#precision"))
    single = trainer.validate(module, datamodule=datamodule)[0]
    assert single["val/cases"] == ddp_cases
    assert abs(single["val/dice"] - ddp_dice) < 1e-6
