"""The restricted-diffusion check: a lesion must be bright on DWI and dark on ADC against its surroundings."""

import numpy as np
import pytest
import yaml

from conftest import ROOT
from pipeline.inference import Settings
from pipeline.inference.diffusion_check import DEFAULT_CHECK, restricted_diffusion


def _scene(shape=(48, 48, 24)):
    """A head of normal tissue (z-scores with some noise) and four predicted blobs of known look."""
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.3, (3, *shape)).astype(np.float32)
    image[:, :2] = 0  # outside the head
    prob = np.zeros(shape, np.float32)
    blobs = {"infarct": ((10, 10, 8), 1.5, -1.0),       # bright DWI, dark ADC: kept
             "shine_through": ((10, 35, 8), 1.5, 0.0),   # bright DWI, normal ADC: dropped
             "dark_on_both": ((35, 10, 8), -0.5, -1.2),  # ADC dark but DWI darker than its ring: dropped
             "faint_infarct": ((35, 35, 16), 0.3, -0.4)}  # low contrast, both right: kept
    for (x, y, z), dwi, adc in blobs.values():
        region = (slice(x - 3, x + 3), slice(y - 3, y + 3), slice(z - 2, z + 2))
        image[(0, *region)] += dwi
        image[(1, *region)] += adc
        prob[region] = 0.9
    return prob, image, blobs


def _kept(prob, blobs):
    return {name for name, ((x, y, z), _, _) in blobs.items() if prob[x, y, z] >= 0.5}


def test_only_lesions_bright_on_dwi_and_dark_on_adc_are_kept():
    prob, image, blobs = _scene()
    out, dropped = restricted_diffusion(prob, image, 0.5, (2.0, 2.0, 2.0))
    assert _kept(out, blobs) == {"infarct", "faint_infarct"} and dropped == 2
    assert np.array_equal(out[prob < 0.5], prob[prob < 0.5]) and prob.max() == np.float32(0.9)  # input untouched


def test_the_thresholds_are_the_rule():
    prob, image, blobs = _scene()
    strict, _ = restricted_diffusion(prob, image, 0.5, (2.0, 2.0, 2.0), min_adc_drop=0.6)
    assert _kept(strict, blobs) == {"infarct"}
    lenient, _ = restricted_diffusion(prob, image, 0.5, (2.0, 2.0, 2.0), min_adc_drop=-10, min_dwi_rise=-10)
    assert _kept(lenient, blobs) == set(blobs)


def test_fluid_beside_a_lesion_is_not_its_ring():
    """A DWI-bright mimic with tissue ADC beside a ventricle (ADC 3x the head's median: +2 in median units) is
    no darker than the tissue around it; an infarct beside the same fluid is."""
    shape = (48, 48, 24)
    image = np.random.default_rng(1).normal(0, 0.05, (3, *shape)).astype(np.float32)
    image[1, 20:28] = 2.0  # a slab of CSF across the head, ADC only (DWI stays at tissue level)
    prob = np.zeros(shape, np.float32)
    blobs = {"mimic": ((15, 12, 12), 1.0, 0.0), "infarct": ((15, 36, 12), 1.0, -0.4)}
    for (x, y, z), dwi, adc in blobs.values():
        region = (slice(x - 3, x + 3), slice(y - 3, y + 3), slice(z - 2, z + 2))
        image[(0, *region)] += dwi
        image[(1, *region)] += adc
        prob[region] = 0.9
    fluid_in_ring, _ = restricted_diffusion(prob, image, 0.5, (2.0, 2.0, 2.0), max_ring_adc=None)
    assert _kept(fluid_in_ring, blobs) == {"mimic", "infarct"}  # the CSF lifts the ring's mean ADC
    tissue_ring, dropped = restricted_diffusion(prob, image, 0.5, (2.0, 2.0, 2.0), **DEFAULT_CHECK)
    assert _kept(tissue_ring, blobs) == {"infarct"} and dropped == 1


def test_models_without_an_adc_channel_and_empty_predictions_are_left_alone():
    prob, image, _ = _scene()
    out, dropped = restricted_diffusion(prob, image[:1], 0.5, (1.0, 1.0, 1.0))
    assert out is prob and dropped == 0
    empty = np.zeros_like(prob)
    assert restricted_diffusion(empty, image, 0.5, (1.0, 1.0, 1.0))[1] == 0


def test_a_lesion_without_surrounding_tissue_is_kept():
    prob, image, _ = _scene((12, 12, 6))
    prob[:] = 0
    prob[2:, :, :] = 0.9  # the whole head
    assert restricted_diffusion(prob, image, 0.5, (2.0, 2.0, 2.0))[1] == 0


def test_the_check_travels_from_the_training_config_to_inference():
    config = yaml.safe_load((ROOT / "bundles/stroke_mri_segmentation/configs/train.yaml").read_text())
    inference = yaml.safe_load((ROOT / "bundles/stroke_mri_segmentation/configs/inference.yaml").read_text())
    check = config["lightning_module"]["diffusion_check"]
    hparams = dict(spatial_dims=3, roi_size=[64, 64, 64], head="softmax", diffusion_check=check)
    assert Settings.from_hparams(hparams).diffusion_check == check == inference["settings"]["diffusion_check"]
    assert check == DEFAULT_CHECK  # what the benchmark runs
    restricted_diffusion(*_scene()[:2], 0.5, (2.0, 2.0, 2.0), **check)  # every key is an argument


@pytest.mark.slow
def test_a_trained_checkpoint_carries_the_check(tiny_checkpoint):
    from pipeline.inference import Predictor

    assert Predictor.from_path(tiny_checkpoint, device="cpu", runtime="torch").settings.diffusion_check["adc"] == 1
