"""Synthetic acute-stroke MRI on real anatomy, written as an ISLES'22 BIDS tree.

Anatomy comes from the ICBM152 2009 maps in nilearn's wheel (:mod:`pipeline.data.anatomy`): each subject gets
its own head (pose, scaling, smooth warp) and 1-3 infarcts (one subject in six none). How the subject was
scanned is drawn from a domain (:mod:`pipeline.data.acquisition`): ``fixed`` is one protocol on one scanner,
``random`` spans what a multi-centre cohort does (the default for training data), ``shifted`` lies outside the
training ranges (the held-out test of generalisation).

Physical model (tissue constants jittered per subject; partial volumes mixed linearly in signal):

* DWI: spin-echo EPI, ``S0 = PD (1 - exp(-TR/T1)) exp(-TE/T2)`` and ``S_b = S0 exp(-b ADC)``; the stored DWI
  is the ``S_b`` image. Scalp fat is suppressed by a factor.
* ADC: fitted from the noisy, bias-corrupted ``S0`` and ``S_b`` signals, ``ln(S0/S_b)/b`` (so the bias field
  cancels, as on a scanner), stored in 1e-6, 1e-3 or 1 mm^2/s; its background is masked or left as fitted noise.
* FLAIR: inversion-recovery spin echo, ``PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``, on its own grid.
* Infarct: in the ``fixed`` domain its own tissue constants; otherwise DWI and ADC given as ratios to the
  surrounding tissue (the S0 of the infarct then follows from ``S_b = S0 exp(-b ADC)``, and only ratio pairs
  with a plausible T2 change are drawn), FLAIR likewise (FLAIR-negative early strokes included), uniform or
  graded from core to rim, with sharp or blurred borders and texture.

Thick slices are the average of one sub-slice per mm (a box slice profile), not point samples; the mask is the
averaged lesion fraction above one half on the DWI grid. Rician noise lies over the whole field of view unless
the subject is skull-stripped (zero outside the brain), then a bias field and a gain, stored as the drawn dtype.

Example:
    >>> manifest = synthesize("/tmp/synth", subjects=4, seed=3, manifest="/tmp/synth.json")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.data.acquisition import Acquisition, Grid, draw_acquisition, load_domain
from pipeline.data.anatomy import FOV_CENTRE_MM, Anatomy, HeadPose, lesion_maps, load_anatomy, mimic_maps
from pipeline.data.template_sampling import SupportedMaps

__all__ = ["synthesize", "synthesize_subject", "load_anatomy", "isles22_paths", "LESION_FREE_EVERY"]

log = logging.getLogger(__name__)
LESION_FREE_EVERY = 6  # one subject in six has no lesion
CSF_RIM_MM = 2.0       # CSF between the brain mask and the skull
CHUNK_POINTS = 2_000_000


def _step(x: np.ndarray, edge: float, width: float = 0.5) -> np.ndarray:
    return 1 / (1 + np.exp(-(x - edge) / width))


def _sample(anat: Anatomy, lesion: SupportedMaps, pose: HeadPose, grid: Grid, head: bool = True) -> dict:
    """The template maps (:attr:`Anatomy.sampling_maps`, then ``lesion``) averaged over each voxel's slice
    profile: (gm, wm, brain, outside mm, lesion fraction and depth, mimic fraction) and the template points of the
    slice centres. ``head``: False for a skull-stripped subject, whose distance outside the brain is not needed
    (None; a third of the sampling time).

    The head pose is evaluated at each slice's centre and one slice further on; sub-slice points lie on the line
    between (the warp is smooth over centimetres, so its curvature over a slice is negligible).
    """
    import torch

    to_vox = np.linalg.inv(anat.affine)
    margin = float(anat.outside_mm.max())
    tissue, inward = anat.sampling_maps
    groups = {0: tissue, 3: inward if head else None, 4: lesion}  # the first row of each in ``total``
    n = grid.slice_samples
    total = torch.zeros((7, int(np.prod(grid.shape))))
    centres = np.zeros((3, total.shape[1]), np.float32)
    idx = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    for start in range(0, idx.shape[1], CHUNK_POINTS):
        part = slice(start, start + CHUNK_POINTS)
        world = grid.affine[:3, :3] @ idx[:, part] + grid.affine[:3, 3:4]
        y = pose(world)
        centres[:, part] = y
        vox = torch.from_numpy((to_vox[:3, :3] @ y + to_vox[:3, 3:4]).astype(np.float32))
        step = None
        if n > 1:  # one slice along in template voxels, warp included
            step = torch.from_numpy((to_vox[:3, :3] @ (pose(world + grid.affine[:3, 2:3]) - y)).astype(np.float32))
        for row, group in groups.items():
            index, sums = group.slice_profile_sum(vox, step, n) if group is not None else (None, None)
            if sums is not None:
                total[row:row + group.channels, part][:, slice(None) if index is None else index] = sums
    maps = (total / n).numpy()
    return dict(gm=np.clip(maps[0], 0, 1), wm=np.clip(maps[1], 0, 1), brain=np.clip(maps[2], 0, 1),
                outside=margin - maps[3] if head else None, fraction=np.clip(maps[4], 0, 1),
                depth=np.clip(maps[5], 0, 1), mimic=np.clip(maps[6], 0, 1), points=centres)


def _compartments(f: dict, acq: Acquisition) -> dict:
    """Volume fractions of each tissue in each voxel (the infarct and mimics replace the GM/WM they lie in)."""
    kept = np.clip(1 - f["fraction"] - f["mimic"], 0, 1)
    gm, wm = np.clip(f["gm"], 0, 1), np.clip(f["wm"], 0, 1)
    out = dict(csf=np.clip(f["brain"] - gm - wm, 0, 1), gm=gm * kept, wm=wm * kept)
    if not acq.skull_stripped:
        rest, d = 1 - f["brain"], f["outside"]
        skull_end = CSF_RIM_MM + acq.skull_mm
        out["csf"] = out["csf"] + rest * (1 - _step(d, CSF_RIM_MM))
        out["bone"] = rest * _step(d, CSF_RIM_MM) * (1 - _step(d, skull_end))
        out["scalp"] = rest * _step(d, skull_end) * (1 - _step(d, skull_end + acq.scalp_mm))
    return out


def _signals(t: dict, seq: dict, fat_suppression: float = 1.0) -> dict:
    """Noise-free S0, S_b and FLAIR signal and the ADC of one tissue."""
    s0 = t["pd"] * (1 - np.exp(-seq["tr"] / t["t1"])) * np.exp(-seq["te"] / t["t2"]) * fat_suppression \
        * t.get("s0_factor", 1.0)
    flair = t["pd"] * abs(1 - 2 * np.exp(-seq["flair_ti"] / t["t1"]) + np.exp(-seq["flair_tr"] / t["t1"])) \
        * np.exp(-seq["flair_te"] / t["t2"]) * t.get("flair_factor", 1.0)
    return dict(s0=s0, sb=s0 * np.exp(-seq["b"] * t["adc"]), flair=flair, adc=t["adc"])


def _rim_floor(look) -> float:
    """The rim's share of the core's (log) contrast: ``look.rim``, raised so that the rim stays visible (DWI at
    least 1.3x and ADC at most 0.8x the tissue's): a truth mask should not reach where nothing shows."""
    floor = max(np.log(1.3) / np.log(max(look.dwi_ratio, 1.31)), np.log(0.8) / np.log(min(look.adc_ratio, 0.79)))
    return float(min(1.0, max(look.rim, floor)))


def _mix(acq: Acquisition, f: dict) -> dict:
    """Noise-free S0, S_b and FLAIR images of a sampled grid."""
    seq, tissues = acq.sequence, acq.tissues
    sig = {name: _signals(tissues[name], seq, acq.fat_suppression if name == "scalp" else 1.0) for name in tissues}
    parts = _compartments(f, acq)
    out = {k: sum(parts[name] * sig[name][k] for name in parts) for k in ("s0", "sb", "flair")}
    look = acq.lesion
    gm, wm = np.clip(f["gm"], 0, 1), np.clip(f["wm"], 0, 1)
    w = gm / np.maximum(gm + wm, 1e-6)
    base = {k: w * sig["gm"][k] + (1 - w) * sig["wm"][k] for k in ("sb", "flair", "adc")}
    if look.model == "tissue":
        lesion = {k: sig["lesion"][k] for k in ("s0", "sb", "flair")}
    else:  # ratios to the GM/WM the infarct lies in, graded from core (depth 1) to rim
        effect = _rim_floor(look) + (1 - _rim_floor(look)) * f["depth"]
        lesion = _by_ratio(base, seq["b"], look.dwi_ratio ** effect, look.adc_ratio ** effect,
                           look.flair_ratio ** effect)
    m = acq.mimic
    mimic = _by_ratio(base, seq["b"], m.dwi_ratio, m.adc_ratio, m.flair_ratio)
    return {k: out[k] + f["fraction"] * lesion[k] + f["mimic"] * mimic[k] for k in out}


def _by_ratio(base: dict, b: float, dwi: float, adc: float, flair: float) -> dict:
    """A tissue whose DWI, ADC and FLAIR are ratios of ``base``; its S0 follows from ``S_b = S0 exp(-b ADC)``."""
    sb = base["sb"] * dwi
    return dict(s0=sb * np.exp(b * base["adc"] * adc), sb=sb, flair=base["flair"] * flair)


def _bias_field(points: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative field: exp of a random quadratic polynomial over the head."""
    u = (points - FOV_CENTRE_MM[:, None]) / 100.0
    terms = [u[0], u[1], u[2], u[0] * u[1], u[0] * u[2], u[1] * u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2]
    return np.exp(sum(c * t for c, t in zip(rng.normal(0, strength, len(terms)), terms, strict=True)))


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))


def _store(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return x.astype(np.float32)
    top = np.iinfo(dtype).max
    return np.clip(np.rint(x), 0, top).astype(dtype)


def _nifti(data: np.ndarray, grid: Grid) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data.reshape(grid.shape), grid.affine)
    img.set_qform(grid.affine, code=1)
    img.set_sform(grid.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def _dwi_and_adc(acq: Acquisition, f: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    signal = _mix(acq, f)
    sigma = _signals(acq.tissues["wm"], acq.sequence)["s0"] / acq.snr
    bias = _bias_field(f["points"], rng, acq.bias["dwi"])
    s0 = _rician(signal["s0"] * bias, sigma, rng)
    sb = _rician(signal["sb"] * bias, sigma, rng)
    adc = np.clip(np.log(np.maximum(s0, 1e-6) / np.maximum(sb, 1e-6)) / acq.sequence["b"], 0, 4e-3)
    if acq.adc_background == "zero":  # scanners mask the fit where S0 is noise
        adc = np.where(s0 > 5 * sigma, adc, 0.0)
    if acq.skull_stripped:
        inside = f["brain"] > 0.5
        sb, adc = np.where(inside, sb, 0.0), np.where(inside, adc, 0.0)
    return sb * acq.gains["dwi"], adc / acq.adc_unit


def _flair(acq: Acquisition, g: dict, rng: np.random.Generator) -> np.ndarray:
    sigma = _signals(acq.tissues["wm"], acq.sequence)["flair"] / acq.snr
    flair = _rician(_mix(acq, g)["flair"] * _bias_field(g["points"], rng, acq.bias["flair"]), sigma, rng)
    if acq.skull_stripped:
        flair = np.where(g["brain"] > 0.5, flair, 0.0)
    return flair * acq.gains["flair"]


def synthesize_subject(anat: Anatomy, index: int, seed: int, spacing: float | None = None,
                       domain: str | dict = "fixed") -> dict:
    """One subject: ``{"dwi", "adc", "flair", "msk"}`` NIfTI images, ``lesion_ml`` and its ``acquisition``.

    Deterministic for (seed, index, domain), whatever the order subjects are made in. ``spacing`` puts the
    DWI on an isotropic grid of that size (the ``fixed`` domain's default is 2 mm).
    """
    if isinstance(domain, str):
        domain = load_domain(domain, spacing or (2.0 if domain == "fixed" else None))
    rng = np.random.default_rng([seed, index])
    pose = HeadPose(rng)
    acq = draw_acquisition(rng, domain)
    if index % LESION_FREE_EVERY == LESION_FREE_EVERY - 1:
        fraction, depth, volumes = np.zeros_like(anat.gm), np.zeros_like(anat.gm), []
    else:
        fraction, depth, volumes = lesion_maps(anat, rng, acq.lesion.border, acq.lesion.texture, acq.lesion.volume_ml)
    mimic = mimic_maps(anat, rng, acq.mimic.count, acq.mimic.volume_ml) * (1 - fraction)
    lesion = SupportedMaps.of(np.stack([fraction, depth, mimic]))
    f = _sample(anat, lesion, pose, acq.dwi, head=not acq.skull_stripped)
    dwi, adc = _dwi_and_adc(acq, f, rng)
    g = f if acq.flair is acq.dwi else _sample(anat, lesion, pose, acq.flair, head=not acq.skull_stripped)
    flair = _flair(acq, g, rng)
    return dict(dwi=_nifti(_store(dwi, acq.dtypes["dwi"]), acq.dwi),
                adc=_nifti(_store(adc, acq.dtypes["adc"]), acq.dwi),
                flair=_nifti(_store(flair, acq.dtypes["flair"]), acq.flair),
                msk=_nifti((f["fraction"] > 0.5).astype(np.uint8), acq.dwi),
                lesion_ml=volumes, acquisition=acq)


def isles22_paths(subject: str, session: str = "ses-0001") -> dict[str, str]:
    """Relative paths of one case in the ISLES'22 release layout."""
    stem = f"{subject}_{session}"
    return dict(
        dwi=f"{subject}/{session}/dwi/{stem}_dwi.nii.gz",
        adc=f"{subject}/{session}/dwi/{stem}_adc.nii.gz",
        flair=f"{subject}/{session}/anat/{stem}_FLAIR.nii.gz",
        msk=f"derivatives/{subject}/{session}/{stem}_msk.nii.gz",
    )


def _describe(acq: Acquisition) -> dict:
    """The acquisition of one subject, as ``acquisitions.json`` lists it."""
    grid = lambda g: dict(spacing_mm=[round(float(s), 2) for s in g.spacing],  # noqa: E731
                          thickness_mm=round(g.thickness_mm, 2), axcodes="".join(nib.aff2axcodes(g.affine)),
                          shape=list(g.shape))
    look = acq.lesion
    return dict(dwi=grid(acq.dwi), flair=grid(acq.flair), skull_stripped=acq.skull_stripped, snr=round(acq.snr, 1),
                dtypes=acq.dtypes, adc_unit_mm2_s=acq.adc_unit, adc_background=acq.adc_background,
                b_value=round(acq.sequence["b"]), lesion=dict(model=look.model, dwi_ratio=round(look.dwi_ratio, 2),
                                                              adc_ratio=round(look.adc_ratio, 2),
                                                              flair_ratio=round(look.flair_ratio, 2),
                                                              rim=round(look.rim, 2)),
                mimics=acq.mimic.count)


_WORKER: dict = {}


def _init_worker(domain: dict, seed: int, out: str) -> None:
    import torch

    torch.set_num_threads(1)  # one subject per core: the processes share the machine
    _WORKER.update(anat=load_anatomy(), domain=domain, seed=seed, out=Path(out))


def _write_subject(index: int) -> tuple[str, dict]:
    """Synthesise subject ``index`` in a worker and write its files; returns its id and acquisition."""
    from pipeline.io import save_nifti_atomic

    subject = f"sub-strokecase{index + 1:04d}"
    case = synthesize_subject(_WORKER["anat"], index, _WORKER["seed"], domain=_WORKER["domain"])
    for key, rel in isles22_paths(subject).items():
        save_nifti_atomic(case[key], _WORKER["out"] / rel)
    return subject, _describe(case["acquisition"])


def synthesize(out: str | Path, subjects: int = 24, seed: int = 0, spacing: float | None = None,
               manifest: str | Path | None = None, folds: int = 5, test_fraction: float = 0.2,
               progress: bool = True, domain: str | Path = "random", all_testing: bool = False,
               workers: int | None = None) -> dict | None:
    """Write ``subjects`` synthetic cases as an ISLES'22 tree under ``out``; optionally its manifest.

    ``domain`` names the acquisition ranges (see :mod:`pipeline.data.acquisition`). Returns the manifest dict
    when ``manifest`` is given (built by the same importer as real data); ``all_testing`` puts every case in
    its ``testing`` list (a held-out test set). Subjects are made in ``workers`` processes (default: one per
    core, at most 4); each subject depends on (seed, index) only, so the files are the same whatever the count.
    """
    import os
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    from pipeline.data.manifest import build_manifest, write_manifest
    from pipeline.io import write_json_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ranges = load_domain(domain, spacing)
    workers = workers or max(1, min(4, os.cpu_count() or 1, subjects))
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(ranges, seed, str(out))) as pool:
        described = dict(tqdm(pool.map(_write_subject, range(subjects)), total=subjects, unit="subject",
                              desc=f"synthesising ({Path(str(domain)).stem})", disable=not progress))
    write_json_atomic(described, out / "acquisitions.json")
    write_json_atomic({"Name": "Synthetic ISLES'22-like stroke MRI on ICBM152 anatomy", "BIDSVersion": "1.7.0",
                       "DatasetType": "raw", "GeneratedBy": [{"Name": "pipeline.data.synthetic", "seed": seed,
                                                              "domain": str(domain), "spacing_mm": spacing}]},
                      out / "dataset_description.json")
    if manifest is None:
        return None
    data = build_manifest(out, layout="isles22", folds=folds, test_fraction=0.0 if all_testing else test_fraction,
                          seed=seed, progress=progress)
    if all_testing:
        data["testing"], data["training"] = [{k: v for k, v in c.items() if k != "fold"} for c in data["training"]], []
    data["domain"] = str(domain)
    write_manifest(data, manifest)
    return data
