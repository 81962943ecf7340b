"""The LightningModule: patch training, whole-volume validation with sliding windows, config-driven optimiser.

Example:
    >>> module = LesionSegmentation(network=net, loss=loss, spatial_dims=3, roi_size=[64, 64, 64])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch

from pipeline.evaluation.metrics import dice, lesion_f1
from pipeline.inference.diffusion_check import restricted_diffusion
from pipeline.inference.predictor import keep_confident_lesions, lesion_probability, remove_small_lesions
from pipeline.models.losses import DeepSupervisionLoss

__all__ = ["LesionSegmentation", "auto_precision", "cpu_has_bf16"]

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX: Intel since Cooper Lake, AMD since
    Zen 4), which oneDNN's bf16 convolutions run on."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and probe() for probe in probes)


def auto_precision(precision: str = "auto") -> str:
    """``auto``: bf16 (or fp16) mixed precision on a GPU; bf16 mixed on a CPU with bf16 instructions
    (:func:`cpu_has_bf16`; on 2 cores of an AMD EPYC a training step of the default 3D U-Net takes 0.09 s
    instead of 0.13 s, and `make demo`'s 33 epochs 301 s instead of 352-368 s); else fp32, since without those
    instructions bf16 is converted in software. Any Lightning precision string passes through."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


class LesionSegmentation(pl.LightningModule):
    """Binary lesion segmentation around any MONAI network.

    Args:
        network: the segmentation net (2D or 3D); DynUNet's deep-supervision outputs are handled.
        loss: a MONAI loss set up for ``head``.
        head: ``softmax`` (2 channels) or ``sigmoid`` (1 channel).
        spatial_dims: 3 for patch nets with sliding windows, 2 for slice nets.
        roi_size: window size for validation (the training patch size).
        optimizer: ``{"name": "adamw"|"sgd", "lr", "weight_decay", "momentum"}``.
        scheduler: ``{"name": "cosine"|"poly"|"constant", "warmup_steps", "poly_exponent"}``, stepped per batch.
        inferer: ``{"overlap", "mode", "sw_batch_size"}`` for validation windows.
        threshold: probability above which a voxel is lesion.
        min_lesion_ml: lesions (26-connected) smaller than this are dropped, in validation as in inference.
        min_lesion_peak: lesions whose highest probability is below this are dropped (hysteresis
            thresholding), in validation as in inference; 0: off.
        diffusion_check: arguments of :func:`~pipeline.inference.diffusion_check.restricted_diffusion` (lesions
            not bright on DWI and dark on ADC are dropped), in validation as in inference; None: off.
        border_refinement: arguments of :func:`~pipeline.inference.border.refine_border`, kept with the
            checkpoint for inference, which decides lesion borders on each scan's own grid (validation scores
            the network's grid, where there is nothing finer to decide on); None: off.
        val_images: how many validation cases to draw in the per-epoch picture.
        preprocessing: ``{"channels", "spacing", "register", "n4"}`` of the deterministic transforms, saved
            with checkpoints so inference prepares images the same way.
        seed: with the epoch, reseeds torch's RNG at each epoch start.
        init_from: start from these weights (a bundle folder, model.pt or .ckpt); matching tensors only.
        freeze_encoder_epochs: keep the encoder frozen for this many epochs (-1: throughout, i.e. feature
            extraction; 0: fine-tune everything from the start).
        regularization: ``{"l1", "l2"}``: coefficients of penalties on the sum of absolute / squared
            convolution weights (not biases or norm parameters), added to the loss.
        channels_last: train 3D nets in the channels-last memory layout (1.45x faster training steps on CPU,
            ``make bench``; the layout oneDNN and cuDNN convolutions prefer). Weights save as usual.
    """

    def __init__(self, network: torch.nn.Module, loss: torch.nn.Module, head: str = "softmax", spatial_dims: int = 3,
                 roi_size: Sequence[int] = (64, 64, 64), optimizer: dict | None = None, scheduler: dict | None = None,
                 inferer: dict | None = None, threshold: float = 0.5, min_lesion_ml: float = 0.0, val_images: int = 4,
                 preprocessing: dict | None = None, seed: int = 0, init_from: str | None = None,
                 freeze_encoder_epochs: int = 0, regularization: dict | None = None, channels_last: bool = True,
                 diffusion_check: dict | None = None, min_lesion_peak: float = 0.0,
                 border_refinement: dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["network", "loss"])
        self.network = network
        self.loss = DeepSupervisionLoss(loss)
        self.head, self.spatial_dims, self.roi_size, self.threshold = head, spatial_dims, list(roi_size), threshold
        self.min_lesion_ml, self.min_lesion_peak, self.diffusion_check = min_lesion_ml, min_lesion_peak, diffusion_check
        # unset keys take build_optimizer's / build_scheduler's defaults, which are train.yaml's (tested)
        self.optimizer_cfg, self.scheduler_cfg = dict(optimizer or {}), dict(scheduler or {})
        self.inferer_cfg = {"overlap": 0.25, "mode": "gaussian", "sw_batch_size": 4, **(inferer or {})}
        self.val_images, self.seed = val_images, seed
        self.init_from, self.freeze_encoder_epochs = init_from, freeze_encoder_epochs
        self.penalty = {"l1": 0.0, "l2": 0.0, **(regularization or {})}
        self.memory_format = torch.channels_last_3d if channels_last and spatial_dims == 3 else torch.contiguous_format
        self.network = self.network.to(memory_format=self.memory_format)
        if init_from:
            from pipeline.models.pretrained import load_pretrained

            load_pretrained(self.network, init_from)
        self._pictures: list = []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["network_config"] = getattr(self.network, "build_config", None)
        # the training cases' voxel sizes, so inference can note scans coarser than any it learnt from
        scans = getattr(getattr(self._trainer, "datamodule", None), "scan_range", None)
        if scans:
            checkpoint.setdefault("hyper_parameters", {})["training_scans"] = scans

    def on_train_epoch_start(self) -> None:
        if self.freeze_encoder_epochs:
            from pipeline.models.pretrained import set_encoder_trainable

            frozen = self.freeze_encoder_epochs < 0 or self.current_epoch < self.freeze_encoder_epochs
            set_encoder_trainable(self.network, not frozen)
        # torch's global RNG (dropout) restarts from (seed, epoch): a resumed run repeats an uninterrupted one
        torch.manual_seed(int(np.random.default_rng([self.seed, self.current_epoch]).integers(2**31 - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.contiguous(memory_format=self.memory_format))

    def _target(self, label: torch.Tensor) -> torch.Tensor:
        return (label > 0.5).float()

    def training_step(self, batch, batch_idx):
        logits = self(batch["image"])
        target, weight = self._target(batch["label"]), batch.get("weight")
        size = logits.shape[-self.spatial_dims:]
        if target.shape[-self.spatial_dims:] != size:  # valid-convolution net: score the centre it predicts
            from pipeline.models.classic_unet import centre_crop

            target = centre_crop(target, size)
            weight = centre_crop(weight, size) if weight is not None else None
        loss = self.loss(logits, target, weight)
        n = len(batch["image"])
        if self.penalty["l1"] or self.penalty["l2"]:
            penalty = self.weight_penalty()
            self.log("train/penalty", penalty, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
            loss = loss + penalty
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        return loss

    def weight_penalty(self) -> torch.Tensor:
        """``l1 * sum|w| + l2 * sum w^2`` over the convolution weights (tensors of 3 or more dimensions)."""
        weights = [p for p in self.network.parameters() if p.requires_grad and p.dim() > 2]
        l1 = sum(p.abs().sum() for p in weights) if self.penalty["l1"] else 0.0
        l2 = sum(p.pow(2).sum() for p in weights) if self.penalty["l2"] else 0.0
        return self.penalty["l1"] * l1 + self.penalty["l2"] * l2

    def predict_probability(self, image: torch.Tensor) -> torch.Tensor:
        prob, _ = lesion_probability(self.network, image, self.spatial_dims, self.roi_size, self.head,
                                     **self.inferer_cfg)
        return prob

    def on_validation_epoch_start(self) -> None:
        self._scores: list[tuple[int, float, float]] = []

    def validation_step(self, batch, batch_idx):
        prob = self.predict_probability(batch["image"]).float().cpu().numpy()
        affine = np.asarray(batch["image"].affine[0]) if hasattr(batch["image"], "affine") else np.eye(4)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)  # whole volumes, also for 2D nets
        if self.diffusion_check:
            images = torch.as_tensor(batch["image"]).float().cpu().numpy()
            prob = np.stack([restricted_diffusion(p[0], image, self.threshold, spacing, **self.diffusion_check)[0][None]
                             for p, image in zip(prob, images, strict=True)])
        pred = prob >= self.threshold
        if self.min_lesion_peak > 0:
            pred = np.stack([keep_confident_lesions(m[0], p[0], self.min_lesion_peak)[None]
                             for m, p in zip(pred, prob, strict=True)])
        if self.min_lesion_ml > 0:
            voxel_ml = float(np.prod(spacing)) / 1000
            pred = np.stack([remove_small_lesions(p[0], voxel_ml, self.min_lesion_ml)[None] for p in pred])
        truth = (batch["label"] > 0.5).cpu().numpy()
        index = batch.get("case_index", torch.arange(len(pred)) + batch_idx * len(pred))
        for i in range(len(pred)):
            self._scores.append((int(index[i]), dice(pred[i, 0], truth[i, 0]), lesion_f1(pred[i, 0], truth[i, 0])))
            if len(self._pictures) < self.val_images:
                self._pictures.append(_picture(batch["image"][i, 0].cpu().numpy(), truth[i, 0], pred[i, 0]))

    def _epoch_scores(self) -> torch.Tensor:
        """(case index, Dice, F1) of every validation case, gathered from all ranks, each case once.

        DistributedSampler pads ranks to equal length with repeated cases; averaging per-rank means
        would count those twice, so the mean is taken over unique case indices instead.
        """
        local = torch.tensor(self._scores or [(-1, 0.0, 0.0)], dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            sizes = self.all_gather(torch.tensor(len(local), device=self.device)).flatten()
            padded = torch.full((int(sizes.max()), 3), -1.0, dtype=torch.float64, device=self.device)
            padded[: len(local)] = local
            local = self.all_gather(padded).reshape(-1, 3)
        scores = {int(i): (d, f) for i, d, f in local.tolist() if i >= 0}
        return torch.tensor(list(scores.values()), dtype=torch.float64).reshape(-1, 2)

    def on_validation_epoch_end(self) -> None:
        scores = self._epoch_scores()
        if len(scores):  # the same value on every rank: no further reduction
            self.log("val/dice", float(scores[:, 0].mean()), prog_bar=True, sync_dist=True)
            self.log("val/lesion_f1", float(scores[:, 1].mean()), sync_dist=True)
            self.log("val/cases", float(len(scores)), sync_dist=True)
        pictures, self._pictures = self._pictures, []
        if not pictures or not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        from pipeline.figures import overlay_grid
        from pipeline.tracking import log_figure

        fig = overlay_grid(pictures, f"validation, epoch {self.current_epoch}: truth (green), prediction (red)")
        log_figure(self.logger, fig, f"validation/epoch_{self.current_epoch:03d}.png")

    def configure_optimizers(self):
        from pipeline.training.optim import build_optimizer, build_scheduler

        # every parameter: frozen ones get no gradient, so the optimiser leaves them alone
        opt = build_optimizer(self.parameters(), **self.optimizer_cfg)
        sched = build_scheduler(opt, total_steps=int(self.trainer.estimated_stepping_batches), **self.scheduler_cfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _picture(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> tuple:
    """The axial slice (last axis) with the most truth (else prediction, else middle) for one case."""
    from pipeline.figures import lesion_slice

    if truth.ndim != 3:  # 2D case: already a slice
        return image, truth, pred
    z = lesion_slice(truth, pred)
    return image[..., z], truth[..., z], pred[..., z]
