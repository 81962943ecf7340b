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

__all__ = ["client", "resolve_tracking_uri", "mlflow_logger", "describe_run", "log_figure", "log_run_context",
           "log_checkpoint", "RUN_ID_FILE", "server_unreachable", "sync_runs", "experiment_id"]

log = logging.getLogger(__name__)
RUN_ID_FILE = "mlflow_run_id.txt"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The config value, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and _is_file_store(uri) and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        from pipeline.errors import ConfigError

        raise ConfigError(f"tracking_uri {uri} is an MLflow file store, which MLflow 3 refuses: use "
                          "sqlite:///FOLDER/mlflow.db or http://HOST:PORT (old runs: mlflow migrate-filestore; "
                          "or set MLFLOW_ALLOW_FILE_STORE=true)")
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


def _is_file_store(uri: str) -> bool:
    """``file:...`` or a plain folder path (``./mlruns``); not ``databricks`` and other scheme-less names."""
    if uri.startswith("file:"):
        return True
    return "://" not in uri and ("/" in uri or "\\" in uri or uri.startswith(".") or Path(uri).name == "mlruns")


def client(tracking_uri: str | None = None):
    """An MLflow client of the store :func:`resolve_tracking_uri` gives (the only place clients are made)."""
    from mlflow import MlflowClient

    return MlflowClient(resolve_tracking_uri(tracking_uri))


def _artifact_location(uri: str) -> str | None:
    """For a local SQLite store: ``mlartifacts/`` beside the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


OFFLINE_DB = "mlflow_offline.db"


def server_unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why an http(s) tracking server cannot be reached (None when it answers, or for local stores)."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout)
        return None
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def describe_run(network: str = "unet", spatial_dims: int = 3, loss: str = "dice_ce", spacing=None,
                 datalist: str | None = None, max_epochs: int | None = None, seed: int = 0) -> str:
    """A run name that tells what was run, e.g. ``unet3d-dice_ce-2mm-synthetic-e30-s0``."""
    if spacing is None:
        size = "native"
    else:
        values = [f"{float(v):g}" for v in spacing]
        size = (values[0] if len(set(values)) == 1 else "x".join(values)) + "mm"
    parts = [f"{network}{spatial_dims}d", loss, size, Path(datalist).stem if datalist else None,
             f"e{max_epochs}" if max_epochs else None, f"s{seed}"]
    return "-".join(str(p) for p in parts if p)


def mlflow_logger(experiment_name: str = "stroke_mri_segmentation", tracking_uri: str | None = None,
                  run_name: str | None = None, output_dir: str | None = None, resume: bool = False,
                  tracking_required: bool = False, tags: dict | None = None,
                  describe: dict | None = None) -> MLFlowLogger:
    """Lightning's MLFlowLogger; with ``resume`` it continues the run recorded in ``output_dir``.

    Without ``run_name`` the run is named by :func:`describe_run` from ``describe`` (network, loss, spacing,
    data, epochs, seed) rather than MLflow's random words.

    An unreachable tracking server stops the run before training when ``tracking_required``; otherwise
    the run is tracked in ``output_dir/mlflow_offline.db`` (said once), to copy over later with
    ``python -m pipeline mlflow-sync``.
    """
    from pipeline.errors import ConfigError

    uri = resolve_tracking_uri(tracking_uri)
    reason = server_unreachable(uri)
    if reason is not None:
        if tracking_required:
            raise ConfigError(f"MLflow server {uri} is unreachable ({reason}) and tracking_required is true")
        offline = Path(output_dir or ".").resolve() / OFFLINE_DB
        log.warning("MLflow server %s is unreachable (%s): tracking this run in sqlite:///%s instead; copy it "
                    "later with: python -m pipeline mlflow-sync --source sqlite:///%s --target %s",
                    uri, reason, offline, offline, uri)
        offline.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{offline}"
    run_id = None
    if resume and output_dir and (Path(output_dir) / RUN_ID_FILE).is_file():
        run_id = (Path(output_dir) / RUN_ID_FILE).read_text().strip()
        log.info("resuming MLflow run %s", run_id)
    run_name = run_name or describe_run(**(describe or {}))
    return MLFlowLogger(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri, tags=tags or None,
                        artifact_location=_artifact_location(uri), run_id=run_id)


def experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a local SQLite store) when missing."""
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name, _artifact_location(uri))


@rank_zero_only
def log_figure(logger, fig, artifact_file: str) -> None:
    """Attach a matplotlib figure to the logger's MLflow run (no-op for other loggers); closes it."""
    from pipeline.figures import pyplot

    if isinstance(logger, MLFlowLogger):
        logger.experiment.log_figure(logger.run_id, fig, artifact_file)
    pyplot().close(fig)


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
                    config_file: str | None = None, init_from: str | None = None) -> None:
    """Tags (git commit, package versions, manifest and source-model SHA-256), the config file, and the run
    id in ``output_dir``."""
    if not isinstance(logger, MLFlowLogger):
        return
    client, run_id = logger.experiment, logger.run_id
    tags = {"git.commit": _git_commit(), **_versions()}
    if init_from:
        from pipeline.models.pretrained import weights_file

        source = weights_file(init_from)
        tags.update({"init_from": str(init_from), "init_from.sha256": sha256(source)})
    if datalist and Path(datalist).is_file():
        tags.update({"manifest.name": Path(datalist).name, "manifest.sha256": sha256(datalist)})
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if config_file and Path(config_file).is_file():
        client.log_artifact(run_id, str(config_file), "config")
        import yaml

        fingerprint = (yaml.safe_load(Path(config_file).read_text()) or {}).get("plan_fingerprint")
        if fingerprint and Path(fingerprint).is_file():  # a planned run: the data it was planned from
            client.log_artifact(run_id, str(fingerprint), "plan")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / RUN_ID_FILE).write_text(run_id + "\n")


def sync_runs(source: str, target: str, experiment_name: str | None = None) -> list[str]:
    """Copy every run of ``source`` (e.g. an offline SQLite store) into ``target``: params, tags, metric
    histories and artifacts; returns the new run ids. Runs copied before (tag ``synced_from``) are skipped."""
    import tempfile

    from mlflow.entities import Metric, Param, RunTag

    src, dst = client(source), client(target)
    copied = []
    for exp in src.search_experiments():
        if experiment_name and exp.name != experiment_name:
            continue
        target_exp = dst.get_experiment_by_name(exp.name)
        exp_id = target_exp.experiment_id if target_exp else dst.create_experiment(exp.name)
        done = {r.data.tags.get("synced_from") for r in dst.search_runs([exp_id])}
        for run in src.search_runs([exp.experiment_id]):
            if run.info.run_id in done:
                continue
            new = dst.create_run(exp_id, run_name=run.info.run_name,
                                 tags={**run.data.tags, "synced_from": run.info.run_id})
            rid = new.info.run_id
            params = [Param(k, v) for k, v in run.data.params.items()]
            metrics = [Metric(m.key, m.value, m.timestamp, m.step) for key in run.data.metrics
                       for m in src.get_metric_history(run.info.run_id, key)]
            for i in range(0, max(len(params), len(metrics), 1), 100):
                dst.log_batch(rid, metrics=metrics[i:i + 100], params=params[i:i + 100],
                              tags=[RunTag("synced", "true")] if i == 0 else [])
            with tempfile.TemporaryDirectory() as tmp:
                local = src.download_artifacts(run.info.run_id, "", tmp)
                if any(Path(local).iterdir()):
                    dst.log_artifacts(rid, local)
            dst.set_terminated(rid, run.info.status)
            copied.append(rid)
    return copied
