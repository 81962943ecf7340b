"""LightningDataModule over a manifest: fold split, cached deterministic transforms, seeded workers.

Example:
    >>> dm = StrokeDataModule("data_manifests/synthetic.json", train_transforms=..., val_transforms=...,
    ...                       val_fold=0, cache="memory")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose

from pipeline.data.manifest import load_manifest
from pipeline.data.scan_range import scan_range
from pipeline.errors import ConfigError, InputError

__all__ = ["StrokeDataModule", "split_cases", "EpochSampler", "SeededItems", "training_workers"]

log = logging.getLogger(__name__)
CACHES = ("memory", "disk", "none")


def training_workers(num_workers: int | str, cores: int | None = None) -> int:
    """DataLoader workers: the number given, or for ``auto`` none on a machine with two cores or fewer and
    one per four cores (at most four) above that.

    On two cores a worker process takes CPU from the training step's two threads, and they stall on each
    other: 0.28 s a step with one worker against 0.16 s + 0.07 s of loading in the main process (3D U-Net,
    4 patches of 64^3; 33 epochs of the 96-subject data in 340 s against 28 in 393 s).
    """
    if num_workers != "auto":
        if not str(num_workers).isdigit():
            raise ConfigError(f"num_workers must be a whole number or 'auto', not {num_workers!r}")
        return int(num_workers)
    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return 0 if cores <= 2 else min(4, max(1, cores // 4))


def split_cases(cases: list[dict], val_fold: int | None, val_fraction: float = 0.2,
                num_folds: int | None = None) -> tuple[list, list]:
    """Training and validation cases: the manifest's ``val_fold``, or every k-th case when folds are absent.

    ``num_folds`` smaller than the manifest's fold count merges folds as ``fold % num_folds`` (they stay
    stratified by lesion volume).
    """
    if val_fold is not None and all("fold" in c for c in cases):
        fold = (lambda c: c["fold"] % num_folds) if num_folds else (lambda c: c["fold"])
        train = [c for c in cases if fold(c) != val_fold]
        val = [c for c in cases if fold(c) == val_fold]
    else:
        step = max(int(round(1 / val_fraction)), 2)
        val = cases[::step]
        train = [c for c in cases if c not in val]
    if not train or not val:
        raise ConfigError(f"fold {val_fold} leaves {len(train)} training and {len(val)} validation case(s): "
                          "synthesise or add more cases, or choose another --val_fold")
    return train, val


def _seed(*keys: int) -> int:
    return int(np.random.default_rng(list(keys)).integers(2**31 - 1))


class EpochSampler(torch.utils.data.Sampler):
    """Shuffles with (seed, epoch) and yields ``(epoch, index)`` pairs.

    With :class:`SeededItems` every sample's augmentation then depends on (seed, epoch, index) only, so a
    resumed run draws exactly what an uninterrupted one would (bit for bit with the same worker count; with
    another count the draws are the same but multi-threaded resampling may round differently). The epoch
    is read when iteration starts (Lightning restores it before the first resumed epoch's loader is built).
    """

    def __init__(self, size: int, seed: int, epoch_fn):
        self.size, self.seed, self.epoch_fn = size, seed, epoch_fn

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        epoch = int(self.epoch_fn())
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return iter([(epoch, int(i)) for i in order])


class SeededItems(torch.utils.data.Dataset):
    """Wraps a MONAI dataset: item ``(epoch, index)`` is drawn with random transforms seeded by
    (seed, epoch, index)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        self.dataset.transform.set_random_state(seed=_seed(self.seed, epoch, index))
        return self.dataset[index]


class StrokeDataModule(pl.LightningDataModule):
    """Training patches and whole validation volumes from a manifest's ``training`` list.

    Args:
        datalist: manifest JSON path.
        train_transforms, val_transforms: MONAI Compose chains; their deterministic prefix is cached.
        dataset_dir: overrides the manifest's ``dataset_dir``.
        val_fold: the manifest fold held out for validation.
        cache: ``memory`` (CacheDataset), ``disk`` (PersistentDataset in ``cache_dir``) or ``none``.
        batch_size: volumes per training batch (each yields ``num_samples`` patches).
        num_workers: DataLoader workers for training, or ``auto`` (:func:`training_workers`); validation loads
            in the main process.
        seed: with the epoch and the case index, seeds each training sample's augmentation.
        validate: open every training file first and refuse to start when any fails.
        skip_bad_cases: leave failing cases out instead (their ids go to the MLflow tag ``skipped_cases``).
        spatial_dims, volume_index, label_threshold: as the transforms use them (single-slice images, 4D images,
            probabilistic labels), so that training refuses exactly what ``validate`` reports.
        num_folds: merge the manifest's folds into this many (``fold % num_folds``); None keeps them.
    """

    def __init__(self, datalist: str, train_transforms: Compose, val_transforms: Compose,
                 dataset_dir: str | None = None, val_fold: int | None = 0, cache: str = "memory",
                 cache_dir: str | None = None, batch_size: int = 2, num_workers: int | str = 0, seed: int = 0,
                 exclude: list[str] | None = None, validate: bool = True, skip_bad_cases: bool = False,
                 volume_index: int | None = None, label_threshold: float | None = None, num_folds: int | None = None,
                 spatial_dims: int = 3):
        super().__init__()
        if cache not in CACHES:
            raise ConfigError(f"cache must be one of {CACHES}, not {cache!r}")
        self.datalist, self.dataset_dir, self.val_fold = datalist, dataset_dir, val_fold
        self.train_tf, self.val_tf = train_transforms, val_transforms
        self.cache, self.cache_dir = cache, cache_dir
        self.batch_size, self.num_workers, self.seed = batch_size, training_workers(num_workers), seed
        self.exclude = set(exclude or [])
        self.validate, self.skip_bad_cases = validate, skip_bad_cases
        self.volume_index, self.label_threshold, self.spatial_dims = volume_index, label_threshold, spatial_dims
        self.skipped: list[str] = []
        self.num_folds = num_folds
        self.train_ds = self.val_ds = None
        self.scan_range = None

    def _dataset(self, cases: list[dict], transform: Compose, name: str):
        if self.cache == "memory":
            return CacheDataset(cases, transform, num_workers=None, progress=False)
        if self.cache == "disk":
            cache_dir = Path(self.cache_dir or "outputs/cache") / name
            return PersistentDataset(cases, transform, cache_dir=cache_dir)
        return Dataset(cases, transform)

    def _gate(self) -> None:
        """Refuse to train on training cases that fail validation, or leave them out with ``skip_bad_cases``."""
        from pipeline.data.checks import validate_manifest

        errors = [p for p in validate_manifest(self.datalist, self.dataset_dir, splits=("training",),
                                               spatial_dims=self.spatial_dims, volume_index=self.volume_index,
                                               label_threshold=self.label_threshold)
                  if p.severity == "error"]
        bad = sorted({p.case for p in errors})
        if bad and not self.skip_bad_cases:
            raise InputError(f"{len(bad)} training case(s) fail validation, first: {errors[0]}; see them all with "
                             f"`python -m pipeline validate {self.datalist}`, or set skip_bad_cases: true",
                             path=str(self.datalist))
        if bad:
            log.warning("skipping %d training case(s) that fail validation: %s", len(bad), ", ".join(bad))
            self.skipped = bad
            self.exclude |= set(bad)
            logger = self.trainer.logger if self.trainer is not None else None
            if logger is not None and hasattr(logger, "experiment") and hasattr(logger, "run_id"):
                if self.trainer.is_global_zero:  # case ids only, never file paths
                    logger.experiment.set_tag(logger.run_id, "skipped_cases", ",".join(bad)[:5000])

    def setup(self, stage: str | None = None) -> None:
        if self.train_ds is not None:
            return
        # lesion-free training cases are expected: MONAI warns for each of their lesion-centred crops (workers
        # inherit the filter)
        warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)
        if self.validate:
            self._gate()
        cases = [c for c in load_manifest(self.datalist, self.dataset_dir)["training"] if c["id"] not in self.exclude]
        train, val = split_cases(cases, self.val_fold, num_folds=self.num_folds)
        val = [dict(c, case_index=i) for i, c in enumerate(val)]  # lets ranks de-duplicate padded samples
        log.info("fold %s: %d training, %d validation cases", self.val_fold, len(train), len(val))
        self.scan_range = scan_range(c["image"][0] for c in train)  # headers only; saved with checkpoints
        self.train_ds = self._dataset(train, self.train_tf, "train")
        self.val_ds = self._dataset(val, self.val_tf, "val")

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self):
        sampler = EpochSampler(len(self.train_ds), self.seed, self._epoch)
        # persistent workers are safe: each item's randomness comes with its (epoch, index) key
        return DataLoader(SeededItems(self.train_ds, self.seed), batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0, drop_last=False)

    def val_dataloader(self):
        return DataLoader(self.val_ds, batch_size=1, shuffle=False, num_workers=0)
