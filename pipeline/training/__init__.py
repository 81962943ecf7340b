"""Training: the LightningModule, experiments from bundle configs, cross-validation, config studies.

``pipeline.training.LesionSegmentation`` and ``auto_precision`` stay importable from here for configs.
"""

from pipeline.training.module import LesionSegmentation, auto_precision

__all__ = ["LesionSegmentation", "auto_precision"]
