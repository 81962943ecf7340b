"""Command line: ``python -m pipeline <command> ...``.

Parses arguments, calls one library function, maps known errors to one line and an exit code.
Heavy libraries (torch, MONAI, Lightning, MLflow) are imported inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2


def _synth(args) -> int:
    from pipeline.data.synthetic import synthesize

    data = synthesize(args.out, subjects=args.subjects, seed=args.seed, spacing=args.spacing,
                      manifest=args.manifest, folds=args.folds, test_fraction=args.test_fraction, domain=args.domain,
                      all_testing=args.all_testing)
    print(f"wrote {args.subjects} subjects to {args.out}")
    if data is not None:
        print(f"wrote manifest {args.manifest}: {len(data['training'])} training, {len(data['testing'])} testing")
    if args.preview:
        if args.manifest is None:
            raise SystemExit("error: --preview needs --manifest")
        from pipeline.data.preview import preview_manifest

        print(f"wrote preview {preview_manifest(args.manifest, args.preview)}")
    return EXIT_OK


def _manifest(args) -> int:
    from pipeline.data.manifest import build_manifest, write_manifest

    data = build_manifest(args.bids, layout=args.layout, folds=args.folds, test_fraction=args.test_fraction,
                          seed=args.seed)
    write_manifest(data, args.out)
    print(f"wrote {args.out}: {len(data['training'])} training in {args.folds} folds, "
          f"{len(data['testing'])} testing")
    return EXIT_OK


def _validate(args) -> int:
    from pipeline.data.validation import validate_manifest

    problems = validate_manifest(args.manifest, dataset_dir=args.dataset_dir, volume_index=args.volume_index,
                                 label_threshold=args.label_threshold)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    for p in errors:
        print(p, file=sys.stderr)
    for p in warnings if args.verbose else warnings[:3]:
        print(p)
    more = "" if args.verbose or len(warnings) <= 3 else f" ({len(warnings) - 3} more warnings: --verbose lists them)"
    print(f"{args.manifest}: {len(errors)} error(s), {len(warnings)} warning(s){more}")
    return EXIT_PROBLEMS if errors else EXIT_OK


def _preview(args) -> int:
    from pipeline.data.preview import preview_manifest

    print(f"wrote {preview_manifest(args.manifest, args.out, cases=args.cases, dataset_dir=args.dataset_dir)}")
    return EXIT_OK


def _train(args, overrides: list[str]) -> int:
    from pipeline.experiment import DEFAULT_CONFIG, parse_overrides, train

    values = parse_overrides(overrides)
    if args.resume:
        values["resume"] = True
    best = train(args.config or [DEFAULT_CONFIG], values)
    print(f"best checkpoint: {best[0] if isinstance(best, list) else best}")
    return EXIT_OK


def _study(args, overrides: list[str]) -> int:
    from pipeline.experiment import parse_overrides
    from pipeline.study import run_study

    rows = run_study(args.variants, args.output, parse_overrides(overrides))
    print((Path(args.output) / "study.md").read_text(), end="")
    failed = [r for r in rows if r["status"] != "ok"]
    return EXIT_PROBLEMS if failed else EXIT_OK


def _explain(args) -> int:
    from pipeline.batch_inference import select_cases
    from pipeline.errors import InputError
    from pipeline.explain import explain_case

    cases = {str(c["id"]): c for c in select_cases(args.datalist, "all", args.dataset_dir)}
    if args.case not in cases:
        raise InputError(f"no case {args.case!r} in the manifest ({len(cases)} cases, e.g. "
                         f"{', '.join(list(cases)[:3])})", path=args.datalist)
    result = explain_case(args.model, cases[args.case], args.output, args.layer, args.occlusion_size,
                          device=args.device or "cpu")
    print(f"{args.case}: explained {result['explained']}, Grad-CAM at layer {result['layer']}")
    for name, path in result["paths"].items():
        print(f"  {name}: {path}")
    return EXIT_OK


def _infer(args) -> int:
    from pipeline.batch_inference import segment_datalist
    from pipeline.inference import Predictor

    overrides = dict(tta_axes=[0, 1, 2] if args.tta else None, overlap=args.overlap, threshold=args.threshold,
                     min_lesion_ml=args.min_lesion_ml, runtime=args.runtime)
    predictor = Predictor.from_path(args.model, device=args.device, **overrides)
    report = segment_datalist(predictor, args.datalist, args.output, split=args.split, dataset_dir=args.dataset_dir,
                              overwrite=args.overwrite, save_prob=args.save_prob, save_unc=args.save_unc)
    print(f"{len(report.written)} written, {len(report.skipped)} kept (exist; --overwrite replaces), "
          f"{len(report.failures)} failed -> {args.output}")
    for cid, reason in report.failures:
        print(f"FAILED {cid}: {reason}", file=sys.stderr)
    return EXIT_PROBLEMS if report.failures else EXIT_OK


def _evaluate(args) -> int:
    from pipeline.evaluation.report import evaluate

    summary = evaluate(args.datalist, args.predictions, args.output, split=args.split, dataset_dir=args.dataset_dir,
                       tolerance_mm=args.tolerance_mm, run_id=args.run_id, tracking_uri=args.tracking_uri,
                       name=args.name)
    for name in ("dice", "lesion_f1", "avd_ml", "lesion_count_diff", "hd95_mm"):
        s = summary["metrics"].get(name)
        if s and s["mean"] is not None:
            print(f"{name:>18}: mean {s['mean']:.4f}  median {s['median']:.4f}  95% CI {s['ci95'][0]:.4f}-"
                  f"{s['ci95'][1]:.4f}  (n={s['n']})")
    free = summary["lesion_free"]
    print(f"lesion-free cases with a false lesion: {free['with_false_lesion']} of {free['cases']}")
    print(f"report: {Path(args.output) / 'report.html'}")
    for failure in summary["failures"]:
        print(f"FAILED {failure['id']}: {failure['reason']}", file=sys.stderr)
    return EXIT_PROBLEMS if summary["failures"] else EXIT_OK


def _reslice(args) -> int:
    from pipeline.data.reslice import reslice_manifest

    data = reslice_manifest(args.datalist, args.out, args.thickness, split=args.split)
    print(f"wrote {len(data['testing'])} case(s) re-sliced to {args.thickness:g} mm and "
          f"{Path(args.out) / 'manifest.json'}")
    return EXIT_OK


def _compare(args) -> int:
    from pipeline.evaluation.compare import domain_table
    from pipeline.io import atomic_path

    named = {}
    for item in args.evaluations:
        name, sep, folder = item.partition("=")
        if not sep:
            raise SystemExit(f"error: {item!r}: give NAME=EVALUATION_FOLDER")
        named[name] = folder
    table = domain_table(named)
    print(table, end="")
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(table)
    return EXIT_OK


def _export(args) -> int:
    from pipeline.bundle import export_bundle, log_bundle_to_run

    meta = export_bundle(args.checkpoint, args.bundle)
    print(f"exported {args.checkpoint} -> {args.bundle} version {meta['version']}: models/model.pt, model.ts, "
          "model.onnx; metadata, network in/out, TorchScript and ONNX verified")
    if not args.no_mlflow and (run_id := log_bundle_to_run(args.bundle, args.checkpoint)):
        print(f"bundle zip logged to MLflow run {run_id}")
    return EXIT_OK


def _mlflow_sync(args) -> int:
    from pipeline.tracking import sync_runs

    copied = sync_runs(args.source, args.target, args.experiment)
    print(f"copied {len(copied)} run(s) to {args.target}")
    return EXIT_OK


def _cv(args, overrides: list[str]) -> int:
    from pipeline.cross_validation import cv_summary_text, run_cv
    from pipeline.experiment import DEFAULT_CONFIG, parse_overrides

    values = parse_overrides(overrides)
    values.setdefault("output_dir", "outputs/cv")
    summary = run_cv(args.config or [DEFAULT_CONFIG], values, folds=args.folds, only_fold=args.fold)
    print(cv_summary_text(summary))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="Stroke-lesion segmentation on MONAI.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="synthesise ISLES'22-like stroke MRI on ICBM152 anatomy")
    p.add_argument("--out", required=True, help="folder for the BIDS tree")
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
    p.set_defaults(func=_synth)

    p = sub.add_parser("manifest", help="build a manifest from an ISLES'22 or ATLAS R2.0 tree")
    p.add_argument("--bids", required=True, help="root of the data set as released")
    p.add_argument("--layout", choices=["isles22", "atlas"], default="isles22")
    p.add_argument("--out", required=True, help="manifest JSON to write")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_manifest)

    p = sub.add_parser("validate", help="open every file of a manifest and report every problem")
    p.add_argument("manifest")
    p.add_argument("--dataset-dir", help="folder the manifest's paths are relative to (overrides its own)")
    p.add_argument("--verbose", action="store_true", help="list every warning, not only the first three")
    p.add_argument("--volume-index", type=int, help="accept 4D images, taking this volume (as the config key)")
    p.add_argument("--label-threshold", type=float, help="accept probabilistic labels (as the config key)")
    p.set_defaults(func=_validate)

    p = sub.add_parser("preview", help="PNG montage of a manifest's cases")
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--dataset-dir")
    p.set_defaults(func=_preview)
    p = sub.add_parser("infer", help="segment the cases of a manifest with a checkpoint or bundle")
    p.add_argument("--model", required=True, help="a .ckpt from training or a bundle folder")
    p.add_argument("--datalist", required=True, help="manifest JSON")
    p.add_argument("--dataset-dir", help="folder the manifest's paths are relative to (overrides its own)")
    p.add_argument("--output", required=True, help="folder for <id>.nii.gz masks and volumes.csv")
    p.add_argument("--split", default="testing", choices=["testing", "training", "all"])
    p.add_argument("--tta", action="store_true", help="average over all 8 mirrorings of the 3 axes")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--overlap", type=float, help="sliding-window overlap (default: the model's setting)")
    p.add_argument("--runtime", choices=["auto", "torch", "openvino", "onnxruntime"],
                   help="where the network runs (default auto: OpenVINO on CPU, PyTorch on GPU)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    p.add_argument("--min-lesion-ml", type=float, help="drop lesions smaller than this (mL)")
    p.add_argument("--save-prob", action="store_true", help="also write <id>_prob.nii.gz")
    p.add_argument("--save-unc", action="store_true", help="also write <id>_unc.nii.gz (TTA variance; needs --tta)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_infer)

    p = sub.add_parser("explain", help="Grad-CAM and occlusion-sensitivity maps of one case's predicted lesion")
    p.add_argument("--model", required=True, help="a .ckpt from training or a bundle folder")
    p.add_argument("--datalist", required=True, help="manifest JSON holding the case")
    p.add_argument("--dataset-dir", help="folder the manifest's paths are relative to (overrides its own)")
    p.add_argument("--case", required=True, help="case id")
    p.add_argument("--output", required=True, help="folder for <id>_gradcam/_occlusion.nii.gz and <id>_explain.png")
    p.add_argument("--layer", help="module name for Grad-CAM (default: the second-to-last decoder activation)")
    p.add_argument("--occlusion-size", type=int, default=16, help="occluding cube's edge in voxels (default 16)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu")
    p.set_defaults(func=_explain)

    p = sub.add_parser("evaluate", help="ISLES'22 metrics of predicted masks: CSV, summary, plots, HTML report")
    p.add_argument("--datalist", required=True)
    p.add_argument("--dataset-dir")
    p.add_argument("--predictions", required=True, help="folder with <id>.nii.gz masks")
    p.add_argument("--output", required=True)
    p.add_argument("--split", default="testing", choices=["testing", "training", "all"])
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="normalised surface Dice tolerance")
    p.add_argument("--run-id", help="also log metrics and files to this MLflow run")
    p.add_argument("--tracking-uri", help="MLflow store of --run-id (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--name", help="metric prefix in MLflow (default: the split, e.g. testing/dice; shifted/dice)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("reslice", help="thick-slice copies of a manifest's cases (slices averaged) and their manifest")
    p.add_argument("--datalist", required=True, help="manifest JSON")
    p.add_argument("--out", required=True, help="folder for the copies and manifest.json")
    p.add_argument("--thickness", type=float, default=4.5, help="slice thickness in mm (default 4.5)")
    p.add_argument("--split", default="testing", choices=["testing", "training"])
    p.set_defaults(func=_reslice)

    p = sub.add_parser("compare", help="evaluations side by side (e.g. the in-domain and the shifted-domain test)")
    p.add_argument("evaluations", nargs="+", metavar="NAME=FOLDER", help="a name and an evaluate output folder")
    p.add_argument("--out", help="also write the markdown table here")
    p.set_defaults(func=_compare)

    p = sub.add_parser("export", help="write a bundle's model.pt/model.ts from a checkpoint and verify the bundle")
    p.add_argument("--checkpoint", required=True, help="a .ckpt from training, or a cross-validation folder "
                   "(exports the fold ensemble with its chosen post-processing)")
    p.add_argument("--bundle", default="bundles/stroke_mri_segmentation", help="bundle folder to fill")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the bundle zip to the training's MLflow run")
    p.set_defaults(func=_export)

    p = sub.add_parser("cv", help="k-fold cross-validation: a parent MLflow run, a child per fold, out-of-fold "
                       "evaluation and post-processing chosen on it; --ID VALUE overrides as for train")
    p.add_argument("--config", action="append", help="config file(s), as for train")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold", type=int, help="train only this fold (e.g. one that crashed)")
    p.set_defaults(func=_cv, takes_overrides=True)

    p = sub.add_parser("mlflow-sync", help="copy runs tracked offline (server unreachable) to a tracking server")
    p.add_argument("--source", required=True, help="e.g. sqlite:///outputs/train/mlflow_offline.db")
    p.add_argument("--target", required=True, help="e.g. http://mlflow.example.org:5000")
    p.add_argument("--experiment", help="only this experiment")
    p.set_defaults(func=_mlflow_sync)

    p = sub.add_parser("train", help="train from the bundle's train config; --ID VALUE overrides any config ID",
                       epilog="example: python -m pipeline train --max_epochs 2 --spatial_dims 2 "
                              "--network_def#channels '[8, 16, 32]'")
    p.add_argument("--config", nargs="+", action="extend", help="config file(s), later ones merged over earlier "
                   "(default: bundles/stroke_mri_segmentation/configs/train.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from output_dir's last checkpoint and MLflow run")
    p.set_defaults(func=_train, takes_overrides=True)

    p = sub.add_parser("study", help="train config variants for the same budget; table and plot of Dice, time, "
                       "memory", epilog="example: python -m pipeline study --variants "
                       "bundles/stroke_mri_segmentation/configs/norm/*.yaml --output outputs/norm_study "
                       "--max_epochs 8")
    p.add_argument("--variants", nargs="+", required=True, help="config files, each merged over train.yaml")
    p.add_argument("--output", required=True, help="folder for the runs and study.{csv,md,png}")
    p.set_defaults(func=_study, takes_overrides=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    sys.exit(main())
