"""Stroke cases from a second, independent simulator: a test of whether a model learnt restricted diffusion or
the look of the project's own generator.

Nothing here comes from :mod:`pipeline.data.synthetic`; only the anatomy is shared (the ICBM152 2009 GM and WM
maps and brain mask in nilearn's wheel). What differs:

* subject: a random affine (scale 0.9-1.1, rotation up to 8 degrees) and a smooth sinusoidal displacement, where
  the project's generator warps with control points;
* tissue: one set of 3 T constants (PD, T1, T2, ADC per GM, WM and CSF, each +-10% per subject), mixed by the
  tissue fractions; a skull and a fat scalp shell in two cases of three;
* lesion: an irregular shape (an ellipsoid roughened by smoothed noise, thresholded to a log-uniform 0.6-60 mL
  inside GM and WM), its ADC 0.45-0.7 of the tissue's and its T2 1.0-1.25x, so that DWI follows from the signal
  model alone (DWI ratio about 1.2-1.8: fainter than most of the training set's); no graded rim, no texture, no
  mimics; one case in six lesion-free;
* acquisition: 1.4-1.9 mm in-plane, 4-6 mm slices (a box profile, 1 mm sub-samples), 5-18 degrees oblique,
  LPS, LPI or RAS, b = 800 or 1000 s/mm^2, TE 70-100 ms; a coil bias field shared by b0 and DWI; Rician noise
  over the whole field of view (b0 SNR 18-35); the ADC fitted from the noisy b0 and DWI and set to 0 where the
  b0 is under three noise levels;
* storage: int16 DWI (scanner gain), ADC in 1e-6 mm^2/s; FLAIR on its own 0.9x0.9x5 mm grid, tilted on its own;
* truth: the lesion's share of each voxel (thick-slice average of the 1 mm mask) at least one half.

Both simulators are this project's code, so "independent" means no shared generator code, not another author.

Run: ``make independent`` (writes ``data/independent`` and ``data_manifests/independent.json``, then segments and
evaluates them with ``MODEL``), or ``python benchmarks/independent_cases.py OUT_DIR [--cases 18] [--seed 11]
[--manifest FILE]`` (default manifest OUT_DIR.json); ``benchmarks/bench_accuracy.py`` scores the model on such a
set too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

# 3 T constants: proton density, T1 (ms), T2 (ms), ADC (mm^2/s)
TISSUE = {"gm": (0.82, 1450.0, 95.0, 0.80e-3), "wm": (0.70, 850.0, 75.0, 0.72e-3),
          "csf": (1.0, 4200.0, 1800.0, 3.0e-3), "skull": (0.05, 300.0, 10.0, 0.3e-3),
          "scalp": (0.9, 380.0, 55.0, 0.2e-3)}


class Template:
    """The ICBM152 2009 tissue fractions (1 mm) and a skull and scalp shell around the brain."""

    def __init__(self):
        from nilearn import datasets

        gm_img = datasets.load_mni152_gm_template(resolution=1)
        self.affine = gm_img.affine
        self.gm = np.asarray(gm_img.get_fdata(), np.float32)
        self.wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), np.float32)
        brain = ndimage.binary_closing(datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0.5, iterations=2)
        self.brain = brain
        self.csf = np.clip(brain - self.gm - self.wm, 0, 1).astype(np.float32)
        outside = ndimage.distance_transform_edt(~brain)
        self.skull = ((outside > 2) & (outside <= 7)).astype(np.float32)
        self.scalp = ((outside > 7) & (outside <= 13)).astype(np.float32)
        self.shape = self.gm.shape


def lesion_mask(t: Template, rng: np.random.Generator) -> np.ndarray:
    """An irregular lesion on the template grid: an ellipsoid roughened by smoothed noise, kept in GM and WM."""
    volume_ml = float(np.exp(rng.uniform(np.log(0.6), np.log(60.0))))
    tissue = (t.gm + t.wm) > 0.5
    while True:
        centre = np.array([rng.integers(40, 150), rng.integers(50, 180), rng.integers(40, 130)])
        if t.gm[tuple(centre)] + t.wm[tuple(centre)] > 0.8:
            break
    radius = (volume_ml * 1000 * 3 / (4 * np.pi)) ** (1 / 3) * 1.4
    axes = radius * rng.uniform(0.6, 1.5, 3)
    lo = np.maximum(centre - axes.max() - 3, 0).astype(int)
    hi = np.minimum(centre + axes.max() + 4, t.shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1) - centre
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    noise = ndimage.gaussian_filter(rng.normal(size=grid.shape[:3]), max(1.0, radius / 4))
    field = 1 - ((grid @ rotation) ** 2 / axes ** 2).sum(-1) + 0.35 * noise / (noise.std() + 1e-6)
    inside = tissue[box]
    ranked = np.sort(field[inside])[::-1]
    count = int(min(len(ranked), volume_ml * 1000))
    mask = np.zeros(t.shape, bool)
    if count:
        mask[box] = (field >= ranked[count - 1]) & inside
    labels, n = ndimage.label(mask)
    if n > 3:  # the three largest pieces: a main infarct and satellites
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = np.isin(labels, np.argsort(sizes)[::-1][:3] + 1)
    return mask


def subject_warp(rng: np.random.Generator):
    """Scanner mm -> template mm: a random affine and a smooth sinusoidal displacement of 1-3 mm."""
    angles = np.deg2rad(rng.uniform(-8, 8, 3))
    c, s = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    inverse = np.linalg.inv(rx @ ry @ rz @ np.diag(rng.uniform(0.9, 1.1, 3)))
    k, phase, amplitude = rng.normal(size=(3, 3)) / 45.0, rng.uniform(0, 2 * np.pi, (3, 3)), rng.uniform(1.0, 3.0)

    def warp(points: np.ndarray) -> np.ndarray:
        q = points @ inverse.T
        shift = np.stack([np.sin(q * k[i] + phase[i]).sum(-1) for i in range(3)], -1)
        return q + amplitude * shift / 3
    return warp


def oblique_grid(rng: np.random.Generator, inplane: float, thick: float, fov_xy: float, fov_z: float,
                 tilt_deg: float, codes: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An affine (RAS mm) and shape: axes ``codes`` (e.g. LPS), tilted ``tilt_deg`` about a random axis, centred
    near the brain."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    theta = np.deg2rad(tilt_deg)
    rotation = np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * cross @ cross
    flips = np.diag([-1.0 if codes[0] == "L" else 1.0, -1.0 if codes[1] == "P" else 1.0,
                     -1.0 if codes[2] == "I" else 1.0])
    size = np.array([round(fov_xy / inplane), round(fov_xy / inplane), round(fov_z / thick)])
    matrix = rotation @ flips @ np.diag([inplane, inplane, thick])
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = np.array([0.0, -18.0, 12.0]) + rng.normal(0, 4, 3) - matrix @ ((size - 1) / 2)
    return affine, (int(size[0]), int(size[1]), int(size[2]))


def acquire(volumes: list[np.ndarray], template_affine: np.ndarray, affine: np.ndarray, shape, thick: float,
            warp) -> list[np.ndarray]:
    """Each template volume averaged over the slice thickness (box profile, 1 mm sub-samples) at the grid's
    voxel centres."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3).astype(float)
    steps = max(1, round(thick))
    to_template = np.linalg.inv(template_affine)
    sums = [np.zeros(len(index), np.float32) for _ in volumes]
    for offset in (np.arange(steps) + 0.5) / steps - 0.5:
        world = warp((index + [0, 0, offset]) @ affine[:3, :3].T + affine[:3, 3])
        voxels = (world @ to_template[:3, :3].T + to_template[:3, 3]).T
        for total, volume in zip(sums, volumes, strict=True):
            total += ndimage.map_coordinates(volume, voxels, order=1, mode="constant", cval=0.0)
    return [(total / steps).reshape(shape) for total in sums]


