"""Inference speed and memory: the project's predictor against MONAI's plain sliding window, in one process.

Cases: one synthetic subject at 2 mm and one at 1 mm (three channels; ~180x216x180 at 1 mm), each run by the
default 3D U-Net of ``configs/train.yaml`` planned at the case's own spacing (as nnU-Net plans 1 mm for ATLAS),
with the shipped bundle's settings (:func:`_settings`); and the 1 mm one end to end through the shipped 2 mm
grid, as the bundle runs a 1 mm scan. Random weights: the network's time does not depend on
them; the post-processing's does, through the lesions called, and the untrained network's specks (~150 at 1 mm)
cost it more than a trained model's few lesions (``bench_accuracy.py`` checks Dice with trained weights).

* ``network``: the network part on the preprocessed volume. Baseline: ``monai.inferers.sliding_window_inference``
  over the whole (uncropped) volume, overlap 0.5, Gaussian, fp32 eager PyTorch, 4 windows a batch. Project:
  the head-cropped volume, empty windows skipped, the default overlap, in each runtime (eager PyTorch,
  ONNX Runtime, OpenVINO) and for several window batch sizes.
* ``end_to_end``: read, preprocess, predict, resample to the scanner grid, write: the MONAI-defaults pipeline
  (:class:`MonaiBaseline`) and the project's defaults timed in this process with their repeats interleaved,
  then the defaults with 8-fold mirroring TTA; each one's peak RSS in a fresh process of its own.

Every figure is the median of ``--repeats`` runs (after a warm-up) with min and max; speed figures carry their
ratio to the baseline measured in the same process. Writes ``benchmarks/results.json`` and ``results.md``.

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

import numpy as np

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "bundles" / "stroke_mri_segmentation" / "configs" / "inference.yaml"


def _stats(values: list[float]) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values), n=len(values), all=values)


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


class MonaiBaseline:
    """The MONAI-defaults pipeline the project is measured against: MONAI's stock transforms throughout
    (``LoadImaged``, ``ResampleToMatchd`` of ADC and FLAIR onto DWI, ``Orientationd``, ``Spacingd``), the
    model's own normalisation (:func:`pipeline.data.normalise.normalisation` with the model's ``normalise``
    settings, MONAI MapTransforms: a model trained on it needs it), ``sliding_window_inference`` over the whole
    volume (overlap 0.5, Gaussian, eager fp32, 4 windows a batch), ``ResampleToMatch`` of the probability back
    onto the DWI grid, threshold, nibabel write. Same network, spacing, window and normalisation as the project,
    which also runs the shipped post-processing (lesion filters, restricted-diffusion check, border refinement)."""

    def __init__(self, network, spacing: float, roi_size=(64, 64, 64), head: str = "softmax",
                 normalise: dict | None = None):
        from monai import transforms as mt

        from pipeline.data.normalise import DEFAULT_NORMALISE, normalisation
        from pipeline.data.transforms import RAS_LABELS

        self.network, self.roi_size, self.head = network.eval(), list(roi_size), head
        keys = ["dwi", "adc", "flair"]
        self.preprocess = mt.Compose([
            mt.LoadImaged(keys, image_only=True, ensure_channel_first=True, reader="NibabelReader"),
            mt.ResampleToMatchd(keys[1:], key_dst="dwi", mode="bilinear", padding_mode="zeros", dtype=np.float32),
            mt.ConcatItemsd(keys, "image"), mt.Orientationd("image", axcodes="RAS", labels=RAS_LABELS),
            mt.Spacingd("image", pixdim=[spacing] * 3, mode="bilinear", dtype=np.float32),
            *normalisation("image", crop_margin=None, **{**DEFAULT_NORMALISE, **(normalise or {})})])

    def predict_case(self, case: dict) -> dict:
        import nibabel as nib
        import torch
        from monai.data import MetaTensor
        from monai.inferers import sliding_window_inference
        from monai.transforms import ResampleToMatch

        from pipeline.inference.predictor import logits_to_probability

        reference = nib.load(case["image"][0])
        image = self.preprocess(dict(zip(["dwi", "adc", "flair"], case["image"], strict=True)))["image"]
        with torch.no_grad():
            logits = sliding_window_inference(image[None], self.roi_size, 4, self.network, overlap=0.5,
                                              mode="gaussian")
        prob = MetaTensor(logits_to_probability(logits.as_tensor(), self.head)[0], affine=image.affine)
        dst = MetaTensor(torch.zeros((1, *reference.shape[:3])), affine=torch.as_tensor(reference.affine))
        native = ResampleToMatch(mode="bilinear", padding_mode="zeros")(prob, dst)[0].numpy()
        return dict(mask=(native >= 0.5).astype(np.uint8), reference=reference)

    def segment(self, case: dict, output: str | Path) -> None:
        import nibabel as nib

        result = self.predict_case(case)
        mask = nib.Nifti1Image(result["mask"], result["reference"].affine)
        nib.save(mask, str(Path(output) / f"{case['id']}.nii.gz"))

RUNTIMES = ("torch", "onnxruntime", "openvino")
SW_BATCHES = (1, 4, 8)


def _network():
    import torch

    from pipeline.models.networks import build_network

    torch.manual_seed(0)
    return build_network("unet", 3, 3, "softmax", channels=[16, 32, 64, 128], strides=[2, 2, 2], num_res_units=1,
                         norm="instance").eval()


def _settings(spacing: float, **overrides):
    """The shipped bundle's settings (``configs/inference.yaml``: its normalisation, window and all of its
    post-processing: the lesion filters, the restricted-diffusion check, the border refinement), planned at
    ``spacing``."""
    import yaml

    from pipeline.inference import Settings
    from pipeline.inference.settings import SETTINGS_FIELDS

    shipped = yaml.safe_load(SHIPPED.read_text())["settings"]
    return Settings(**{**{k: v for k, v in shipped.items() if k in SETTINGS_FIELDS}, "spacing": [spacing] * 3,
                       **overrides})


def bench_network(case: dict, spacing: float, repeats: int) -> dict:
    """Network part only: MONAI's sliding window over the whole volume vs the project's, per runtime and
    window batch size."""
    import torch
    from monai.inferers import sliding_window_inference

    from pipeline.data.transforms import val_transforms
    from pipeline.inference import Settings, lesion_probability
    from pipeline.inference.runtimes import compile_network

    net, s = _network(), _settings(spacing)
    full = val_transforms(3, s.spacing, with_label=False, crop_to_head=False)(dict(case))["image"][None]
    cropped = val_transforms(3, s.spacing, with_label=False)(dict(case))["image"][None]
    cpu = torch.device("cpu")
    runners = {rt: compile_network(net, rt, cpu, 3, s.roi_size) for rt in RUNTIMES}
    with torch.no_grad():
        baseline = _time(lambda: sliding_window_inference(full, s.roi_size, 4, net, overlap=0.5, mode="gaussian"),
                         repeats)
        runtimes = {rt: _time(lambda r=r: lesion_probability(r, cropped, 3, s.roi_size, overlap=s.overlap,
                                                             sw_batch_size=s.sw_batch_size), repeats)
                    for rt, r in runners.items()}
        default = runners[runtime_of(s)]
        batches = {b: _time(lambda b=b: lesion_probability(default, cropped, 3, s.roi_size, overlap=s.overlap,
                                                           sw_batch_size=b), repeats) for b in SW_BATCHES}
    ratio = lambda t: baseline["median"] / t["median"]  # noqa: E731
    return dict(baseline_s=baseline, baseline_shape=list(full.shape[2:]), project_shape=list(cropped.shape[2:]),
                overlap=s.overlap, default_runtime=runtime_of(s), default_sw_batch=Settings.sw_batch_size,
                runtimes={rt: dict(seconds=t, speedup=ratio(t)) for rt, t in runtimes.items()},
                sw_batch={str(b): dict(seconds=t, speedup=ratio(t)) for b, t in batches.items()})


def runtime_of(settings) -> str:
    import torch

    from pipeline.inference.runtimes import resolve_runtime

    return resolve_runtime(settings.runtime, torch.device("cpu"))


CONFIGS = {"baseline": {"baseline": True}, "project": {}, "project_tta8": {"tta_axes": [0, 1, 2]}}
SCAN_1MM_MODEL_2MM = "1mm_scan_2mm_model"
END_TO_END = (("baseline", "end to end, baseline: MONAI transforms, sliding window as above, ResampleToMatch back"),
              ("project", "end to end, project defaults"),
              ("project_tta8", "end to end, project defaults + 8-fold mirroring TTA"))


def _runner(case: dict, spacing: float, overrides: dict):
    """A function that segments ``case`` into a folder, for one configuration."""
    from pipeline.inference import Predictor
    from pipeline.inference.batch import segment_cases

    overrides = dict(overrides)
    if overrides.pop("baseline", False):
        baseline = MonaiBaseline(_network(), spacing, normalise=_settings(spacing).normalise)
        return lambda out: baseline.segment(case, out)
    predictor = Predictor(_network(), _settings(spacing, **overrides))
    # without the MNI registration (~0.8 s a case, `infer --no-mni`): the baseline has none, and whether it runs
    # depends on whether these random weights call a lesion
    return lambda out: segment_cases(predictor, [case], out, progress=False, mni=False)


PEAK_RSS = """
import json, sys, tempfile
sys.path.insert(0, {here!r})
from bench_inference import _runner
run = _runner(json.loads(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3]))
with tempfile.TemporaryDirectory() as out:
    run(out)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024)
