"""OpenVINO and ONNX Runtime give what eager PyTorch gives; the runtime is chosen for the device."""

import pytest
import torch

from pipeline.inference.predictor import lesion_probability
from pipeline.inference.runtimes import compile_network, resolve_runtime
from pipeline.models.networks import build_network


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_onnx_runtimes_match_eager_pytorch_and_follow_the_window_size(runtime, tmp_path):
    torch.manual_seed(0)
    net = build_network("unet", 3, 2, "softmax", channels=[8, 16, 32], strides=[2, 2], num_res_units=1).eval()
    cpu = torch.device("cpu")
    assert resolve_runtime(runtime, cpu) == runtime
    x = torch.randn(3, 2, 32, 32, 32)
    compiled = compile_network(net, runtime, cpu, 2, [32, 32, 32])
    with torch.no_grad():
        assert float((compiled(x) - net(x)).abs().max()) < 1e-3
        image = torch.randn(1, 2, 50, 41, 37)
        eager = lesion_probability(net, image, 3, [32, 32, 32])[0]
        fast = lesion_probability(compiled, image, 3, [32, 32, 32])[0]
    assert float((eager - fast).abs().max()) < 1e-3
    from pipeline.inference.runtimes import export_onnx

    onnx = export_onnx(net, tmp_path / "model.onnx", 2, [32, 32, 32])
    other_window = compile_network(net, runtime, cpu, 2, [16, 16, 16], onnx_path=onnx)
    assert other_window.window_shape == [2, 16, 16, 16]  # a stale ONNX file is exported again, not misused