def make_case(t: Template, rng: np.random.Generator, out: Path, case_id: str, lesion: bool) -> dict:
    """Write one case (DWI, ADC, FLAIR, mask) under ``out/case_id`` and return its manifest entry."""
    mask = lesion_mask(t, rng) if lesion else np.zeros(t.shape, bool)
    scalp = rng.random() < 2 / 3
    fractions = {"gm": t.gm * t.brain, "wm": t.wm * t.brain, "csf": t.csf, "skull": t.skull * scalp,
                 "scalp": t.scalp * scalp}
    total = sum(fractions.values()) + 1e-6
    jitter = {k: rng.uniform(0.9, 1.1, 4) for k in TISSUE}
    pd, t1, t2, adc = (sum(fractions[k] * TISSUE[k][i] * jitter[k][i] for k in TISSUE) / (total if i else 1)
                       for i in range(4))
    share = ndimage.gaussian_filter(mask.astype(np.float32), 0.7)
    adc = adc * (1 - share * (1 - rng.uniform(0.45, 0.7)))
    t2 = t2 * (1 + share * (rng.uniform(1.0, 1.25) - 1))
    b, te = float(rng.choice([800.0, 1000.0])), rng.uniform(70, 100)
    fat_kept = np.where(fractions["scalp"] > 0.5, 0.15, 1.0)
    s0 = pd * np.exp(-te / np.maximum(t2, 1)) * fat_kept
    flair = pd * np.abs(1 - 2 * np.exp(-2500 / np.maximum(t1, 1)) + np.exp(-9000 / np.maximum(t1, 1))) \
        * np.exp(-120 / np.maximum(t2, 1)) * (1 + share * (float(rng.choice([1.0, rng.uniform(1.1, 1.5)])) - 1))
    warp = subject_warp(rng)
    inplane, thick = rng.uniform(1.4, 1.9), float(rng.choice([4.0, 5.0, 5.0, 6.0]))
    codes = str(rng.choice(["LPS", "RAS", "LPI"]))
    affine, shape = oblique_grid(rng, inplane, thick, rng.uniform(220, 240), rng.uniform(120, 150),
                                 rng.uniform(5, 18), codes)
    b0, dwi, truth = acquire([s0, s0 * np.exp(-b * adc), mask.astype(np.float32)], t.affine, affine, shape, thick, warp)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    bias = np.exp(grid @ rng.normal(0, 0.15, 3) + 0.1 * (grid ** 2 @ rng.normal(0, 1, 3)))
    tissue = b0[(truth < 0.5) & (b0 > 0.2 * b0.max())]
    sigma = float(np.median(tissue)) / rng.uniform(18, 35)

    def rician(x):
        return np.abs(x * bias + rng.normal(0, sigma, x.shape) + 1j * rng.normal(0, sigma, x.shape))
    b0, dwi = rician(b0), rician(dwi)
    fitted = np.where(b0 > 3 * sigma, -np.log(np.clip(dwi, 1e-9, None) / np.clip(b0, 1e-9, None)) / b, 0.0)
    folder = out / case_id
    folder.mkdir(parents=True, exist_ok=True)
    gain = 3000.0 / np.percentile(dwi, 99.9)
    nib.save(nib.Nifti1Image(np.round(dwi * gain).astype(np.int16), affine), folder / "dwi.nii.gz")
    nib.save(nib.Nifti1Image(np.round(np.clip(fitted, 0, 4e-3) * 1e6).astype(np.int16), affine), folder / "adc.nii.gz")
    nib.save(nib.Nifti1Image((truth >= 0.5).astype(np.uint8), affine), folder / "mask.nii.gz")
    flair_affine, flair_shape = oblique_grid(rng, 0.9, 5.0, 230, 150, rng.uniform(5, 18), "RAS")
    (flair_image,) = acquire([flair], t.affine, flair_affine, flair_shape, 5.0, warp)
    level = flair_image.max() / 40
    flair_image = np.abs(flair_image + rng.normal(0, level, flair_shape) + 1j * rng.normal(0, level, flair_shape))
    nib.save(nib.Nifti1Image(np.round(flair_image / flair_image.max() * 2000).astype(np.int16), flair_affine),
             folder / "flair.nii.gz")
    return {"id": case_id, "image": [f"{case_id}/dwi.nii.gz", f"{case_id}/adc.nii.gz", f"{case_id}/flair.nii.gz"],
            "label": f"{case_id}/mask.nii.gz",
            "lesion_ml": round(float((truth >= 0.5).sum()) * inplane * inplane * thick / 1000, 3)}


def generate(out_dir: str | Path, cases: int = 18, seed: int = 11, manifest: str | Path | None = None) -> Path:
    """Write ``cases`` cases under ``out_dir`` and their manifest (all ``testing``; default beside ``out_dir``);
    the manifest's path."""
    from pipeline.data.manifest import write_manifest

    out = Path(out_dir).resolve()
    rng = np.random.default_rng(seed)
    template = Template()
    entries = []
    for i in range(cases):
        entries.append(make_case(template, rng, out, f"ind{i:03d}", lesion=i % 6 != 5))
        print(f"\r{i + 1}/{cases} cases", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    data = {"name": "independent simulator", "channels": ["dwi", "adc", "flair"], "dataset_dir": str(out),
            "training": [], "testing": entries}
    return write_manifest(data, manifest or out.with_suffix(".json"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--cases", type=int, default=18)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--manifest", help="where the manifest goes (default: OUT_DIR.json)")
    args = parser.parse_args(argv)
    print(generate(args.out_dir, args.cases, args.seed, args.manifest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
