"""Running a bundle config as an experiment: overrides, checks, the resolved-config snapshot, and ``fit``.

``python -m pipeline train`` and ``python -m monai.bundle run --config_file .../train.yaml`` both end in
:func:`fit`, which the config's ``run`` entry calls.

Example:
    >>> best = train(["bundles/stroke_mri_segmentation/configs/train.yaml"], {"max_epochs": 2})  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import Callback

from pipeline.errors import ConfigError

__all__ = ["DEFAULT_CONFIG", "parse_overrides", "load_workflow", "flatten", "fit", "train", "ValidateOnLastEpoch"]

log = logging.getLogger(__name__)
# the repository's bundle (an editable install keeps the package beside it)
DEFAULT_CONFIG = str(Path(__file__).resolve().parents[2] / "bundles/stroke_mri_segmentation/configs/train.yaml")
PLAIN = (int, float, str, bool, type(None))


def parse_overrides(args: Sequence[str]) -> dict:
    """``["--max_epochs", "2", "--network_def#channels", "[8, 16]"]`` -> ``{"max_epochs": 2, ...}``.

    Values are read as YAML, so numbers, lists, booleans and ``null`` keep their type.
    """
    out, args = {}, list(args)
    while args:
        key = args.pop(0)
        if not key.startswith("--") or len(key) < 3:
            raise ConfigError(f"expected --ID VALUE, got {key!r}")
        key = key[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif args and not args[0].startswith("--"):
            value = args.pop(0)
        else:
            raise ConfigError(f"--{key} needs a value")
        out[key] = yaml.safe_load(value)
    return out


def _check_ids(parser, overrides: dict) -> None:
    """Every override must name an existing ID (or a new key of an existing section): suggest the nearest."""
    known = list(flatten(parser.get()).keys())
    for key in overrides:
        parent = key.rsplit("#", 1)[0] if "#" in key else ""
        try:
            exists = parser.get(key) is not None or key in (parser.get(parent) or {})
        except (KeyError, IndexError, TypeError, ValueError):
            exists = False
        if not exists and not ("#" in key and isinstance(parser.get(parent, None), dict)):
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"; did you mean --{near[0]}?" if near else ""
            raise ConfigError(f"--{key}: no such config ID{hint}")


def load_workflow(config_files: Sequence[str], overrides: dict):
    """A MONAI ConfigWorkflow over the files (later ones merged over earlier) with the overrides applied."""
    from monai.bundle import ConfigWorkflow

    for f in config_files:
        if not Path(f).is_file():
            raise ConfigError(f"config file not found: {f}")
    wf = ConfigWorkflow(config_file=list(config_files), workflow_type=None)
    _check_ids(wf.parser, overrides)
    wf.parser.update(pairs=overrides)
    return wf


def flatten(config, prefix: str = "", sep: str = "#") -> dict:
    """Leaves of a nested config as ``{"network_def#channels": [16, 32], ...}`` (lists of plain values kept)."""
    out = {}
    if isinstance(config, dict):
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}{sep}{k}" if prefix else str(k), sep))
    elif isinstance(config, list) and not all(isinstance(v, PLAIN) for v in config):
        for i, v in enumerate(config):
            out.update(flatten(v, f"{prefix}{sep}{i}", sep))
    else:
        out[prefix] = config
    return out


def _resolved_snapshot(parser) -> dict:
    """The config with overrides applied and top-level references/expressions to plain values resolved."""
    config = parser.get()
    out = dict(config)
    for key, raw in config.items():
        if isinstance(raw, str) and raw[:1] in "@$" and key not in ("run", "initialize", "finalize"):
            try:
                value = parser.get_parsed_content(key)
            except Exception:  # noqa: BLE001 - keep the raw text when it cannot be resolved alone
                continue
            if isinstance(value, PLAIN) or (isinstance(value, list) and all(isinstance(v, PLAIN) for v in value)):
                out[key] = value
    return out


def _new_params(logger, params: dict) -> dict:
    """On resume, MLflow refuses to change a logged param: keep the new ones, tag the changed ones."""
    from lightning.pytorch.loggers import MLFlowLogger

    if not isinstance(logger, MLFlowLogger):
        return params
    logged = logger.experiment.get_run(logger.run_id).data.params
    changed = {k: v for k, v in params.items() if k in logged and logged[k] != str(v)}
    if changed:
        logger.experiment.set_tag(logger.run_id, "resume.changed_params", str(changed)[:5000])
    return {k: v for k, v in params.items() if k not in logged}


def fit(trainer, module, datamodule, output_dir: str, resume: bool = False, datalist: str | None = None,
        config_file: str | None = None) -> str:
    """Log the run's context and parameters, train (from ``output_dir``'s last checkpoint with ``resume``),
    and return the best checkpoint's path."""
    from pipeline.tracking import log_checkpoint, log_run_context

    _one_console_handler()
    output_dir = Path(output_dir)
    log_run_context(trainer.logger, output_dir, datalist, config_file,
                    init_from=getattr(module, "init_from", None))
    if config_file and Path(config_file).is_file() and trainer.logger is not None:
        params = {k.replace("#", "."): v for k, v in flatten(yaml.safe_load(Path(config_file).read_text())).items()
                  if not k.startswith(("run", "initialize", "finalize", "imports", "resume", "config_snapshot"))}
        trainer.logger.log_hyperparams(_new_params(trainer.logger, params) if resume else params)
    last = output_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    if resume and ckpt_path is None:
        log.warning("--resume: no checkpoint at %s, starting from scratch", last)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    scans = getattr(datamodule, "scan_range", None)  # the training cases' voxel sizes, as the checkpoint has them
    if scans and trainer.logger is not None and trainer.is_global_zero:
        params = {f"training_scans.{k}": v for k, v in scans.items()}
        trainer.logger.log_hyperparams(_new_params(trainer.logger, params) if resume else params)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    log_checkpoint(trainer.logger, best)
    score = getattr(trainer.checkpoint_callback, "best_model_score", None)
    log.info("best checkpoint: %s (val/dice %s)", best, f"{float(score):.4f}" if score is not None else "none")
    if trainer.is_global_zero:
        _write_summary(output_dir, trainer, best, score, time.perf_counter() - start)
    return best


