"""Each randomisation knob of the synthetic generator does what its name says, in the files a user gets."""

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to
from scipy import ndimage

from pipeline.data.acquisition import Grid, _deep_update, draw_acquisition, load_domain
from pipeline.data.anatomy import HeadPose, lesion_maps, load_anatomy
from pipeline.data.synthetic import _sample, synthesize_subject
from pipeline.data.template_sampling import SupportedMaps
from pipeline.errors import ConfigError


@pytest.fixture(scope="module")
def anatomy():
    return load_anatomy()


def _domain(**changes) -> dict:
    """The random domain with a few knobs pinned; coarse grids keep the tests quick."""
    base = _deep_update(load_domain("random"), {"dwi": {"inplane_mm": [3.0, 3.0]}, "flair": {"inplane_mm": [3.0, 3.0]},
                                                "lesion": {"volume_ml": [30, 40]}})
    return _deep_update(base, changes)


def _ratio(case: dict, key: str) -> float:
    """Mean inside the lesion over the mean of a 2-voxel tissue ring around it, on the mask's grid."""
    mask = case["msk"].get_fdata() > 0
    img = case[key] if key != "flair" else resample_from_to(case["flair"], case["msk"], order=1)
    vol = img.get_fdata()
    brain = case["dwi"].get_fdata() > 0
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask & brain
    return float(vol[mask].mean() / vol[ring].mean())


def test_thick_slices_are_the_average_of_thin_ones(anatomy):
    rng = np.random.default_rng(0)
    pose = HeadPose(rng)
    fraction, depth, _ = lesion_maps(anatomy, rng, volume_ml=(40, 50))
    lesion = SupportedMaps.of(np.stack([fraction, depth, np.zeros_like(fraction)]))  # no mimic
    thick = Grid((80, 96, 6), np.diag([2.0, 2.0, 6.0, 1.0]) + np.array([[0, 0, 0, -80], [0, 0, 0, -110],
                                                                        [0, 0, 0, -10], [0, 0, 0, 0]]), 6.0)
    assert thick.slice_samples == 4
    maps = _sample(anatomy, lesion, pose, thick)
    # the same slab sampled as 4 thin grids at the sub-slice centres, averaged by hand
    thin = []
    for k in range(4):
        affine = thick.affine.copy()
        affine[2, 3] += ((k + 0.5) / 4 - 0.5) * 6.0
        thin.append(_sample(anatomy, lesion, pose, Grid(thick.shape, affine, 1.5)))
    for key in ("gm", "wm", "fraction"):
        expected = np.mean([t[key] for t in thin], axis=0)
        # the sampler follows the head's warp linearly across a slice: equal up to that, far from any one sub-slice
        off_average = np.abs(maps[key] - expected).mean()
        assert off_average < 0.2 * min(np.abs(maps[key] - t[key]).mean() for t in thin), key


def test_thick_slice_masks_keep_the_lesion_volume(anatomy):
    thin = synthesize_subject(anatomy, 0, seed=4, domain=_domain(dwi={"thickness_mm": [3.0, 3.0]}))
    thick = synthesize_subject(anatomy, 0, seed=4, domain=_domain(dwi={"thickness_mm": [6.0, 6.0]}))
    ml = lambda c: c["msk"].get_fdata().sum() * np.prod(c["msk"].header.get_zooms()) / 1000  # noqa: E731
    assert thick["msk"].header.get_zooms()[2] == pytest.approx(6.0)
    assert ml(thick) == pytest.approx(ml(thin), rel=0.2)


def test_lps_and_oblique_files_keep_their_affine(anatomy):
    case = synthesize_subject(anatomy, 1, seed=2, domain=_domain(dwi={"orientations": ["LPI"],
                                                                      "oblique_deg": [12, 12]}))
    acq = case["acquisition"]
    for key in ("dwi", "adc", "msk"):
        img = nib.load(case[key].get_filename()) if case[key].get_filename() else case[key]
        assert np.allclose(img.affine, acq.dwi.affine)
        assert np.allclose(img.get_qform(), acq.dwi.affine, atol=1e-4) and int(img.header["qform_code"]) == 1
    assert nib.aff2axcodes(case["dwi"].affine) == ("L", "P", "I")
    directions = acq.dwi.affine[:3, :3] / acq.dwi.spacing
    angle = np.degrees(np.arccos(np.clip(np.abs(directions).max(0), -1, 1)))
    assert angle.max() > 3  # oblique: no axis lies along a world axis


def test_flair_negative_lesion_is_flair_negative_and_still_bright_on_dwi(anatomy):
    """The same subject with a FLAIR-negative and a FLAIR-positive (1.6x) infarct: FLAIR differs only in the
    lesion, and only in the positive one; DWI and ADC are the same in both."""
    negative = synthesize_subject(anatomy, 0, seed=1, domain=_domain(lesion={"flair_negative": 1.0, "graded": 0.0,
                                                                             "flair_ratio": [1.6, 1.6]}))
    positive = synthesize_subject(anatomy, 0, seed=1, domain=_domain(lesion={"flair_negative": 0.0, "graded": 0.0,
                                                                             "flair_ratio": [1.6, 1.6]}))
    assert negative["acquisition"].lesion.flair_ratio == 1.0 and positive["acquisition"].lesion.flair_ratio == 1.6
    for key in ("dwi", "adc", "msk"):
        assert np.array_equal(negative[key].get_fdata(), positive[key].get_fdata()), key
    mask = resample_from_to(positive["msk"], positive["flair"], order=0).get_fdata() > 0
    ratio = positive["flair"].get_fdata() / np.maximum(negative["flair"].get_fdata(), 1)
    brain = negative["flair"].get_fdata() > np.percentile(negative["flair"].get_fdata(), 50)
    assert 1.3 < np.median(ratio[mask & brain]) < 1.7
    assert 0.97 < np.median(ratio[~mask & brain]) < 1.03
    assert _ratio(negative, "dwi") > 1.2 and _ratio(negative, "adc") < 0.85


