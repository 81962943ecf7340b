"""Inference: load a trained model, segment cases, put the masks back on each scanner's grid.

The names bundle configs refer to (``pipeline.inference.Settings``, ``make_inferer``, ``Postprocess``) stay
importable from here.
"""

from pipeline.inference.grid import like_reference, to_grid
from pipeline.inference.loading import load_model, load_weights
from pipeline.inference.predictor import Postprocess, Predictor, lesion_probability, make_inferer
from pipeline.inference.settings import Settings

__all__ = ["Settings", "Predictor", "Postprocess", "make_inferer", "lesion_probability", "load_model", "load_weights",
           "to_grid", "like_reference"]
