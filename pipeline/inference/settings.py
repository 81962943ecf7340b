"""Everything inference needs besides the weights, defined once.

A checkpoint carries the training config's values (:meth:`Settings.from_hparams`); a bundle's
``configs/inference.yaml`` lists them in its ``settings`` block, which its other components refer to.

Example:
    >>> Settings(spacing=(1.0, 1.0, 1.0)).overlap
    0.25
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["Settings", "SETTINGS_FIELDS"]


@dataclasses.dataclass
class Settings:
    """Preprocessing, window, runtime and post-processing settings of a trained model."""

    spatial_dims: int = 3
    roi_size: Sequence[int] = (64, 64, 64)
    head: str = "softmax"
    channels: int = 3
    spacing: Sequence[float] | None = (2.0, 2.0, 2.0)
    register: bool = False
    n4: bool = False
    volume_index: int | None = None
    normalise: dict | None = None  # percentiles and head-mask block of the normalisation (None: its defaults)
    optional_channels: Sequence[int] = ()  # channels a case may lack (null): blank, as channel dropout trained for
    crop_to_head: bool = True
    overlap: float = 0.25  # measured (make bench): Dice as at 0.5 on the synthetic test split, 1.3x faster
    mode: str = "gaussian"
    sw_batch_size: int = 8  # measured (make bench): 8 windows a call keep both OpenVINO streams busy
    skip_empty: bool = True
    runtime: str = "auto"
    tta_axes: Sequence[int] = ()
    threshold: float = 0.5
    min_lesion_ml: float = 0.0
    min_lesion_peak: float = 0.0  # keep lesions whose highest probability reaches this (hysteresis); 0: all
    # drop lesions that are not brighter on DWI and darker on ADC than their surroundings
    # (pipeline.inference.diffusion_check; None or False: off)
    diffusion_check: dict | bool | None = None
    # decide each lesion's border on the scan's own grid by the lesion share of its DWI and ADC
    # (pipeline.inference.border; None or False: off)
    border_refinement: dict | bool | None = None
    inside_head_only: bool = True
    stitch_on_cpu_above_voxels: int = 32_000_000
    # voxel sizes of the training cases (pipeline.data.scan_range); coarser cases are noted in volumes.csv
    training_scans: dict | None = None

    @classmethod
    def from_hparams(cls, hparams: dict) -> Settings:
        """From a training checkpoint's hyper-parameters (the LightningModule's arguments)."""
        pre = hparams.get("preprocessing") or {}
        inferer = hparams.get("inferer") or {}
        return cls(spatial_dims=hparams["spatial_dims"], roi_size=list(hparams["roi_size"]), head=hparams["head"],
                   channels=pre.get("channels", 3), spacing=pre.get("spacing"), register=pre.get("register", False),
                   n4=pre.get("n4", False), volume_index=pre.get("volume_index"), normalise=pre.get("normalise"),
                   optional_channels=list(pre.get("optional_channels") or []),
                   mode=inferer.get("mode", "gaussian"), threshold=hparams.get("threshold", 0.5),
                   min_lesion_ml=hparams.get("min_lesion_ml", 0.0),
                   min_lesion_peak=hparams.get("min_lesion_peak", 0.0), diffusion_check=hparams.get("diffusion_check"),
                   border_refinement=hparams.get("border_refinement"), training_scans=hparams.get("training_scans"))

    def replace(self, **changes) -> Settings:
        """A copy with ``changes`` (None values ignored, as unset command-line options)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_config(self) -> dict:
        """Plain values, as a config file holds them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(Settings))