def test_lesion_ratios_follow_the_signal_model(anatomy):
    # tissue contrast off: the ring around the lesion mixes grey and white matter, whose contrast it randomises
    domain = _domain(lesion={"dwi_ratio": [2.4, 2.4], "adc_ratio": [0.5, 0.5], "graded": 0.0}, snr=[60, 60])
    domain.pop("tissue_contrast")
    case = synthesize_subject(anatomy, 0, seed=3, domain=domain)
    look = case["acquisition"].lesion
    assert look.dwi_ratio == pytest.approx(2.4) and look.adc_ratio == pytest.approx(0.5)
    # partial volume at the edge and the tissue ring's mix pull the measured ratios towards 1
    assert 1.6 < _ratio(case, "dwi") < 2.6
    assert 0.45 < _ratio(case, "adc") < 0.75


def test_skull_and_background_noise_or_skull_stripped(anatomy):
    stripped = synthesize_subject(anatomy, 2, seed=0, domain=_domain(skull_stripped=1.0))
    full = synthesize_subject(anatomy, 2, seed=0, domain=_domain(skull_stripped=0.0))
    for case, outside_zero in ((stripped, True), (full, False)):
        dwi = case["dwi"].get_fdata()
        corner = dwi[:4, :4, :].ravel()
        assert (np.count_nonzero(corner) == 0) == outside_zero


@pytest.mark.parametrize("dtype, unit", [("uint16", 1e-6), ("float32", 1e-3), ("int16", 1.0)])
def test_storage_dtype_and_adc_units(anatomy, dtype, unit):
    case = synthesize_subject(anatomy, 0, seed=5, domain=_domain(storage={"dtypes": [dtype], "adc_units": [unit]}))
    assert case["dwi"].get_data_dtype() == np.dtype(dtype)
    adc = case["adc"].get_fdata()
    tissue = np.median(adc[case["dwi"].get_fdata() > np.percentile(case["dwi"].get_fdata(), 60)])
    assert 0.4e-3 < tissue * unit < 1.5e-3  # white/grey matter ADC in mm^2/s, whatever the stored unit
    if unit > 1e-5:
        assert case["adc"].get_data_dtype() == np.float32  # integers would round the map away


def test_fixed_domain_is_one_protocol_and_shifted_lies_outside_random():
    fixed, random, shifted = (load_domain(n) for n in ("fixed", "random", "shifted"))
    rng = np.random.default_rng(0)
    assert {draw_acquisition(rng, fixed).dwi.thickness_mm for _ in range(5)} == {2.0}
    assert shifted["dwi"]["oblique_deg"][0] >= random["dwi"]["oblique_deg"][1]
    assert shifted["sequence"]["b"][0] > random["sequence"]["b"][1]
    assert shifted["dwi"]["thickness_mm"][1] > random["dwi"]["thickness_mm"][1]


def test_domain_file_overrides_a_base(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("base: random\nsnr: [5, 6]\ndwi: {thickness_mm: [5, 5]}\n")
    domain = load_domain(path)
    assert domain["snr"] == [5, 6] and domain["dwi"]["thickness_mm"] == [5, 5]
    assert domain["dwi"]["inplane_mm"] == load_domain("random")["dwi"]["inplane_mm"]
    with pytest.raises(ConfigError, match="unknown domain"):
        load_domain("nonsense")


def test_tissue_contrast_makes_which_tissue_is_brighter_no_cue():
    """SynthSeg-style per-tissue factors widen the white/grey-matter contrast range on DWI, ADC and FLAIR; a domain
    without the key keeps its tissue constants."""
    from pipeline.data.synthetic import _signals

    def spread(domain):
        rng = np.random.default_rng(0)
        ratios = []
        for _ in range(300):
            acq = draw_acquisition(rng, domain)
            s = {k: _signals(acq.tissues[k], acq.sequence) for k in ("gm", "wm")}
            ratios.append([s["wm"][k] / s["gm"][k] for k in ("sb", "adc", "flair")])
        return np.percentile(np.array(ratios), [5, 95], axis=0)

    random = load_domain("random")
    plain = {k: v for k, v in random.items() if k != "tissue_contrast"}
    wide, narrow = spread(random), spread(plain)
    assert np.all(wide[1] - wide[0] > 1.2 * (narrow[1] - narrow[0]))  # every channel's range is wider
    assert wide[1][0] > 1.1 > narrow[1][0]  # white matter brighter than grey on DWI in some subjects
    fixed = draw_acquisition(np.random.default_rng(0), load_domain("fixed"))
    assert "s0_factor" not in fixed.tissues["wm"]