"""


def peak_rss_mb(case: dict, spacing: float, overrides: dict) -> float:
    """Peak RSS of one case in a fresh process (so it is this configuration's own)."""
    out = subprocess.run([sys.executable, "-c", PEAK_RSS.format(here=str(HERE)), json.dumps(case), str(spacing),
                          json.dumps(overrides)], capture_output=True, text=True, cwd=HERE.parent)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return float(out.stdout.strip().splitlines()[-1])


def bench_end_to_end(case: dict, spacing: float, repeats: int) -> dict:
    """Whole cases in this process: the baseline and the project's defaults with their repeats interleaved
    (a slower or faster spell of the machine falls on both alike), then the defaults with TTA; then each
    configuration's peak RSS in a fresh process."""
    runners = {name: _runner(case, spacing, overrides) for name, overrides in CONFIGS.items()}
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}

    def timed(name: str) -> float:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            runners[name](out)
            return time.perf_counter() - t

    for i in range(repeats + 1):  # the first round warms up
        for name in ("baseline", "project"):
            seconds = timed(name)
            if i:
                times[name].append(seconds)
    times["project_tta8"] = _time(lambda: timed("project_tta8"), repeats)["all"]
    base = statistics.median(times["baseline"])
    return {name: dict(seconds=_stats(times[name]), speedup=base / statistics.median(times[name]),
                       peak_rss_mb=peak_rss_mb(case, spacing, CONFIGS[name])) for name in CONFIGS}


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
            r = results[key] = dict(network=bench_network(case, spacing, args.repeats))
            r["end_to_end"] = bench_end_to_end(case, spacing, args.repeats)
            print(key, "end-to-end speed-up", round(r["end_to_end"]["project"]["speedup"], 2), flush=True)
        # the same 1 mm scan through the shipped model's 2 mm grid: what the bundle's users with 1 mm scans run
        results[SCAN_1MM_MODEL_2MM] = dict(end_to_end=bench_end_to_end(case, 2.0, args.repeats))
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    Path(args.output).with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


