"""Lesion borders decided on the scan's own grid by the lesion share its DWI and ADC show."""

import numpy as np
import pytest
import yaml
from scipy import ndimage

from conftest import ROOT, BrightIsLesion, oblique_lps_case, partial_volume_scene, rim_call
from pipeline.evaluation.metrics import dice
from pipeline.inference import Predictor, Settings
from pipeline.inference.border import DEFAULT_BORDER, adc_share, border_settings, refine_border


@pytest.mark.parametrize("grow_mm", [2.0, -1.5])
def test_a_rim_the_network_over_or_under_calls_is_put_at_half_the_lesion(grow_mm):
    image, truth, zooms = partial_volume_scene()
    mask, prob = rim_call(truth, zooms, grow_mm)
    refined = refine_border(mask, prob, image, zooms, **DEFAULT_BORDER)
    assert dice(mask, truth) < 0.85
    assert dice(refined, truth) > 0.95
    assert refined.dtype == bool and refined.shape == truth.shape and mask.sum() != refined.sum()


def test_a_bright_voxel_apart_from_the_lesion_is_not_a_lesion_of_its_own():
    """Noise in the band can reach half the lesion's contrast; cut off from its lesion it is dropped, not counted
    as a second lesion (lesion-wise F1 depends on it)."""
    image, truth, zooms = partial_volume_scene()
    mask, prob = rim_call(truth, zooms, 2.0)
    outside = ndimage.distance_transform_edt(~mask, sampling=zooms)
    speck = tuple(np.argwhere((outside > 1.5) & (outside <= 2.0))[0])  # in the band, 3.5-4 mm from the truth
    image[(0, *speck)], image[(1, *speck)] = 180, 450  # as bright on DWI and dark on ADC as the lesion
    refined = refine_border(mask, prob, image, zooms)
    assert not refined[speck] and dice(refined, truth) > 0.95


def test_gain_and_unit_of_the_file_do_not_change_the_border():
    image, truth, zooms = partial_volume_scene()
    mask, prob = rim_call(truth, zooms, 2.0)
    stored = image * np.array([3.7, 1e-3, 1.0], np.float32)[:, None, None, None]  # DWI gain, ADC in mm^2/s
    assert np.array_equal(refine_border(mask, prob, image, zooms), refine_border(mask, prob, stored, zooms))


def test_an_adc_stored_without_its_zero_is_read_linearly():
    """The partial-volume model needs the ADC's ratios; a file z-scored or shifted below zero has none, and its
    share is then read as a straight line, which an offset does not change."""
    image, truth, zooms = partial_volume_scene()
    mask, prob = rim_call(truth, zooms, 2.0)
    shifted = image - np.array([0, 1000, 0], np.float32)[:, None, None, None]  # tissue ADC -200
    assert np.array_equal(refine_border(mask, prob, shifted, zooms), refine_border(mask, prob, image, zooms, b_adc=0))


@pytest.mark.parametrize(("dwi_ratio", "adc_ratio", "b_adc"), [(2.0, 0.6, 0.8), (2.0, 0.6, 1.5), (1.3, 0.85, 1.2),
                                                               (2.5, 0.45, 1.2), (1.5, 0.75, 1.0)])
def test_a_half_lesion_voxel_of_a_fitted_adc_reads_half(dwi_ratio, adc_ratio, b_adc):
    """S0 and S_b add up over a voxel's two parts and the scanner fits the ADC from them, so read as a straight
    line a half-lesion voxel looks more than half lesion; the two-part model reads it at half, whatever the b-value
    and the tissue's ADC (b x ADC 0.8-1.5, taken as 1.0)."""
    e_tissue, e_lesion = np.exp(b_adc), np.exp(b_adc * adc_ratio)  # S0 / S_b of each part
    half = np.log((0.5 * e_tissue + 0.5 * dwi_ratio * e_lesion) / (0.5 + 0.5 * dwi_ratio)) / b_adc  # ADC / tissue's
    assert (half - 1) / (adc_ratio - 1) > 0.54  # linear
    assert adc_share(np.array([half]), 1.0, adc_ratio, dwi_ratio, 1.0)[0] == pytest.approx(0.5, abs=0.03)
    assert adc_share(np.array([1.0, adc_ratio]), 1.0, adc_ratio, dwi_ratio, 1.0) == pytest.approx([0, 1], abs=1e-6)


