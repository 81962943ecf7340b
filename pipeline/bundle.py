"""The MONAI bundle: inference entry point, export from a checkpoint, and verification.

``configs/inference.yaml`` instantiates :class:`BundleSegmenter` (its ``evaluator``), which runs the
project's :class:`~pipeline.inference.Predictor` with the config's ``network_def``, ``preprocessing``,
``inferer`` and ``postprocessing``. :func:`export_bundle` writes ``models/model.pt`` (a state dict),
``models/model.ts`` (MONAI's ``ckpt_export``) and ``models/model.onnx`` (what ``runtime: openvino`` or
``onnxruntime`` runs on CPU), sets the model's values in ``inference.yaml``, bumps the
metadata's version and changelog, and verifies the result offline.

Example:
    >>> export_bundle("outputs/train/checkpoints/best-029.ckpt", "bundles/stroke_mri_segmentation")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from pipeline.errors import ConfigError, InputError, PipelineError
from pipeline.inference import Settings
from pipeline.io import atomic_path, write_json_atomic
from pipeline.models.networks import network_weights
from pipeline.runtimes import CompiledNetwork, export_onnx

__all__ = ["BundleSegmenter", "load_weights", "load_bundle", "export_bundle", "verify_bundle", "cases_of",
           "log_bundle_to_run",
           "SCHEMA", "INFERENCE_HEADER"]

log = logging.getLogger(__name__)
SCHEMA = Path(__file__).resolve().parents[1] / "bundles" / "schemas" / "meta_schema.json"
SETTINGS_IDS = [f.name for f in dataclasses.fields(Settings)]
INFERENCE_HEADER = """\
# Segment stroke lesions with this bundle's model (MONAI bundle config; written by `python -m pipeline export`).
#   python -m monai.bundle run --config_file configs/inference.yaml --bundle_root . \\
#       --datalist CASES.json [--dataset_dir DIR] --output_dir OUT [--split testing|training|all] [--tta_axes [0,1,2]]
# Writes OUT/<id>.nii.gz (uint8 masks on each case's own DWI grid) and OUT/volumes.csv. See docs/README.md.
"""


def cases_of(datalist: str | None, split: str = "testing", dataset_dir: str | None = None) -> list[dict]:
    """The cases of a manifest split, with absolute paths (``datalist`` is required)."""
    if not datalist:
        raise ConfigError("no datalist: pass --datalist CASES.json (a MONAI datalist / manifest)")
    from pipeline.batch_inference import select_cases

    return select_cases(datalist, split, dataset_dir)


def load_weights(network: torch.nn.Module, path: str | Path, device="cpu") -> torch.nn.Module:
    """Load a state dict saved by :func:`export_bundle` into ``network``; eval mode on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("bundle has no weights: run `python -m pipeline export` first", path=str(path))
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.to(device).eval()


class BundleSegmenter:
    """The inference config's ``evaluator``: segments ``dataset.data`` into ``output_dir``.

    Raises a PipelineError after all cases when any failed, so ``monai.bundle run`` exits non-zero.
    """

    def __init__(self, network, dataset, inferer, postprocessing, settings, output_dir: str, device="cpu",
                 overwrite: bool = False, save_prob: bool = False, save_unc: bool = False, onnx_model=None):
        from pipeline.inference import Predictor

        self.predictor = Predictor(network, settings, device, preprocessing=dataset.transform, inferer=inferer,
                                   postprocessing=postprocessing, onnx_model=onnx_model)
        self.cases, self.output_dir = list(dataset.data), output_dir
        self.overwrite, self.save_prob, self.save_unc = overwrite, save_prob, save_unc

    def run(self):
        from pipeline.batch_inference import segment_cases

        report = segment_cases(self.predictor, self.cases, self.output_dir, self.overwrite, self.save_prob,
                               self.save_unc)
        log.info("%d written, %d kept, %d failed -> %s", len(report.written), len(report.skipped),
                 len(report.failures), self.output_dir)
        if report.failures:
            raise PipelineError(f"{len(report.failures)} case(s) failed: "
                                + "; ".join(f"{c}: {r}" for c, r in report.failures))
        return report


def _parser(bundle: Path, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle), **overrides})
    return parser


def load_bundle(bundle: str | Path, device="cpu"):
    """Network (weights loaded) and Settings from a bundle folder, as its inference config defines them."""
    bundle = Path(bundle)
    if not (bundle / "configs" / "inference.yaml").is_file():
        raise InputError("not a bundle folder: no configs/inference.yaml", path=str(bundle))
    parser = _parser(bundle)
    network = load_weights(parser.get_parsed_content("network_def"), bundle / "models" / "model.pt", device)
    settings = Settings(**{k: parser.get_parsed_content(k) for k in SETTINGS_IDS if k in parser.get()})
    return network, settings


