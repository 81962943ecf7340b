"""Command line: ``python -m pipeline <command> ...`` (``__main__`` calls :func:`main`).

Argument parsing only: each command goes to its handler in :mod:`pipeline.commands`; known errors become one
line and an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pipeline.commands as commands
from pipeline.commands import EXIT_ERROR

QUIET_LOGGERS = ("LoadImage",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="Stroke-lesion segmentation on MONAI.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_commands(sub)
    _inference_commands(sub)
    _training_commands(sub)
    return parser


def _data_commands(sub) -> None:
    """synth, manifest, validate, preview."""
    p = sub.add_parser("synth", help="synthesise ISLES'22-like stroke MRI on ICBM152 anatomy")
    p.add_argument("--out", "--output", dest="out", required=True, help="folder for the BIDS tree")
    p.add_argument("--subjects", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain", default="random", help="acquisition ranges: random (default: what a multi-centre "
                   "cohort spans), fixed (one protocol), shifted (outside the training ranges) or a YAML file")
    p.add_argument("--spacing", type=float, help="put DWI/ADC on an isotropic grid of this many mm (default: the "
                   "domain's grids; fixed: 2)")
    p.add_argument("--all-testing", action="store_true", help="every case in the manifest's testing list (a "
                   "held-out test set)")
    p.add_argument("--manifest", help="also write a manifest (MONAI datalist JSON) here")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--preview", help="also write a PNG montage of a few subjects here (needs --manifest)")
    p.set_defaults(func=commands.synth)

    p = sub.add_parser("manifest", help="build a manifest from an ISLES'22 or ATLAS R2.0 tree")
    p.add_argument("--bids", required=True, help="root of the data set as released")
    p.add_argument("--layout", choices=["isles22", "atlas"], default="isles22")
    p.add_argument("--out", "--output", dest="out", required=True, help="manifest JSON to write")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=commands.manifest)

    p = sub.add_parser("dicom2nifti", help="DWI, ADC and FLAIR DICOM series under a folder -> ISLES'22-layout NIfTI "
                                          "tree and manifest (the DWI series kept for infer --dicom-seg)")
    p.add_argument("--in", dest="source", required=True, help="folder searched for DICOM series (recursively)")
    p.add_argument("--out", "--output", dest="out", required=True, help="folder for the NIfTI tree")
    p.add_argument("--manifest", help="manifest JSON to write (default: OUT/dataset.json)")
    p.set_defaults(func=commands.dicom2nifti)

    p = sub.add_parser("validate", help="open every file of a manifest and report every problem")
    _manifest_argument(p)
    p.add_argument("--dataset-dir", help="folder the manifest's paths are relative to (overrides its own)")
    p.add_argument("--verbose", action="store_true", help="list every warning, not only the first three")
    p.add_argument("--spatial-dims", type=int, default=3, choices=[2, 3],
                   help="the model's (as the config key): 3 refuses single-slice images")
    p.add_argument("--volume-index", type=int, help="accept 4D images, taking this volume (as the config key)")
    p.add_argument("--label-threshold", type=float, help="accept probabilistic labels (as the config key)")
    p.set_defaults(func=commands.validate)

    p = sub.add_parser("preview", help="PNG montage of a manifest's cases")
    _manifest_argument(p)
    p.add_argument("--out", "--output", dest="out", required=True)
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--dataset-dir")
    p.set_defaults(func=commands.preview)


def _manifest_argument(p) -> None:
    """The manifest as a positional argument or, as infer, evaluate and train take it, ``--datalist``."""
    p.add_argument("manifest", nargs="?", help="manifest JSON (or --datalist)")
    p.add_argument("--datalist", dest="datalist_option", metavar="DATALIST", help="manifest JSON, as for infer")
    p.set_defaults(manifest_either=True)


def _one_manifest(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.manifest`` from the positional or ``--datalist``: one of them, not two different ones."""
    given = {m for m in (args.manifest, args.datalist_option) if m}
    if len(given) != 1:
        parser.error(f"{args.command}: give the manifest once: {args.command} MANIFEST or --datalist MANIFEST"
                     + (f" (got {' and '.join(sorted(given))})" if given else ""))
    args.manifest = given.pop()