def to_markdown(r: dict) -> str:
    f = lambda s: f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"  # noqa: E731
    lines = [f"Inference benchmark: median (min-max) of {r['repeats']} runs, {r['machine']['threads']} threads, "
             f"torch {r['machine']['torch']}; model planned at the case's spacing, 64^3 windows", "",
             "| case | what | seconds | speed-up vs baseline | peak RSS (MB) |", "| --- | --- | --- | --- | --- |"]
    for key in ("2mm", "1mm"):
        n, e = r[key]["network"], r[key]["end_to_end"]
        lines.append(f"| {key} | network, baseline: MONAI sliding window over the whole volume {n['baseline_shape']},"
                     f" overlap 0.5, eager | {f(n['baseline_s'])} | 1.00 | |")
        for rt, v in n["runtimes"].items():
            lines.append(f"| {key} | network, project: head crop {n['project_shape']}, empty windows skipped, overlap "
                         f"{n['overlap']}, {rt} (batch {n['default_sw_batch']}) | {f(v['seconds'])} | "
                         f"{v['speedup']:.2f} | |")
        for b, v in n["sw_batch"].items():
            lines.append(f"| {key} | network, project ({n['default_runtime']}), {b} window(s) a batch | "
                         f"{f(v['seconds'])} | {v['speedup']:.2f} | |")
        lines += _end_to_end_rows(key, e, f)
    if SCAN_1MM_MODEL_2MM in r:
        lines += _end_to_end_rows("1mm scan, 2mm model", r[SCAN_1MM_MODEL_2MM]["end_to_end"], f)
    return "\n".join(lines) + "\n"


def _end_to_end_rows(key: str, e: dict, f) -> list[str]:
    return [f"| {key} | {label} | {f(e[name]['seconds'])} | {e[name]['speedup']:.2f} | {e[name]['peak_rss_mb']:.0f} |"
            for name, label in END_TO_END]


if __name__ == "__main__":
    sys.exit(main())
