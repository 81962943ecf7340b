"""Exporting a trained model as a MONAI bundle, verifying it, and attaching it to the training's MLflow run.

:func:`export_bundle` writes ``models/model.pt`` (a state dict), ``models/model.ts`` (MONAI's ``ckpt_export``)
and ``models/model.onnx`` (what ``runtime: openvino`` or ``onnxruntime`` runs on CPU), sets the model's values
in ``inference.yaml`` (its ``network_def`` and ``settings``), bumps the metadata's version and changelog, and
verifies the result offline (:func:`verify_bundle`).

Example:
    >>> export_bundle("outputs/train/checkpoints/best-029.ckpt", "bundles/stroke_mri_segmentation")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from pipeline.errors import InputError, PipelineError
from pipeline.inference.loading import fold_checkpoints, load_bundle, read_checkpoint, read_postprocessing
from pipeline.inference.runtimes import CompiledNetwork, export_onnx
from pipeline.inference.settings import Settings
from pipeline.io import atomic_path, write_json_atomic
from pipeline.models.networks import network_weights

__all__ = ["export_bundle", "verify_bundle", "log_bundle_to_run", "SCHEMA", "INFERENCE_HEADER"]

log = logging.getLogger(__name__)
SCHEMA = Path(__file__).resolve().parents[2] / "bundles" / "schemas" / "meta_schema.json"
TEMPLATE = Path(__file__).resolve().parents[2] / "bundles" / "stroke_mri_segmentation"  # configs, docs, licence
INFERENCE_HEADER = """\
# Segment stroke lesions with this bundle's model (MONAI bundle config; written by `python -m pipeline export`).
#   python -m monai.bundle run --config_file configs/inference.yaml --bundle_root . \\
#       --datalist CASES.json [--dataset_dir DIR] --output_dir OUT [--split testing|training|all] \\
#       [--settings#tta_axes [0,1,2]] [--mni_location false] [--dicom_seg true]
# Writes OUT/<id>.nii.gz (uint8 masks on each case's own DWI grid), OUT/volumes.csv and OUT/lesions.csv (one row
# per lesion; lesion_table), with its MNI location (mni_location: registration to ICBM152, cached in
# OUT/registration); dicom_seg adds OUT/<id>_seg.dcm for cases from dicom2nifti. See docs/README.md.
"""


def _inference_values(ckpt: dict) -> tuple[dict, dict]:
    """The checkpoint's network arguments and inference settings, as inference.yaml holds them."""
    return dict(ckpt["network_config"]), Settings.from_hparams(ckpt["hyper_parameters"]).as_config()


def _write_inference_config(path: Path, network: dict, settings: dict) -> None:
    config = yaml.safe_load(path.read_text())
    config["settings"] = {"_target_": "pipeline.inference.Settings", **settings}
    net = config["network_def"]
    net["_target_"] = ("pipeline.models.networks.build_ensemble" if "members" in network
                       else "pipeline.models.networks.build_network")
    net.pop("members", None)
    for key, value in network.items():
        if key in ("spatial_dims", "in_channels", "head"):
            continue  # these refer to the settings
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


def _model_state(checkpoint: Path) -> tuple[dict, dict, dict, float | None]:
    """Network config, settings, state dict and best score of a checkpoint, or of a cross-validation folder
    (the fold ensemble with the post-processing chosen out of fold)."""
    if checkpoint.is_dir():
        post = read_postprocessing(checkpoint)
        folds = fold_checkpoints(checkpoint)
        if not folds:
            raise InputError("no fold models in this cross-validation folder", path=str(checkpoint))
        state, network, settings = {}, None, None
        for i, (_, path) in enumerate(sorted(folds.items())):
            ckpt = read_checkpoint(path)
            network, settings = _inference_values(ckpt)
            state.update(network_weights(ckpt["state_dict"], prefix=f"members.{i}."))
        settings.update(threshold=post["threshold"], min_lesion_ml=post["min_lesion_ml"])
        return dict(members=len(folds), **network), settings, state, post.get("score")
    ckpt = read_checkpoint(checkpoint)
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
    if not (bundle / "configs" / "inference.yaml").is_file():
        if not (TEMPLATE / "configs" / "inference.yaml").is_file():
            raise InputError("not a bundle (no configs/inference.yaml), and no template to copy", path=str(bundle))
        log.info("%s: new bundle, from the template %s", bundle, TEMPLATE)
        shutil.copytree(TEMPLATE, bundle, dirs_exist_ok=True, ignore=shutil.ignore_patterns("models", "eval"))
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
    from pipeline.tracking import RUN_ID_FILE, client

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
        client(uri).log_artifact(run_id, archive, "bundle")
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
