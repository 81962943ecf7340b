"""What a bundle's ``configs/inference.yaml`` runs: its ``evaluator`` segments ``dataset.data`` into ``output_dir``.

``python -m monai.bundle run --config_file configs/inference.yaml --bundle_root . --datalist CASES.json
--output_dir OUT`` instantiates :class:`BundleSegmenter` with the config's ``network``, ``dataset`` (whose
transform is ``preprocessing``), ``inferer``, ``postprocessing`` and ``settings``, and calls ``run``.

Example:
    >>> cases = cases_of("cases.json", "testing")  # doctest: +SKIP
"""

from __future__ import annotations

import logging

from pipeline.errors import ConfigError, PipelineError
from pipeline.inference.batch import segment_cases
from pipeline.inference.predictor import Predictor

__all__ = ["BundleSegmenter", "cases_of"]

log = logging.getLogger(__name__)


def cases_of(datalist: str | None, split: str = "testing", dataset_dir: str | None = None) -> list[dict]:
    """The cases of a manifest split, with absolute paths (``datalist`` is required)."""
    from pipeline.data.manifest import select_cases

    if not datalist:
        raise ConfigError("no datalist: pass --datalist CASES.json (a MONAI datalist / manifest)")
    return select_cases(datalist, split, dataset_dir)


class BundleSegmenter:
    """The inference config's ``evaluator``: segments ``dataset.data`` into ``output_dir``.

    Raises a PipelineError after all cases when any failed, so ``monai.bundle run`` exits non-zero.
    """

    def __init__(self, network, dataset, inferer, postprocessing, settings, output_dir: str, device="cpu",
                 overwrite: bool = False, save_prob: bool = False, save_unc: bool = False, onnx_model=None,
                 lesion_table: bool = True, mni_location: bool = True, dicom_seg: bool = False):
        self.predictor = Predictor(network, settings, device, preprocessing=dataset.transform, inferer=inferer,
                                   postprocessing=postprocessing, onnx_model=onnx_model)
        self.cases, self.output_dir = list(dataset.data), output_dir
        self.overwrite, self.save_prob, self.save_unc = overwrite, save_prob, save_unc
        self.lesion_table, self.mni_location, self.dicom_seg = lesion_table, mni_location, dicom_seg

    def run(self):
        report = segment_cases(self.predictor, self.cases, self.output_dir, self.overwrite, self.save_prob,
                               self.save_unc, lesion_table=self.lesion_table, mni=self.mni_location,
                               dicom_seg=self.dicom_seg)
        log.info("%d written, %d kept, %d failed -> %s", len(report.written), len(report.skipped),
                 len(report.failures), self.output_dir)
        if report.failures:
            raise PipelineError(f"{len(report.failures)} case(s) failed: "
                                + "; ".join(f"{c}: {r}" for c, r in report.failures))
        return report