def _inference_values(ckpt: dict) -> tuple[dict, dict]:
    """The checkpoint's network arguments and inference settings, as inference.yaml holds them."""
    settings = dataclasses.asdict(Settings.from_checkpoint(ckpt["hyper_parameters"]))
    return dict(ckpt["network_config"]), settings


def _write_inference_config(path: Path, network: dict, settings: dict) -> None:
    config = yaml.safe_load(path.read_text())
    for key, value in settings.items():
        config[key] = list(value) if isinstance(value, tuple) else value
    net = config["network_def"]
    net["_target_"] = ("pipeline.models.networks.build_ensemble" if "members" in network
                       else "pipeline.models.networks.build_network")
    net.pop("members", None)
    for key, value in network.items():
        if key in ("spatial_dims", "in_channels", "head"):
            continue  # these refer to the top-level IDs
        net[key] = value
    with atomic_path(path) as tmp:
        tmp.write_text(INFERENCE_HEADER + yaml.safe_dump(config, sort_keys=False, width=120))


def _bump(version: str) -> str:
    major, minor, patch = (int(p) for p in version.split("."))
    return f"{major}.{minor}.{patch + 1}"


def _update_metadata(path: Path, settings: dict, network: dict, source: str, score) -> dict:
    from importlib.metadata import version

    import monai
    import numpy

    meta = json.loads(path.read_text())
    meta["version"] = _bump(meta.get("version", "0.0.0"))
    note = f"exported from {source}" + (f" (validation score {score:.4f})" if score is not None else "")
    meta["changelog"] = {meta["version"]: f"{datetime.date.today().isoformat()}: {note}", **meta.get("changelog", {})}
    meta.update(monai_version=monai.__version__, pytorch_version=torch.__version__.split("+")[0],
                numpy_version=numpy.__version__)
    meta["required_packages_version"] = {p: version(p) for p in ("nibabel", "lightning", "mlflow",
                                                                 "connected-components-3d", "stroke-pipeline")}
    image = meta["network_data_format"]["inputs"]["image"]
    image.update(num_channels=settings["channels"], spatial_shape=list(settings["roi_size"]),
                 channel_def={str(i): n for i, n in enumerate(["dwi", "adc", "flair"][: settings["channels"]])}
                 if settings["channels"] <= 3 else {})
    pred = meta["network_data_format"]["outputs"]["pred"]
    n_out = 2 if network["head"] == "softmax" else 1
    out_shape = list(settings["roi_size"])
    if network.get("name") == "classic_unet":  # valid convolutions: the output is the window's centre
        from pipeline.models.networks import build_network

        net = build_network(**{k: v for k, v in network.items() if k != "members"})
        out_shape = net.output_size(out_shape)
    pred.update(num_channels=n_out, spatial_shape=out_shape,
                channel_def={"0": "background", "1": "lesion"} if n_out == 2 else {"0": "lesion"})
    if score is not None:
        meta["eval_metrics"] = {"val_mean_dice": round(float(score), 4)}
    write_json_atomic(meta, path)
    return meta


def _read_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise InputError("checkpoint not found", path=str(path))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not ckpt.get("network_config"):
        raise InputError("checkpoint has no network_config: not written by this pipeline", path=str(path))
    return ckpt


def _model_state(checkpoint: Path) -> tuple[dict, dict, dict, float | None]:
    """Network config, settings, state dict and best score of a checkpoint, or of a cross-validation folder
    (the fold ensemble with the post-processing chosen out of fold)."""
    if checkpoint.is_dir():
        from pipeline.cross_validation import fold_checkpoints

        post_file = checkpoint / "postprocessing.json"
        folds = fold_checkpoints(checkpoint)
        if not post_file.is_file() or not folds:
            raise InputError("not a finished cross-validation folder (no postprocessing.json or fold models)",
                             path=str(checkpoint))
        state, network, settings = {}, None, None
        for i, (_, path) in enumerate(sorted(folds.items())):
            ckpt = _read_checkpoint(path)
            network, settings = _inference_values(ckpt)
            state.update(network_weights(ckpt["state_dict"], prefix=f"members.{i}."))
        post = json.loads(post_file.read_text())
        settings.update(threshold=post["threshold"], min_lesion_ml=post["min_lesion_ml"])
        return dict(members=len(folds), **network), settings, state, post.get("score")
    ckpt = _read_checkpoint(checkpoint)
    network, settings = _inference_values(ckpt)
    state = network_weights(ckpt["state_dict"])
    score = next((float(v["best_model_score"]) for k, v in ckpt.get("callbacks", {}).items()
                  if "ModelCheckpoint" in k and v.get("best_model_score") is not None), None)
    return network, settings, state, score