@pytest.mark.parametrize("grow_mm", [2.0, -1.5])
def test_the_smoothed_share_decides_a_noisy_scan_better(grow_mm):
    image, truth, zooms = partial_volume_scene(noise=6.0)  # a lesion 4.4 noise levels above its tissue on DWI
    mask, prob = rim_call(truth, zooms, grow_mm)
    wrong = [int((refine_border(mask, prob, image, zooms, smooth_mm=mm) != truth).sum()) for mm in (0.0, 1.0)]
    assert wrong[1] <= 0.6 * wrong[0]


def test_only_voxels_within_the_band_change():
    image, truth, zooms = partial_volume_scene()
    mask, prob = rim_call(truth, zooms, 5.0)  # far too large: the band reaches part of the way back
    refined = refine_border(mask, prob, image, zooms, band_mm=2.0)
    outside = ndimage.distance_transform_edt(~mask, sampling=zooms)
    inside = ndimage.distance_transform_edt(mask, sampling=zooms)
    far = (outside > 2.0) | (inside > 2.0)
    assert np.array_equal(refined[far], mask[far])
    assert dice(refined, truth) > dice(mask, truth)


def test_a_lesion_without_contrast_or_without_tissue_around_keeps_its_border():
    image, truth, zooms = partial_volume_scene()
    mask, prob = rim_call(truth, zooms, 2.0)
    flat = image.copy()
    flat[0], flat[1] = 100, 800  # nothing to see on DWI or ADC
    assert np.array_equal(refine_border(mask, prob, flat, zooms), mask)
    wrong_way = image * np.array([-1, -1, 1], np.float32)[:, None, None, None]  # darker DWI, brighter ADC
    assert np.array_equal(refine_border(mask, prob, wrong_way, zooms), mask)
    everything = np.ones_like(mask)
    assert np.array_equal(refine_border(everything, np.full(mask.shape, 0.97, np.float32), image, zooms), everything)
    assert np.array_equal(refine_border(mask, prob, image[2:], zooms), mask)  # a model without DWI and ADC


def test_the_setting_travels_from_the_training_config_to_inference():
    config = yaml.safe_load((ROOT / "bundles/stroke_mri_segmentation/configs/train.yaml").read_text())
    inference = yaml.safe_load((ROOT / "bundles/stroke_mri_segmentation/configs/inference.yaml").read_text())
    border = config["lightning_module"]["border_refinement"]
    hparams = dict(spatial_dims=3, roi_size=[64, 64, 64], head="softmax", border_refinement=border)
    assert Settings.from_hparams(hparams).border_refinement == border == inference["settings"]["border_refinement"]
    assert border == DEFAULT_BORDER == border_settings(True)  # `border_refinement: true` takes the defaults
    assert inference["preprocessing"]["keep_native"] == "$bool(@settings#border_refinement)"


def test_the_predictor_decides_borders_on_an_oblique_thick_slice_scan(tmp_path):
    """The channels kept on the DWI's own grid (LPS, oblique, 4.5 mm slices) meet the mask there: the blob's
    sharp edge is found, and the mask is no worse than the network's alone."""
    case, blob = oblique_lps_case(tmp_path)
    settings = Settings(roi_size=[32, 32, 32], channels=2, spacing=[2.0, 2.0, 2.0])
    plain = Predictor(BrightIsLesion(), settings).predict_case(case)["mask"] > 0
    refined_predictor = Predictor(BrightIsLesion(), settings.replace(border_refinement=DEFAULT_BORDER))
    refined = refined_predictor.predict_case(case)["mask"] > 0
    assert "native" in refined_predictor.preprocess(dict(case))
    assert "native" not in Predictor(BrightIsLesion(), settings).preprocess(dict(case))
    assert dice(refined, blob) > max(dice(plain, blob), 0.95)
