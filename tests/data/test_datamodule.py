"""DataLoader workers: ``auto`` keeps loading in the training process on small machines."""

import pytest

from pipeline.data.datamodule import training_workers
from pipeline.errors import ConfigError


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (4, 1), (8, 2), (16, 4), (64, 4)])
def test_auto_workers_none_on_two_cores_then_one_per_four_cores_up_to_four(cores, workers):
    assert training_workers("auto", cores=cores) == workers


def test_a_given_number_of_workers_is_kept_whatever_the_machine():
    assert training_workers(3, cores=2) == 3 and training_workers("0", cores=64) == 0


@pytest.mark.parametrize("bad", ["two", "-1", 1.5])
def test_anything_else_is_a_config_error_that_names_the_setting(bad):
    with pytest.raises(ConfigError, match="num_workers"):
        training_workers(bad)
