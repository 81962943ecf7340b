"""How a training uses the machine: CPU-only training split over DDP processes, everything else untouched."""

import pytest

from pipeline.errors import ConfigError
from pipeline.training.experiment import DEFAULT_CONFIG, load_workflow
from pipeline.training.hardware import data_parallel


def test_without_a_gpu_auto_trains_in_two_processes_each_with_half_the_batch_and_the_cores():
    plan = data_parallel("auto", "auto", "auto", "auto", 2, cores=2, gpus=0)
    assert plan == dict(accelerator="cpu", strategy="ddp", devices=2, batch_size=1, cores=1)
    assert data_parallel("cpu", "auto", "auto", 4, 8, cores=16, gpus=1) == \
        dict(accelerator="cpu", strategy="ddp", devices=4, batch_size=2, cores=4)


@pytest.mark.parametrize("args, cores, gpus", [
    (("auto", "auto", "auto", "auto", 2), 1, 0),   # one core: nothing to share
    (("auto", "auto", "auto", "auto", 3), 2, 0),   # an odd batch does not split
    (("auto", "auto", "auto", 2, 2), 2, 1),        # a GPU trains instead
    (("gpu", "auto", "auto", 2, 2), 2, 1),
    (("cpu", "ddp", 4, 2, 2), 8, 0),               # the user's own strategy and devices
    (("auto", "auto", "auto", 1, 2), 8, 0),        # train.yaml's default
])
def test_a_gpu_an_explicit_strategy_or_one_process_is_left_as_it_is(args, cores, gpus):
    accelerator, strategy, devices, _, batch = args
    assert data_parallel(*args, cores=cores, gpus=gpus) == dict(
        accelerator=accelerator, strategy=strategy, devices=devices, batch_size=batch, cores=cores)


def test_bad_process_counts_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="does not split"):
        data_parallel("cpu", "auto", "auto", 2, 3, cores=2, gpus=0)
    for bad in (0, "two", -1, 1.5):
        with pytest.raises(ConfigError, match="cpu_processes must be"):
            data_parallel("cpu", "auto", "auto", bad, 2, cores=2, gpus=0)


def test_train_yaml_hands_the_plan_to_the_trainer_and_the_data_module(synth_set, tmp_path):
    wf = load_workflow([DEFAULT_CONFIG], {"datalist": str(synth_set[1]), "output_dir": str(tmp_path),
                                          "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "accelerator": "cpu",
                                          "cpu_processes": 2, "num_workers": "auto"})
    trainer = wf.parser.get_parsed_content("trainer")
    datamodule = wf.parser.get_parsed_content("datamodule")
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.num_devices == 2
    assert datamodule.batch_size == 1  # train.yaml's batch_size 2, one volume in each process
    one = load_workflow([DEFAULT_CONFIG], {"datalist": str(synth_set[1]), "output_dir": str(tmp_path),
                                           "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "accelerator": "cpu"})
    assert one.parser.get_parsed_content("trainer").num_devices == 1
    assert one.parser.get_parsed_content("datamodule").batch_size == 2
