"""precision: auto picks bf16 mixed precision where the CPU computes bf16 natively, fp32 elsewhere."""

from pathlib import Path

import pytest
import torch

from pipeline.training.module import auto_precision, cpu_has_bf16


def test_an_explicit_precision_passes_through():
    assert auto_precision("32-true") == "32-true" and auto_precision("bf16-mixed") == "bf16-mixed"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU flags from /proc/cpuinfo (Linux)")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU takes precedence over the CPU's flags")
def test_auto_is_bf16_exactly_on_cpus_with_bf16_instructions():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    native = bool(flags & {"avx512_bf16", "amx_tile", "amx_bf16"})
    assert cpu_has_bf16() == native
    assert auto_precision("auto") == ("bf16-mixed" if native else "32-true")
