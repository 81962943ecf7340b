"""Optimiser and schedule from config: the library schedules, the shapes a user expects, train.yaml's defaults."""

import inspect

import pytest
import torch
import yaml

from conftest import ROOT
from pipeline.errors import ConfigError
from pipeline.training.optim import build_optimizer, build_scheduler


def _rates(name: str, steps: int = 100, warmup: int = 10, lr: float = 1.0) -> list[float]:
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), name="sgd", lr=lr)
    sched = build_scheduler(opt, name=name, total_steps=steps, warmup_steps=warmup)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("name", ["cosine", "poly"])
def test_schedules_warm_up_peak_and_decay_towards_zero(name):
    rates = _rates(name)
    assert rates[0] < 0.2 and rates[1] > rates[0]  # linear warm-up from near zero
    assert max(rates) == pytest.approx(1.0, abs=0.05) and rates.index(max(rates)) in range(9, 12)
    tail = rates[12:]
    assert all(a >= b - 1e-9 for a, b in zip(tail, tail[1:], strict=False))  # monotone decay after the peak
    assert rates[-1] < 0.05


def test_constant_schedule_holds_the_rate_after_warm_up():
    rates = _rates("constant")
    assert rates[0] < 0.2 and all(r == pytest.approx(1.0) for r in rates[10:])


def test_no_warm_up_starts_at_the_full_rate():
    assert _rates("poly", warmup=0)[0] == pytest.approx(1.0)


def test_unknown_names_are_config_errors():
    params = torch.nn.Linear(2, 2).parameters()
    with pytest.raises(ConfigError, match="optimizer name must be one of"):
        build_optimizer(params, name="adam")
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ConfigError, match="scheduler name must be one of"):
        build_scheduler(opt, name="step")


def test_code_defaults_are_train_yaml_values():
    """An unset key in a config merged over train.yaml, and one left out of a bare LightningModule, agree."""
    config = yaml.safe_load((ROOT / "bundles/stroke_mri_segmentation/configs/train.yaml").read_text())
    module = config["lightning_module"]
    defaults = {**{k: v.default for k, v in inspect.signature(build_optimizer).parameters.items() if k != "parameters"},
                **{k: v.default for k, v in inspect.signature(build_scheduler).parameters.items()
                   if k not in ("optimizer", "total_steps")}}
    for key, value in {**module["optimizer"], **module["scheduler"]}.items():
        assert defaults[key] == value, key