def _inference_commands(sub) -> None:
    """infer, explain, evaluate, reslice, compare."""
    p = sub.add_parser("infer", help="segment a manifest's cases, or one case's files, with a checkpoint or bundle")
    p.add_argument("--model", required=True, help="a .ckpt from training or a bundle folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--datalist", help="manifest JSON")
    source.add_argument("--image", nargs="+", metavar="FILE",
                        help="one case's files in the model's channel order (DWI ADC FLAIR); 'none' for a channel "
                             "the case lacks, e.g. --image dwi.nii.gz adc.nii.gz none")
    p.add_argument("--id", help="the --image case's name in the outputs (default: the first file's name)")
    p.add_argument("--dataset-dir", help="folder the manifest's paths are relative to (overrides its own)")
    p.add_argument("--output", "--out", dest="output", required=True,
                   help="folder for <id>.nii.gz masks, volumes.csv and lesions.csv (one row per lesion)")
    p.add_argument("--split", default="testing", choices=["testing", "training", "all"])
    p.add_argument("--tta", action="store_true", help="average over all 8 mirrorings of the 3 axes")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--overlap", type=float, help="sliding-window overlap (default: the model's setting)")
    p.add_argument("--runtime", choices=["auto", "torch", "openvino", "onnxruntime"],
                   help="where the network runs (default auto: OpenVINO on CPU, PyTorch on GPU)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    p.add_argument("--volume-index", type=int,
                   help="take this volume of 4D images (e.g. -1: the last b-value of a dcm2niix DWI)")
    p.add_argument("--min-lesion-ml", type=float, help="drop lesions smaller than this (mL)")
    p.add_argument("--min-lesion-peak", type=float,
                   help="drop lesions whose highest probability is below this (default: the model's; 0: off)")
    p.add_argument("--no-diffusion-check", dest="diffusion_check", action="store_false",
                   help="keep lesions without restricted diffusion too (subacute strokes whose ADC has "
                        "pseudo-normalised; default: the model's check)")
    p.add_argument("--no-border-refinement", dest="border_refinement", action="store_false",
                   help="keep the network's lesion borders as they come from its 2 mm grid instead of deciding the "
                        "voxels along them on the scan's own grid (default: the model's setting)")
    p.add_argument("--save-prob", action="store_true", help="also write <id>_prob.nii.gz")
    p.add_argument("--save-unc", action="store_true", help="also write <id>_unc.nii.gz (TTA variance; needs --tta)")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write <id>_seg.dcm, a DICOM SEG of the source DWI series (cases from dicom2nifti)")
    p.add_argument("--no-mni", dest="mni", action="store_false",
                   help="lesions.csv without MNI location (skips the ~3 s registration per case)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=commands.infer)

    p = sub.add_parser("explain", help="Grad-CAM and occlusion-sensitivity maps of one case's predicted lesion")
    p.add_argument("--model", required=True, help="a .ckpt from training or a bundle folder")
    p.add_argument("--datalist", required=True, help="manifest JSON holding the case")
    p.add_argument("--dataset-dir", help="folder the manifest's paths are relative to (overrides its own)")
    p.add_argument("--case", required=True, help="case id")
    p.add_argument("--output", "--out", dest="output", required=True,
                   help="folder for <id>_gradcam/_occlusion.nii.gz and <id>_explain.png")
    p.add_argument("--layer", help="module name for Grad-CAM (default: the second-to-last decoder activation)")
    p.add_argument("--occlusion-size", type=int, default=16, help="occluding cube's edge in voxels (default 16)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu")
    p.set_defaults(func=commands.explain)

    p = sub.add_parser("evaluate", help="ISLES'22 metrics of predicted masks: CSV, summary, plots, HTML report")
    p.add_argument("--datalist", required=True)
    p.add_argument("--dataset-dir")
    p.add_argument("--predictions", required=True, help="folder with <id>.nii.gz masks")
    p.add_argument("--output", "--out", dest="output", required=True)
    p.add_argument("--split", default="testing", choices=["testing", "training", "all"])
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="normalised surface Dice tolerance")
    p.add_argument("--no-viewer", dest="viewer", action="store_false",
                   help="report.html without the interactive NiiVue viewer")
    p.add_argument("--run-id", help="also log metrics and files to this MLflow run")
    p.add_argument("--tracking-uri", help="MLflow store of --run-id (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--name", help="metric prefix in MLflow (default: the split, e.g. testing/dice; shifted/dice)")
    p.set_defaults(func=commands.evaluate)

    p = sub.add_parser("reslice", help="thick-slice (slices averaged) or partial-coverage copies of a manifest's "
                       "cases and their manifest")
    p.add_argument("--datalist", required=True, help="manifest JSON")
    p.add_argument("--out", "--output", dest="out", required=True, help="folder for the copies and manifest.json")
    p.add_argument("--thickness", type=float, help="slice thickness in mm (default 4.5 unless --coverage alone)")
    p.add_argument("--coverage", type=float, help="keep only this many mm (scanner z) around each case's lesion: "
                   "a scan covering part of the head")
    p.add_argument("--split", default="testing", choices=["testing", "training"])
    p.set_defaults(func=commands.reslice)

    p = sub.add_parser("compare", help="evaluations side by side (e.g. the in-domain and the shifted-domain test)")
    p.add_argument("evaluations", nargs="+", metavar="NAME=FOLDER", help="a name and an evaluate output folder")
    p.add_argument("--out", "--output", dest="out", help="also write the markdown table here")
    p.add_argument("--paired", action="store_true", help="also each evaluation against the first, case by case: "
                   "the mean difference with its 95%% bootstrap CI and the Wilcoxon p (same test cases)")
    p.add_argument("--metric", default="dice", help="the metrics.csv column --paired compares (default dice)")
    p.set_defaults(func=commands.compare)


def _training_commands(sub) -> None:
    """export, cv, mlflow-sync, train, plan, study."""
    p = sub.add_parser("export", help="write a bundle's model.pt/model.ts from a checkpoint and verify the bundle")
    p.add_argument("--checkpoint", required=True, help="a .ckpt from training, or a cross-validation folder "
                   "(exports the fold ensemble with its chosen post-processing)")
    p.add_argument("--bundle", default="bundles/stroke_mri_segmentation",
                   help="bundle folder to fill (a new one starts as a copy of bundles/stroke_mri_segmentation)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the bundle zip to the training's MLflow run")
    p.set_defaults(func=commands.export)

    p = sub.add_parser("cv", help="k-fold cross-validation: a parent MLflow run, a child per fold, out-of-fold "
                       "evaluation and post-processing chosen on it; --ID VALUE overrides as for train")
    p.add_argument("--config", action="append", help="config file(s), as for train")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold", type=int, help="train only this fold (e.g. one that crashed)")
    p.set_defaults(func=commands.cv, takes_overrides=True)

    p = sub.add_parser("mlflow-sync", help="copy runs tracked offline (server unreachable) to a tracking server")
    p.add_argument("--source", required=True, help="e.g. sqlite:///outputs/train/mlflow_offline.db")
    p.add_argument("--target", required=True, help="e.g. http://mlflow.example.org:5000")
    p.add_argument("--experiment", help="only this experiment")
    p.set_defaults(func=commands.mlflow_sync)

    p = sub.add_parser("train", help="train from the bundle's train config; --ID VALUE overrides any config ID",
                       epilog="example: python -m pipeline train --max_epochs 2 --spatial_dims 2 "
                              "--network_def#channels '[8, 16, 32]'")
    p.add_argument("--config", nargs="+", action="extend", help="config file(s), later ones merged over earlier "
                   "(default: bundles/stroke_mri_segmentation/configs/train.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from output_dir's last checkpoint and MLflow run")
    p.set_defaults(func=commands.train, takes_overrides=True)

    p = sub.add_parser("plan", help="fingerprint a manifest's training cases and write a config overlay (spacing, "
                       "patch, DynUNet, batch) for the budget", epilog="example: python -m pipeline plan --datalist "
                       "data_manifests/synthetic.json --budget cpu --out configs/plans/synthetic.yaml; then: "
                       "python -m pipeline train --config bundles/stroke_mri_segmentation/configs/train.yaml "
                       "configs/plans/synthetic.yaml")
    p.add_argument("--datalist", required=True, help="manifest JSON; its training cases are read once")
    p.add_argument("--dataset-dir", help="folder the manifest's paths are relative to (overrides its own)")
    p.add_argument("--budget", default="cpu", help="cpu (default), gpu-8gb or gpu-24gb")
    p.add_argument("--out", "--output", dest="out", required=True,
                   help="overlay YAML to write; NAME_fingerprint.json (and NAME_2d.yaml "
                   "for thick-slice data) beside it")
    p.set_defaults(func=commands.plan)

    p = sub.add_parser("study", help="train config variants for the same budget; table and plot of Dice, time, "
                       "memory", epilog="example: python -m pipeline study --variants "
                       "bundles/stroke_mri_segmentation/configs/norm/*.yaml --output outputs/norm_study "
                       "--max_epochs 8")
    p.add_argument("--variants", nargs="+", required=True, help="config files, each merged over train.yaml")
    p.add_argument("--output", "--out", dest="output", required=True,
                   help="folder for the runs and study.{csv,md,png}")
    p.set_defaults(func=commands.study, takes_overrides=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "manifest_either", False):
        _one_manifest(parser, args)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for chatty in QUIET_LOGGERS:  # their INFO lines repeat what the one-line errors say, or are advertising
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    from pipeline.errors import find_pipeline_error

    try:
        return args.func(args, extra) if getattr(args, "takes_overrides", False) else args.func(args)
    except Exception as err:  # noqa: BLE001 - known errors become one line; others keep their traceback
        known = find_pipeline_error(err)
        if known is None or args.debug:
            raise
        print(f"error: {known}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

