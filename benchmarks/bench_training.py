"""Training-side benchmarks: augmented patches per second per worker, the training step, FLOPs vs peak.

* ``patches_per_s``: the project's training chain (deterministic part cached, foreground/background indices
  precomputed in the cache, affine and elastic in one resampling of a region 1.25x the patch, the elastic field
  on a coarse control grid) against a naive MONAI chain on the same
  cached volume (elastic on the whole volume, indices recomputed by ``RandCropByPosNegLabeld`` each time), both
  in this one process (= one worker), the shipped ``train.yaml`` augmentation with elastic and affine always on,
  the naive chain doing each intensity augmentation with MONAI's stock transform at the same probability.
* ``train_step_s``: forward + backward + AdamW step of the default 3D U-Net on 2 patches of 64^3; on a CPU with
  bf16 instructions also under bf16 autocast (``train_step_bf16_s``), what ``precision: auto`` trains with there.
* ``flops``: the network's forward FLOPs per 64^3 window (torch's FlopCounterMode), this machine's measured
  fp32 matmul peak, and the fraction of it a forward pass achieves.

Every figure is a median of ``--repeats`` with min and max; ratios are against the baseline in the same process.
Run: ``python benchmarks/bench_training.py`` (``make bench`` runs it after the inference benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
THREADS = torch.get_num_threads()
sys.path.insert(0, str(HERE))

from bench_inference import _case, _network, _stats, _time  # noqa: E402


def _always() -> dict:
    """The shipped train.yaml's augmentation, with the costly spatial ones (elastic, affine) always on."""
    import yaml

    from pipeline.data.transforms import augment_settings

    config = yaml.safe_load((HERE.parent / "bundles/stroke_mri_segmentation/configs/train.yaml").read_text())
    augment = augment_settings(config["augment"])
    augment["elastic"]["prob"] = augment["affine"]["prob"] = 1.0
    return augment


ALWAYS = _always()


def _naive_chain(patch, spacing: float):
    """Stock MONAI: elastic on the whole volume, indices found per draw, each intensity augmentation by its
    MONAI transform at the project's probability."""
    from monai import transforms as mt

    from pipeline.data.transforms import deterministic

    a, keys = ALWAYS, ["image", "label"]
    low = a["low_resolution"]
    return mt.Compose(deterministic(3, [spacing] * 3) + [
        mt.Rand3DElasticd(keys, sigma_range=(5, 8), magnitude_range=(40, 120), prob=1.0, rotate_range=[0.26] * 3,
                          scale_range=[0.1] * 3, mode=["bilinear", "nearest"], padding_mode="zeros"),
        mt.RandCropByPosNegLabeld(keys, "label", spatial_size=patch, pos=1, neg=1, num_samples=2),
        mt.RandFlipd(keys, prob=a["flip"]["prob"], spatial_axis=0),
        mt.RandSimulateLowResolutiond("image", prob=low["prob"], zoom_range=(1 / low["max_factor"],
                                                                              1 / low["min_factor"])),
        mt.RandAdjustContrastd("image", prob=a["gamma"]["prob"], gamma=a["gamma"]["gamma"], retain_stats=True),
        mt.RandScaleIntensityFixedMeand("image", prob=a["contrast"]["prob"], factors=a["contrast"]["factors"]),
        mt.RandScaleIntensityd("image", factors=a["brightness"]["factors"], prob=a["brightness"]["prob"]),
        mt.RandShiftIntensityd("image", offsets=a["shift"]["offsets"], prob=a["shift"]["prob"]),
        mt.RandBiasFieldd("image", coeff_range=a["bias_field"]["coeff_range"], prob=a["bias_field"]["prob"]),
        mt.RandGaussianSmoothd("image", sigma_x=a["blur"]["sigma"], sigma_y=a["blur"]["sigma"],
                               sigma_z=a["blur"]["sigma"], prob=a["blur"]["prob"]),
        mt.RandGaussianNoised("image", prob=a["noise"]["prob"], std=a["noise"]["std"]),
    ])


