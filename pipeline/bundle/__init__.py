"""The MONAI bundle: what its inference config runs (:mod:`.segmenter`) and how it is exported (:mod:`.export`).

``pipeline.bundle.cases_of``, ``BundleSegmenter`` and ``load_weights`` are the names bundle configs refer to.
"""

from pipeline.bundle.export import export_bundle, log_bundle_to_run, verify_bundle
from pipeline.bundle.segmenter import BundleSegmenter, cases_of
from pipeline.inference.loading import load_weights

__all__ = ["BundleSegmenter", "cases_of", "load_weights", "export_bundle", "verify_bundle", "log_bundle_to_run"]
