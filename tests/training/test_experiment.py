import pytest

from pipeline.errors import ConfigError
from pipeline.training.experiment import flatten, parse_overrides


def test_overrides_keep_their_types():
    assert parse_overrides(["--max_epochs", "2", "--network_def#channels", "[8, 16]", "--tracking_uri=null",
                            "--head", "sigmoid", "--resume", "true"]) == {
        "max_epochs": 2, "network_def#channels": [8, 16], "tracking_uri": None, "head": "sigmoid", "resume": True}


def test_override_without_value_is_an_error():
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--max_epochs"])


def test_flatten_keeps_plain_lists_and_splits_components():
    cfg = {"a": 1, "net": {"channels": [8, 16], "norm": "batch"}, "cb": [{"x": 1}]}
    assert flatten(cfg) == {"a": 1, "net#channels": [8, 16], "net#norm": "batch", "cb#0#x": 1}