def bench_patches(case: dict, spacing: float, repeats: int, samples: int = 8) -> dict:
    """Patches per second of one process drawing items (2 patches each) from a cached volume."""
    import torch
    from monai.data import CacheDataset

    from pipeline.data.transforms import train_transforms

    patch = [64, 64, 64]
    project = CacheDataset([case], train_transforms(3, 3, [spacing] * 3, patch, ALWAYS, num_samples=2),
                           progress=False)
    naive = CacheDataset([case], _naive_chain(patch, spacing), progress=False)
    torch.set_num_threads(1)  # one DataLoader worker: MONAI's workers run single-threaded

    def rate(ds, n):
        ds[0]  # warm-up
        t = time.perf_counter()
        for _ in range(n):
            ds[0]
        return 2 * n / (time.perf_counter() - t)  # two patches per item

    base = [rate(naive, max(2, samples // 4) if spacing < 2 else samples) for _ in range(repeats)]
    ours = [rate(project, samples) for _ in range(repeats)]
    torch.set_num_threads(THREADS)
    return dict(naive_patches_per_s=_stats(base), project_patches_per_s=_stats(ours),
                ratio=_stats(ours)["median"] / _stats(base)["median"])


def bench_step(repeats: int) -> dict:
    import torch

    from pipeline.models.losses import build_loss
    from pipeline.training.module import cpu_has_bf16

    net = _network().train()
    loss = build_loss("dice_ce", "softmax")
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x, y = torch.randn(2, 3, 64, 64, 64), (torch.rand(2, 1, 64, 64, 64) > 0.9).float()

    def step(bf16: bool = False):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        loss(out.float(), y).backward()
        opt.step()

    result = dict(train_step_s=_time(step, repeats))
    if cpu_has_bf16():  # what precision: auto picks on this CPU (Lightning's bf16-mixed autocasts the same way)
        result["train_step_bf16_s"] = _time(lambda: step(True), repeats)
    return result


def bench_flops(repeats: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = _network().eval()
    x = torch.randn(1, 3, 64, 64, 64)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    flops = counter.get_total_flops()
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    matmul = _time(lambda: a @ b, repeats)
    peak = 2 * 4096**3 / matmul["median"]
    from pipeline.inference.runtimes import compile_network

    compiled = compile_network(net, "openvino", torch.device("cpu"), 3, [64, 64, 64])
    with torch.no_grad():
        forward = _time(lambda: net(x), repeats)
        batch = x.repeat(8, 1, 1, 1, 1)  # as sliding windows feed it: 8 windows over two parallel streams
        forward_ov = _time(lambda: compiled(batch), repeats)
        forward_ov = {k: (v / 8 if k != "n" else v) for k, v in forward_ov.items() if k != "all"}
    return dict(flops_per_window=flops, peak_flops_per_s=peak, forward_s=forward, forward_openvino_s=forward_ov,
                achieved_fraction=flops / forward["median"] / peak,
                achieved_fraction_openvino=flops / forward_ov["median"] / peak)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(HERE / "results_training.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        patches = {f"{s:g}mm": bench_patches(_case(Path(tmp), s), s, args.repeats) for s in (2.0, 1.0)}
        results = dict(repeats=args.repeats, patches=patches, step=bench_step(args.repeats),
                       flops=bench_flops(args.repeats))
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    Path(args.output).with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


def to_markdown(r: dict) -> str:
    f = lambda s, d=2: f"{s['median']:.{d}f} ({s['min']:.{d}f}-{s['max']:.{d}f})"  # noqa: E731
    fl = r["flops"]
    rows = []
    for key, p in r["patches"].items():
        rows += [f"| {key}: augmented 64^3 patches/s per worker, naive MONAI chain (baseline) | "
                 f"{f(p['naive_patches_per_s'])} | 1.00 |",
                 f"| {key}: augmented 64^3 patches/s per worker, project chain | {f(p['project_patches_per_s'])} | "
                 f"{p['ratio']:.2f} |"]
    return "\n".join([
        f"Training benchmark: median (min-max) of {r['repeats']} runs; patches in one single-threaded process "
        "(= one DataLoader worker), elastic and affine always on", "",
        "| what | value | ratio to baseline |", "| --- | --- | --- |", *rows,
        f"| training step, 2 x 64^3, default 3D U-Net, fp32 (baseline, s) | {f(r['step']['train_step_s'])} | 1.00 |",
        *([f"| training step, bf16 autocast (`precision: auto` on this CPU, s) | {f(r['step']['train_step_bf16_s'])} | "
           f"{r['step']['train_step_s']['median'] / r['step']['train_step_bf16_s']['median']:.2f}x faster |"]
          if "train_step_bf16_s" in r["step"] else []),
        f"| forward GFLOPs per 64^3 window | {fl['flops_per_window'] / 1e9:.1f} | |",
        f"| measured fp32 matmul peak (GFLOP/s) | {fl['peak_flops_per_s'] / 1e9:.0f} | |",
        f"| forward pass of one window, eager PyTorch (s) | {f(fl['forward_s'], 3)} | |",
        f"| achieved fraction of peak, eager PyTorch | {fl['achieved_fraction']:.1%} | |",
        f"| forward pass per window, OpenVINO, 8 windows a call (s) | {f(fl['forward_openvino_s'], 3)} | |",
        f"| achieved fraction of peak, OpenVINO | {fl['achieved_fraction_openvino']:.1%} | |",
    ]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
