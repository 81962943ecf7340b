"""MONAI's metadata tracking off for the patch augmentation, and back as it was after it.

Nothing after the patch crop reads metadata, and MetaTensor bookkeeping on every op was a quarter of the
augmentation's time. Tracking is process-wide, so the training chain must hand it back even when a step raises.
"""

from __future__ import annotations

from monai import transforms as mt

__all__ = ["TrackMeta", "TrainChain"]


class TrackMeta(mt.Transform):
    """A chain step that turns MONAI's metadata tracking (``monai.data.set_track_meta``) off or back on: MONAI's
    transforms wrap their outputs in MetaTensors while it is on, even when given plain tensors."""

    def __init__(self, on: bool):
        self.on = on

    def __call__(self, data):
        from monai.data import set_track_meta

        set_track_meta(self.on)
        return data


class TrainChain(mt.Compose):
    """The training chain: a Compose that leaves MONAI's metadata tracking as it found it, also when a step
    raises (tracking is process-wide: left off, validation and inference in the same process would lose their
    affines). Not a nested Compose: the steps draw the same random seeds as in a plain one."""

    def __call__(self, input_, start=0, end=None, threading=False, lazy: bool | None = None):
        from monai.data import get_track_meta, set_track_meta

        before = get_track_meta()
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        finally:
            set_track_meta(before)
