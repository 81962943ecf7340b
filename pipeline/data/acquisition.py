"""How a synthetic subject was scanned: drawn per subject from a domain of acquisition ranges.

A domain (``pipeline/data/domains.yaml``: ``fixed``, ``random``, ``shifted``, or a YAML file of one's own that
names a ``base``) gives ranges for the geometry of the DWI/ADC grid and of FLAIR's own grid (voxel size, slice
thickness, axis order and direction, obliquity, field of view), the look (skull-stripped or not, noise, bias
field, tissue constants, sequence timing, fat suppression), the storage (dtype, gain, ADC units, masked or
fitted ADC background) and the lesion's contrast. :func:`draw_acquisition` turns them into one
:class:`Acquisition`.

Example:
    >>> domain = load_domain("random")
    >>> acq = draw_acquisition(np.random.default_rng(0), domain)
    >>> acq.dwi.thickness_mm >= acq.dwi.spacing[0]
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pipeline.data.anatomy import FOV_CENTRE_MM
from pipeline.errors import ConfigError

__all__ = ["DOMAINS_FILE", "TISSUES", "Grid", "LesionLook", "MimicLook", "Acquisition", "load_domain",
           "draw_acquisition",
           "oblique_rotation"]

AXIS_DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
DOMAINS_FILE = Path(__file__).with_name("domains.yaml")
# Proton density (relative), T1 and T2 (ms) at 3 T, ADC (mm^2/s); "lesion" is the fixed domain's infarct.
TISSUES = {
    "csf": dict(pd=1.00, t1=4000.0, t2=2000.0, adc=3.0e-3),
    "gm": dict(pd=0.80, t1=1400.0, t2=100.0, adc=0.85e-3),
    "wm": dict(pd=0.70, t1=850.0, t2=75.0, adc=0.75e-3),
    "lesion": dict(pd=0.85, t1=1500.0, t2=125.0, adc=0.40e-3),
    "bone": dict(pd=0.05, t1=300.0, t2=20.0, adc=0.30e-3),
    "scalp": dict(pd=0.90, t1=380.0, t2=80.0, adc=1.2e-3),
}


@dataclass
class Grid:
    """A scanner grid: voxel ``shape`` and ``affine`` (RAS mm); ``thickness_mm`` along the third voxel axis."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    thickness_mm: float

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def slice_samples(self) -> int:
        """Sub-slices averaged into each slice: one per 1.5 mm of a thick slice (the template has 1 mm voxels;
        finer steps changed the mean lesion fraction by under 1%), else 1."""
        if self.thickness_mm <= 1.5 * float(self.spacing[:2].max()):
            return 1
        return int(np.ceil(self.thickness_mm / 1.5))


@dataclass
class LesionLook:
    """The infarct's contrast. ``model``: ``tissue`` (the fixed domain's lesion tissue constants) or ``ratio``
    (DWI and ADC as ratios to the surrounding tissue, FLAIR likewise; ``rim`` < 1 grades core to rim)."""

    model: str = "tissue"
    dwi_ratio: float = 2.0
    adc_ratio: float = 0.55
    flair_ratio: float = 1.2
    rim: float = 1.0
    border: float = 0.06
    texture: float = 0.0
    volume_ml: tuple[float, float] = (0.3, 90.0)


@dataclass
class MimicLook:
    """Blobs that are not infarcts: bright on DWI, ADC normal or high (T2 shine-through, oedema), not in the mask."""

    count: int = 0
    volume_ml: tuple[float, float] = (0.5, 15.0)
    dwi_ratio: float = 1.5
    adc_ratio: float = 1.2
    flair_ratio: float = 1.5


@dataclass
class Acquisition:
    dwi: Grid
    flair: Grid
    skull_stripped: bool = True
    snr: float = 30.0
    bias: dict = field(default_factory=lambda: {"dwi": 0.12, "flair": 0.18})
    sequence: dict = field(default_factory=dict)
    tissues: dict = field(default_factory=lambda: copy.deepcopy(TISSUES))
    fat_suppression: float = 0.2
    lesion: LesionLook = field(default_factory=LesionLook)
    mimic: MimicLook = field(default_factory=MimicLook)
    dtypes: dict = field(default_factory=lambda: {"dwi": "int16", "adc": "int16", "flair": "int16"})
    gains: dict = field(default_factory=lambda: {"dwi": 1000.0, "flair": 5000.0})
    adc_unit: float = 1e-6
    adc_background: str = "zero"
    skull_mm: float = 6.0
    scalp_mm: float = 5.0