class _NoAdvertising(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def _one_console_handler() -> None:
    """Lightning's loggers carry their own console handler; with the root's (the CLI's or MONAI's) every line
    would print twice. Keep the root's, and drop Lightning's advertising tips."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
    _no_advertising()


def _no_advertising() -> None:
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertising) for f in quiet.filters):
        quiet.addFilter(_NoAdvertising())


_no_advertising()  # at import: configs import this module before they build the Trainer, which shows the tip


class ValidateOnLastEpoch(Callback):
    """Validation every ``check_val_every_n_epoch`` epochs *and* on the last one, so a short run (``--max_epochs
    1``) still logs ``val/dice`` and writes a best checkpoint (Lightning alone skips it)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not hasattr(self, "every"):
            self.every = trainer.check_val_every_n_epoch
        last = trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1
        trainer.check_val_every_n_epoch = 1 if last else self.every


def peak_memory_mb() -> dict:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry the parent's over exec), and the
    peak GPU memory when on a GPU."""
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM"):
                out["peak_rss_mb"] = int(line.split()[1]) / 1024
    import torch

    if torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _write_summary(output_dir: Path, trainer, best: str, score, seconds: float) -> None:
    """``summary.json`` beside the checkpoints (and the same figures as MLflow metrics)."""
    from pipeline.io import write_json_atomic

    summary = dict(best_checkpoint=best, best_val_dice=float(score) if score is not None else None,
                   epochs=int(trainer.current_epoch), train_seconds=round(seconds, 1), **peak_memory_mb())
    write_json_atomic(summary, output_dir / "summary.json")
    if trainer.logger is not None:
        trainer.logger.log_metrics({f"summary/{k}": v for k, v in summary.items() if isinstance(v, int | float)})


def train(config_files: Sequence[str], overrides: dict) -> str:
    """Train from bundle config files with overrides; returns the best checkpoint's path."""
    wf = load_workflow(config_files, overrides)
    output_dir = Path(wf.parser.get_parsed_content("output_dir"))
    output_dir.mkdir(parents=True, exist_ok=True)
    snapshot = output_dir / "config.yaml"
    from pipeline.io import atomic_path

    with atomic_path(snapshot) as tmp:
        tmp.write_text(yaml.safe_dump(_resolved_snapshot(wf.parser), sort_keys=False))
    wf.parser["config_snapshot"] = str(snapshot)
    wf.initialize()
    best = wf.run()
    wf.finalize()
    return best
