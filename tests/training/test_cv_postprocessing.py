"""Cross-validation chooses its post-processing on the masks inference would write."""

import nibabel as nib
import numpy as np

from conftest import BrightIsLesion, partial_volume_scene, rim_call
from pipeline.evaluation.metrics import dice
from pipeline.inference import Predictor, Settings
from pipeline.inference.border import DEFAULT_BORDER, refine_border
from pipeline.training.cross_validation import _refiner, choose_postprocessing


def test_the_threshold_search_scores_masks_with_their_borders_refined():
    image, truth, zooms = partial_volume_scene(shape=(48, 48, 20))
    _, prob = rim_call(truth, zooms, 2.0)  # a network that draws the lesion one 2 mm rim too large
    reference = nib.Nifti1Image(np.zeros(truth.shape, np.float32), np.diag([*zooms, 1.0]))
    refining = Predictor(BrightIsLesion(), Settings(channels=3, border_refinement=DEFAULT_BORDER))
    refine = _refiner(refining, prob, image, reference)
    for threshold in (0.3, 0.5):  # only the box a mask of the grid can reach is kept: the same masks
        mask = prob >= threshold
        assert np.array_equal(refine(mask), refine_border(mask, prob, image, zooms, **DEFAULT_BORDER))
    plain = Predictor(BrightIsLesion(), Settings(channels=3))
    assert _refiner(plain, prob, image, reference) is None

    voxel_ml = float(np.prod(zooms)) / 1000
    refined, _ = choose_postprocessing([(prob, truth, voxel_ml, refine)])
    unrefined, _ = choose_postprocessing([(prob, truth, voxel_ml)])
    assert unrefined["score"] < 1.85 < refined["score"]  # Dice + lesion F1: the rim costs Dice unless refined
    assert dice(refine(prob >= refined["threshold"]), truth) > 0.95
