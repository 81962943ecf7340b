"""Inference speed and memory: the project's predictor against MONAI's plain sliding window, in one process.

Cases: one synthetic subject at 2 mm and at 1 mm (three channels, ~180x216x180 at 1 mm). Model: the default
3D U-Net of ``configs/train.yaml`` (random weights: speed does not depend on them) at 2 mm.

* ``network``: the network part on the preprocessed volume. Baseline: ``monai.inferers.sliding_window_inference``
  over the whole 2 mm volume (uncropped), overlap 0.5, Gaussian, fp32. Project: the head-cropped volume with
  empty windows skipped, same overlap and blending.
* ``end_to_end``: read, preprocess, predict, resample to the scanner grid, write; with and without mirroring TTA;
  peak RSS of a fresh process per configuration.

Every figure is the median of ``--repeats`` runs with min and max; speed figures carry their ratio to the
baseline measured in the same process. Writes ``benchmarks/results.json`` and ``benchmarks/results.md``.

Run: ``make bench`` (or ``python benchmarks/bench_inference.py --repeats 3``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _stats(values: list[float]) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values), n=len(values))


def _time(fn, repeats: int) -> dict:
    fn()  # warm-up (allocators, thread pools)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return _stats(out)


def _case(root: Path, spacing: float) -> dict:
    from pipeline.data.synthetic import isles22_paths, load_anatomy, synthesize_subject
    from pipeline.io import save_nifti_atomic

    case = synthesize_subject(load_anatomy(), 0, seed=1, spacing=spacing)
    paths = {k: root / f"{spacing}mm" / rel for k, rel in isles22_paths("sub-bench").items()}
    for key, path in paths.items():
        save_nifti_atomic(case[key], path)
    return {"id": f"bench_{spacing}mm", "image": [str(paths[k]) for k in ("dwi", "adc", "flair")],
            "label": str(paths["msk"])}


def _network():
    import torch

    from pipeline.models.networks import build_network

    torch.manual_seed(0)
    return build_network("unet", 3, 3, "softmax", channels=[16, 32, 64, 128], strides=[2, 2, 2], num_res_units=1,
                         norm="instance").eval()


def bench_network(case: dict, repeats: int) -> dict:
    """Network part only: MONAI's sliding window over the whole volume vs the project's cropped, skipping one."""
    import torch
    from monai.inferers import sliding_window_inference

    from pipeline.data.transforms import deterministic
    from pipeline.inference import lesion_probability

    net = _network()
    from monai import transforms as mt

    full = mt.Compose([t for t in deterministic(3, [2.0, 2.0, 2.0], with_label=False)
                       if not isinstance(t, mt.CropForegroundd)]
                      + [mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True)])(dict(case))["image"]
    cropped = mt.Compose(deterministic(3, [2.0, 2.0, 2.0], with_label=False)
                         + [mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True)])(dict(case))["image"]
    with torch.no_grad():
        baseline = _time(lambda: sliding_window_inference(full[None], [64, 64, 64], 4, net, overlap=0.5,
                                                          mode="gaussian"), repeats)
        project = _time(lambda: lesion_probability(net, cropped[None], 3, [64, 64, 64], overlap=0.5), repeats)
    return dict(baseline_s=baseline, project_s=project, speedup=baseline["median"] / project["median"],
                baseline_shape=list(full.shape[1:]), project_shape=list(cropped.shape[1:]))


END_TO_END = """
import json, resource, sys, time, tempfile
import torch
from pipeline.inference import Predictor, Settings
sys.path.insert(0, {here!r})
from bench_inference import _network
case, tta = json.loads(sys.argv[1]), sys.argv[2] == "1"
settings = Settings(roi_size=[64, 64, 64], channels=3, spacing=[2.0, 2.0, 2.0], tta_axes=[0, 1, 2] if tta else [])
predictor = Predictor(_network(), settings)
times = []
for _ in range({repeats} + 1):
    with tempfile.TemporaryDirectory() as out:
        from pipeline.batch_inference import segment_cases
        t = time.perf_counter()
        segment_cases(predictor, [case], out, progress=False)
        times.append(time.perf_counter() - t)
print(json.dumps(dict(times=times[1:], peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def bench_end_to_end(case: dict, repeats: int, tta: bool) -> dict:
    """Whole cases in a fresh process (so peak RSS is this configuration's own)."""
    code = END_TO_END.format(here=str(HERE), repeats=repeats)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(case), "1" if tta else "0"], capture_output=True,
                         text=True, check=True, cwd=HERE.parent)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return dict(seconds=_stats(result["times"]), peak_rss_mb=result["peak_rss_mb"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(HERE / "results.json"))
    args = parser.parse_args(argv)
    import torch

    results = dict(machine=dict(threads=torch.get_num_threads(), torch=torch.__version__), repeats=args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        for spacing in (2.0, 1.0):
            case = _case(Path(tmp), spacing)
            key = f"{spacing:g}mm"
            results[key] = dict(network=bench_network(case, args.repeats),
                                end_to_end=bench_end_to_end(case, args.repeats, tta=False),
                                end_to_end_tta=bench_end_to_end(case, args.repeats, tta=True))
            print(key, json.dumps(results[key]["network"]["speedup"]), flush=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    Path(args.output).with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


def to_markdown(r: dict) -> str:
    f = lambda s: f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"  # noqa: E731
    lines = [f"Inference benchmark: median (min-max) of {r['repeats']} runs, {r['machine']['threads']} threads, "
             f"torch {r['machine']['torch']}", "",
             "| case | what | seconds | ratio to baseline | peak RSS (MB) |", "| --- | --- | --- | --- | --- |"]
    for key in ("2mm", "1mm"):
        n = r[key]["network"]
        lines.append(f"| {key} | network, MONAI sliding window, whole volume {n['baseline_shape']} (baseline) | "
                     f"{f(n['baseline_s'])} | 1.00 | |")
        lines.append(f"| {key} | network, project: head crop {n['project_shape']} + empty windows skipped | "
                     f"{f(n['project_s'])} | {1 / n['speedup']:.2f} | |")
        for name, label in (("end_to_end", "end to end"),
                            ("end_to_end_tta", "end to end, mirroring TTA (identity + 3 flips)")):
            e = r[key][name]
            lines.append(f"| {key} | {label}: read, preprocess, predict, resample, write | {f(e['seconds'])} | | "
                         f"{e['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
