"""MLflow set-up for training runs: where runs go, what is tagged, which files are attached.

Default store: ``sqlite:///mlflow.db`` in the working folder (the project root under ``make``), with
artifacts in ``mlartifacts/`` beside it. MLflow 3 refuses the old ``./mlruns`` file store, and SQLite
needs no server, survives crashes and is what ``mlflow ui`` opens by default. ``MLFLOW_TRACKING_URI``
or the ``tracking_uri`` config key points runs at any other store or server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["resolve_tracking_uri", "mlflow_logger", "log_figure", "log_run_context", "log_checkpoint", "RUN_ID_FILE"]

log = logging.getLogger(__name__)
RUN_ID_FILE = "mlflow_run_id.txt"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The config value, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


def _artifact_location(uri: str) -> str | None:
    """For a local SQLite store: ``mlartifacts/`` beside the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def mlflow_logger(experiment_name: str = "stroke_mri_segmentation", tracking_uri: str | None = None,
                  run_name: str | None = None, output_dir: str | None = None, resume: bool = False) -> MLFlowLogger:
    """Lightning's MLFlowLogger; with ``resume`` it continues the run recorded in ``output_dir``."""
    uri = resolve_tracking_uri(tracking_uri)
    run_id = None
    if resume and output_dir and (Path(output_dir) / RUN_ID_FILE).is_file():
        run_id = (Path(output_dir) / RUN_ID_FILE).read_text().strip()
        log.info("resuming MLflow run %s", run_id)
    return MLFlowLogger(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri,
                        artifact_location=_artifact_location(uri), run_id=run_id)


@rank_zero_only
def log_figure(logger, fig, artifact_file: str) -> None:
    """Attach a matplotlib figure to the logger's MLflow run (no-op for other loggers); closes it."""
    import matplotlib.pyplot as plt

    if isinstance(logger, MLFlowLogger):
        logger.experiment.log_figure(logger.run_id, fig, artifact_file)
    plt.close(fig)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).resolve().parent, check=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "monai", "lightning", "mlflow", "numpy", "nibabel", "SimpleITK", "stroke-pipeline"):
        try:
            out[f"version.{pkg.lower()}"] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@rank_zero_only
def log_checkpoint(logger, path: str | Path) -> None:
    """Attach a checkpoint file to the run under ``checkpoints/``."""
    if isinstance(logger, MLFlowLogger) and path and Path(path).is_file():
        logger.experiment.log_artifact(logger.run_id, str(path), "checkpoints")


@rank_zero_only
def log_run_context(logger, output_dir: str | Path, datalist: str | None = None,
                    config_file: str | None = None) -> None:
    """Tags (git commit, package versions, manifest SHA-256), the config file, and the run id in ``output_dir``."""
    if not isinstance(logger, MLFlowLogger):
        return
    client, run_id = logger.experiment, logger.run_id
    tags = {"git.commit": _git_commit(), **_versions()}
    if datalist and Path(datalist).is_file():
        tags.update({"manifest.path": str(Path(datalist).resolve()), "manifest.sha256": sha256(datalist)})
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if config_file and Path(config_file).is_file():
        client.log_artifact(run_id, str(config_file), "config")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / RUN_ID_FILE).write_text(run_id + "\n")
