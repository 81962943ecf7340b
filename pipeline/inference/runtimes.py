"""Where the network runs: eager PyTorch, or an exported ONNX graph in OpenVINO or ONNX Runtime (CPU).

Measured by ``make bench`` on a 2-core AVX-512 CPU (default 3D U-Net, 64^3 windows): OpenVINO runs a
window batch about 2.5x faster than eager PyTorch and ONNX Runtime about 1.5x (``benchmarks/results.md``),
so ``runtime: auto`` picks OpenVINO on CPU when it is installed, and PyTorch on GPU.

Example:
    >>> net = compile_network(torch_net, "auto", torch.device("cpu"), 3, [64, 64, 64])  # doctest: +SKIP
    >>> logits = net(windows)   # torch in, torch out, like the eager module
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import ConfigError

__all__ = ["RUNTIMES", "resolve_runtime", "export_onnx", "CompiledNetwork", "compile_network"]

log = logging.getLogger(__name__)
RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}


def resolve_runtime(name: str, device: torch.device) -> str:
    """The runtime ``name`` stands for on ``device``: ``auto`` is OpenVINO on CPU when installed, else torch."""
    if name not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, not {name!r}")
    if name == "auto":
        return "openvino" if device.type == "cpu" and importlib.util.find_spec("openvino") else "torch"
    if name != "torch":
        if device.type != "cpu":
            raise ConfigError(f"runtime {name} runs on the CPU; use runtime torch with device {device.type}")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"runtime {name} is not installed: pip install {PACKAGES[name]}")
    return name


def export_onnx(network: torch.nn.Module, path: str | Path, in_channels: int, roi_size: Sequence[int]) -> Path:
    """The network as an ONNX graph for one window size, with a dynamic batch axis."""
    path = Path(path)
    example = torch.zeros(1, in_channels, *[int(s) for s in roi_size])
    was_training = network.training
    network = network.eval()
    import warnings

    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and instance-norm notices
        warnings.simplefilter("ignore")
        torch.onnx.export(network.cpu(), (example,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    network.train(was_training)
    return path


class CompiledNetwork(torch.nn.Module):
    """An ONNX graph run by OpenVINO or ONNX Runtime behind the interface of a torch module (CPU tensors)."""

    def __init__(self, onnx_path: str | Path, runtime: str, threads: int | None = None):
        super().__init__()
        threads = threads or torch.get_num_threads()
        self.runtime = runtime
        if runtime == "openvino":
            import openvino as ov

            core = ov.Core()
            model = core.read_model(str(onnx_path))
            shape = model.input(0).get_partial_shape()
            self.window_shape = [d.get_length() for d in list(shape)[1:]]
            # one window per request on a static shape (1.3x faster per window than a dynamic batch), a
            # window batch spread over parallel streams (another 1.2x on 2 cores; make bench)
            model.reshape({0: [1, *self.window_shape]})
            streams = max(1, min(2, threads))
            compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams,
                                                         "INFERENCE_NUM_THREADS": threads,
                                                         "INFERENCE_PRECISION_HINT": "f32"})
            queue, results = ov.AsyncInferQueue(compiled, streams), {}
            queue.set_callback(lambda request, i: results.__setitem__(i, request.get_output_tensor(0).data.copy()))

            def run(x: np.ndarray) -> np.ndarray:
                results.clear()
                for i, window in enumerate(x):
                    queue.start_async({0: window[None]}, userdata=i)
                queue.wait_all()
                return np.concatenate([results[i] for i in range(len(x))])

            self._run = run
        elif runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            # no busy-waiting between calls: it would hold the cores the stitching between windows needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            self.window_shape = list(session.get_inputs()[0].shape[1:])
            self._run = lambda x: session.run(None, {"image": x})[0]
        else:
            raise ConfigError(f"CompiledNetwork runs openvino or onnxruntime, not {runtime!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return torch.from_numpy(np.array(self._run(np.ascontiguousarray(x.detach().cpu().float().numpy()))))


def compile_network(network: torch.nn.Module, runtime: str, device: torch.device, in_channels: int,
                    roi_size: Sequence[int], onnx_path: str | Path | None = None) -> torch.nn.Module:
    """``network`` as ``runtime`` runs it: the module itself for torch, else a :class:`CompiledNetwork` of
    ``onnx_path`` (exported from ``network`` into a temporary file when not given)."""
    runtime = resolve_runtime(runtime, torch.device(device))
    if runtime == "torch":
        return network
    compiled = None
    if onnx_path is not None and Path(onnx_path).is_file():
        compiled = CompiledNetwork(onnx_path, runtime)
        if compiled.window_shape != [in_channels, *[int(s) for s in roi_size]]:
            log.info("%s is for windows of %s, not %s: exporting again", onnx_path, compiled.window_shape[1:],
                     list(roi_size))
            compiled = None
    if compiled is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(network, Path(tmp) / "model.onnx", in_channels, roi_size)
            compiled = CompiledNetwork(path, runtime)
    if hasattr(network, "output_size"):  # a valid-convolution net keeps its size arithmetic
        compiled.output_size = network.output_size
    return compiled