def export_bundle(checkpoint: str | Path, bundle: str | Path) -> dict:
    """Write the bundle's model files from a training checkpoint (or a cross-validation folder: the fold
    ensemble) and verify the bundle; returns the metadata."""
    from monai.bundle import ckpt_export

    checkpoint, bundle = Path(checkpoint), Path(bundle)
    network, settings, state, score = _model_state(checkpoint)
    models = bundle / "models"
    models.mkdir(parents=True, exist_ok=True)
    with atomic_path(models / "model.pt") as tmp:
        torch.save(state, tmp)
    _write_inference_config(bundle / "configs" / "inference.yaml", network, settings)
    meta = _update_metadata(bundle / "configs" / "metadata.json", settings, network, checkpoint.name, score)
    with atomic_path(models / "model.ts") as tmp:
        ckpt_export(net_id="network_def", filepath=str(tmp), ckpt_file=str(models / "model.pt"),
                    meta_file=str(bundle / "configs" / "metadata.json"),
                    config_file=str(bundle / "configs" / "inference.yaml"), bundle_root=str(bundle))
    network_module, loaded = load_bundle(bundle, "cpu")
    with atomic_path(models / "model.onnx") as tmp:
        export_onnx(network_module, tmp, loaded.channels, loaded.roi_size)
    verify_bundle(bundle)
    return meta


def log_bundle_to_run(bundle: str | Path, checkpoint: str | Path) -> str | None:
    """Zip the bundle and attach it to the MLflow run that wrote ``checkpoint`` (found in its output_dir)."""
    from mlflow import MlflowClient

    from pipeline.tracking import RUN_ID_FILE, resolve_tracking_uri

    output_dir = Path(checkpoint).resolve().parent.parent
    if not (output_dir / RUN_ID_FILE).is_file():
        log.warning("no %s beside %s: the bundle is not logged to MLflow", RUN_ID_FILE, checkpoint)
        return None
    run_id = (output_dir / RUN_ID_FILE).read_text().strip()
    snapshot = output_dir / "config.yaml"
    uri = yaml.safe_load(snapshot.read_text()).get("tracking_uri") if snapshot.is_file() else None
    bundle = Path(bundle).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        archive = shutil.make_archive(str(Path(tmp) / f"{bundle.name}_v{meta['version']}"), "zip", bundle.parent,
                                      bundle.name)
        MlflowClient(resolve_tracking_uri(uri)).log_artifact(run_id, archive, "bundle")
    log.info("logged %s to MLflow run %s", Path(archive).name, run_id)
    return run_id


def verify_bundle(bundle: str | Path, atol: float = 1e-4, onnx_atol: float = 1e-2) -> float:
    """Metadata against the local schema, network in/out shapes, TorchScript == eager within ``atol``, and
    the ONNX model in each installed CPU runtime == eager within ``onnx_atol`` (their fused kernels round
    differently; ``make bench`` checks that Dice does not move).

    Returns the largest TorchScript-vs-eager difference; raises PipelineError on any failure.
    """
    from monai.bundle import verify_metadata, verify_net_in_out

    bundle = Path(bundle)
    meta_file, config_file = bundle / "configs" / "metadata.json", bundle / "configs" / "inference.yaml"
    with tempfile.TemporaryDirectory() as tmp:  # verify_metadata reads the schema from `filepath`
        schema = Path(tmp) / SCHEMA.name
        shutil.copy(SCHEMA, schema)
        try:
            verify_metadata(meta_file=str(meta_file), filepath=str(schema))
        except ValueError as err:
            raise PipelineError(f"{meta_file}: metadata fails the schema: {err}") from None
    verify_net_in_out(net_id="network_def", meta_file=str(meta_file), config_file=str(config_file), device="cpu",
                      bundle_root=str(bundle), n=1, any=8)
    network, settings = load_bundle(bundle, "cpu")
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu").eval()
    x = torch.randn(1, settings.channels, *settings.roi_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = network(x)
        diff = float((eager - scripted(x)).abs().max())
    if not diff <= atol:
        raise PipelineError(f"TorchScript and eager outputs differ by {diff:.2e} > {atol:g}")
    onnx = bundle / "models" / "model.onnx"
    for runtime in ("openvino", "onnxruntime"):
        if onnx.is_file() and importlib.util.find_spec(runtime):
            with torch.no_grad():
                onnx_diff = float((eager - CompiledNetwork(onnx, runtime)(x)).abs().max())
            if not onnx_diff <= onnx_atol:
                raise PipelineError(f"{onnx}: {runtime} and eager outputs differ by {onnx_diff:.2e} > {onnx_atol:g}")
            log.info("%s runs model.onnx like eager (max diff %.2e)", runtime, onnx_diff)
    log.info("bundle verified: metadata, network in/out, TorchScript == eager (max diff %.2e)", diff)
    return diff