def _deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def load_domain(name: str | Path = "random", spacing: float | None = None) -> dict:
    """A domain by name (``fixed``, ``random``, ``shifted``) or from a YAML file (``base:`` plus overrides).

    ``spacing`` (mm) puts the DWI/ADC on an isotropic grid of that size and FLAIR on 0.8 x 0.8 x 1.25 of it.
    """
    presets = yaml.safe_load(DOMAINS_FILE.read_text())
    if str(name) in presets:
        domain = presets[str(name)]
    elif Path(name).is_file():
        own = yaml.safe_load(Path(name).read_text()) or {}
        base = own.pop("base", "random")
        if base not in presets:
            raise ConfigError(f"{name}: base must be one of {sorted(presets)}, not {base!r}")
        domain = _deep_update(presets[base], own)
    else:
        raise ConfigError(f"unknown domain {str(name)!r}: choose {', '.join(presets)} or give a YAML file")
    if spacing:
        domain = _deep_update(domain, {"dwi": {"inplane_mm": [spacing] * 2, "thickness_mm": [spacing] * 2},
                                       "flair": {"inplane_mm": [0.8 * spacing] * 2,
                                                 "thickness_mm": [1.25 * spacing] * 2}})
    return domain


def _uniform(rng, bounds) -> float:
    lo, hi = (bounds, bounds) if np.isscalar(bounds) else bounds
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _log_uniform(rng, bounds) -> float:
    lo, hi = bounds
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


def _choice(rng, options):
    return options[int(rng.integers(len(options)))]


def oblique_rotation(rng: np.random.Generator, lo_deg: float, hi_deg: float) -> np.ndarray:
    """A rotation by an angle uniform in [lo, hi] degrees about a random axis (Rodrigues)."""
    angle = np.deg2rad(_uniform(rng, [lo_deg, hi_deg]))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def draw_grid(rng: np.random.Generator, g: dict) -> Grid:
    """One scanner grid from a geometry block: the third voxel axis is the slice axis."""
    inplane = _uniform(rng, g["inplane_mm"])
    thickness = max(_uniform(rng, g["thickness_mm"]), inplane)
    spacing = np.array([inplane, inplane, thickness])
    directions = np.stack([AXIS_DIRECTIONS[c] for c in _choice(rng, g["orientations"])], axis=1)
    matrix = oblique_rotation(rng, *g["oblique_deg"]) @ directions @ np.diag(spacing)
    fov = np.array([_uniform(rng, b) for b in g["fov_mm"]])
    shape = tuple(int(n) for n in np.maximum(np.round(fov / spacing), 8))
    affine = np.eye(4)
    affine[:3, :3] = matrix
    centre = FOV_CENTRE_MM + rng.uniform(-g["shift_mm"], g["shift_mm"], 3)
    affine[:3, 3] = centre - matrix @ ((np.array(shape) - 1) / 2)
    return Grid(shape, affine, thickness)


def _jittered_tissues(rng, jitter: float) -> dict:
    if not jitter:
        return copy.deepcopy(TISSUES)
    return {name: {k: v * rng.uniform(1 - jitter, 1 + jitter) for k, v in consts.items()}
            for name, consts in TISSUES.items()}


def _contrasted_tissues(rng, tissues: dict, spec: dict | None) -> dict:
    """SynthSeg's idea for the brain tissues: each of ``spec["tissues"]`` gets its own log-uniform factors on
    its S0 (``s0``, hence DWI), ADC (``adc``) and FLAIR (``flair``) signal, so which tissue is brighter than
    which is not a cue; the infarct and mimics follow, as ratios to the tissue they lie in."""
    if not spec:
        return tissues
    for name in spec.get("tissues", ["gm", "wm", "csf"]):
        t = tissues[name]
        t["s0_factor"], t["flair_factor"] = _log_uniform(rng, spec["s0"]), _log_uniform(rng, spec["flair"])
        t["adc"] *= _log_uniform(rng, spec["adc"])
    return tissues


def _lesion_look(rng, spec: dict, b: float) -> LesionLook:
    volume = tuple(spec.get("volume_ml", (0.3, 90.0)))
    if spec.get("model", "tissue") == "tissue":
        return LesionLook("tissue", border=_uniform(rng, spec["border"]), texture=_uniform(rng, spec["texture"]),
                          volume_ml=volume)
    adc_wm = TISSUES["wm"]["adc"]
    for _ in range(100):  # DWI and ADC ratios whose implied T2 change (S0 ratio) is plausible
        dwi, adc = _uniform(rng, spec["dwi_ratio"]), _uniform(rng, spec["adc_ratio"])
        t2_factor = dwi * np.exp(-b * adc_wm * (1 - adc))
        if spec["t2_factor"][0] <= t2_factor <= spec["t2_factor"][1]:
            break
    # every value is drawn whatever the branch, so changing one knob leaves the other draws as they were
    negative, flair = rng.random() < spec.get("flair_negative", 0.0), _uniform(rng, spec["flair_ratio"])
    graded, rim = rng.random() < spec.get("graded", 0.0), _uniform(rng, spec["rim"])
    return LesionLook("ratio", dwi, adc, 1.0 if negative else flair, rim if graded else 1.0,
                      _uniform(rng, spec["border"]), _uniform(rng, spec["texture"]), volume)


def _mimic_look(rng, spec: dict | None) -> MimicLook:
    if not spec or rng.random() >= spec.get("prob", 0.0):
        return MimicLook()
    return MimicLook(int(rng.integers(spec["count"][0], spec["count"][1] + 1)), tuple(spec["volume_ml"]),
                     _uniform(rng, spec["dwi_ratio"]), _uniform(rng, spec["adc_ratio"]),
                     _uniform(rng, spec["flair_ratio"]))


def draw_acquisition(rng: np.random.Generator, domain: dict) -> Acquisition:
    """One subject's acquisition drawn from ``domain`` (see :func:`load_domain`)."""
    dwi = draw_grid(rng, domain["dwi"])
    flair = draw_grid(rng, domain["flair"]) if rng.random() < domain["flair"].get("own_grid", 1.0) else dwi
    seq = {k: _uniform(rng, v) for k, v in domain["sequence"].items()}
    st = domain["storage"]
    dtypes = {k: _choice(rng, st["dtypes"]) for k in ("dwi", "adc", "flair")}
    adc_unit = float(_choice(rng, st["adc_units"]))
    if adc_unit > 1e-5:
        dtypes["adc"] = "float32"  # mm^2/s or 1e-3 mm^2/s: integers would round the map away
    float_gain = st.get("float_gain", st["gain"])
    gains = {"dwi": _log_uniform(rng, float_gain if dtypes["dwi"] == "float32" else st["gain"]),
             "flair": _log_uniform(rng, float_gain if dtypes["flair"] == "float32" else st["flair_gain"])}
    return Acquisition(
        dwi=dwi, flair=flair, skull_stripped=bool(rng.random() < domain["skull_stripped"]),
        snr=_uniform(rng, domain["snr"]), bias={k: _uniform(rng, v) for k, v in domain["bias"].items()},
        sequence=seq, tissues=_contrasted_tissues(rng, _jittered_tissues(rng, domain["tissue_jitter"]),
                                                 domain.get("tissue_contrast")),
        fat_suppression=_uniform(rng, domain["fat_suppression"]), lesion=_lesion_look(rng, domain["lesion"], seq["b"]),
        mimic=_mimic_look(rng, domain.get("mimics")),
        dtypes=dtypes, gains=gains, adc_unit=adc_unit, adc_background=_choice(rng, st["adc_background"]),
        skull_mm=_uniform(rng, [4.0, 8.0]), scalp_mm=_uniform(rng, [3.0, 7.0]))
