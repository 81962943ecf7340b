"""The command handlers of ``python -m pipeline``: each calls one library function and prints its result.

Heavy libraries (torch, MONAI, Lightning, MLflow) are imported inside the handlers, so ``--help`` is fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2


def synth(args) -> int:
    from pipeline.data.synthetic import synthesize

    data = synthesize(args.out, subjects=args.subjects, seed=args.seed, spacing=args.spacing,
                      manifest=args.manifest, folds=args.folds, test_fraction=args.test_fraction, domain=args.domain,
                      all_testing=args.all_testing)
    print(f"wrote {args.subjects} subjects to {args.out}")
    if data is not None:
        print(f"wrote manifest {args.manifest}: {len(data['training'])} training in {data['folds']} fold(s), "
              f"{len(data['testing'])} testing")
    if args.preview:
        if args.manifest is None:
            raise SystemExit("error: --preview needs --manifest")
        from pipeline.data.preview import preview_manifest

        print(f"wrote preview {preview_manifest(args.manifest, args.preview)}")
    return EXIT_OK


def manifest(args) -> int:
    from pipeline.data.manifest import build_manifest, write_manifest

    data = build_manifest(args.bids, layout=args.layout, folds=args.folds, test_fraction=args.test_fraction,
                          seed=args.seed)
    write_manifest(data, args.out)
    print(f"wrote {args.out}: {len(data['training'])} training in {data['folds']} folds, "
          f"{len(data['testing'])} testing")
    return EXIT_OK


def dicom2nifti(args) -> int:
    from pipeline.data.dicom import dicom_to_nifti

    result = dicom_to_nifti(args.source, args.out, args.manifest)
    for subject, reason in result["failed"]:
        print(f"FAILED {subject}: {reason}", file=sys.stderr)
    print(f"{len(result['testing'])} case(s) converted, {len(result['failed'])} failed -> {result['manifest']}")
    return EXIT_PROBLEMS if result["failed"] else EXIT_OK


def validate(args) -> int:
    from pipeline.data.checks import validate_manifest

    problems = validate_manifest(args.manifest, dataset_dir=args.dataset_dir, spatial_dims=args.spatial_dims,
                                 volume_index=args.volume_index, label_threshold=args.label_threshold)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    for p in errors:
        print(p, file=sys.stderr)
    for p in warnings if args.verbose else warnings[:3]:
        print(p)
    more = "" if args.verbose or len(warnings) <= 3 else f" ({len(warnings) - 3} more warnings: --verbose lists them)"
    print(f"{args.manifest}: {len(errors)} error(s), {len(warnings)} warning(s){more}")
    return EXIT_PROBLEMS if errors else EXIT_OK


def preview(args) -> int:
    from pipeline.data.preview import preview_manifest

    print(f"wrote {preview_manifest(args.manifest, args.out, cases=args.cases, dataset_dir=args.dataset_dir)}")
    return EXIT_OK


def train(args, overrides: list[str]) -> int:
    from pipeline.training.experiment import DEFAULT_CONFIG, parse_overrides, train

    values = parse_overrides(overrides)
    if args.resume:
        values["resume"] = True
    best = train(args.config or [DEFAULT_CONFIG], values)
    print(f"best checkpoint: {best[0] if isinstance(best, list) else best}")
    return EXIT_OK


def plan(args) -> int:
    from pipeline.data.fingerprint import fingerprint_manifest
    from pipeline.io import write_json_atomic, write_yaml_atomic
    from pipeline.training.plan import make_plan, plan_overlay

    found = fingerprint_manifest(args.datalist, args.dataset_dir)
    cases = found["cases"]
    chosen = make_plan([c["spacing_mm"] for c in cases], [c["cropped_shape"] for c in cases], args.budget)
    out = Path(args.out)
    fingerprint = write_json_atomic(found, out.with_name(out.stem + "_fingerprint.json"))
    write_yaml_atomic({**plan_overlay(chosen), "plan": chosen, "plan_fingerprint": str(fingerprint)}, out)
    print(f"{len(cases)} cases -> spacing {chosen['target_spacing']} mm, patch {chosen['patch_size']}, "
          f"{len(chosen['strides']) - 1} poolings, filters {chosen['filters']}, batch {chosen['batch_size']}")
    print(f"wrote {out} and {fingerprint}")
    if "plan_2d" in chosen:
        two_d = write_yaml_atomic({**plan_overlay(chosen, two_d=True), "plan": chosen,
                                   "plan_fingerprint": str(fingerprint)}, out.with_name(out.stem + "_2d.yaml"))
        print(f"thick slices: a 2D alternative in {two_d}")
    return EXIT_OK


def study(args, overrides: list[str]) -> int:
    from pipeline.training.experiment import parse_overrides
    from pipeline.training.study import run_study

    rows = run_study(args.variants, args.output, parse_overrides(overrides))
    print((Path(args.output) / "study.md").read_text(), end="")
    failed = [r for r in rows if r["status"] != "ok"]
    return EXIT_PROBLEMS if failed else EXIT_OK


def explain(args) -> int:
    from pipeline.data.manifest import select_cases
    from pipeline.errors import InputError
    from pipeline.inference.explain import explain_case

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


def infer(args) -> int:
    from pipeline.inference.batch import segment_cases, segment_datalist
    from pipeline.inference.predictor import Predictor

    overrides = dict(tta_axes=[0, 1, 2] if args.tta else None, overlap=args.overlap, threshold=args.threshold,
                     min_lesion_ml=args.min_lesion_ml, min_lesion_peak=args.min_lesion_peak, runtime=args.runtime,
                     diffusion_check=None if args.diffusion_check else False, volume_index=args.volume_index,
                     border_refinement=None if args.border_refinement else False)
    predictor = Predictor.from_path(args.model, device=args.device, **overrides)
    if args.image:  # one case from the command line: no manifest to write
        images = [None if p.lower() in ("none", "null") else str(Path(p).resolve()) for p in args.image]
        case = dict(id=args.id or Path(args.image[0]).name.split(".")[0], image=images)
        report = segment_cases(predictor, [case], args.output, overwrite=args.overwrite, save_prob=args.save_prob,
                               save_unc=args.save_unc, mni=args.mni, dicom_seg=args.dicom_seg)
    else:
        report = segment_datalist(predictor, args.datalist, args.output, split=args.split,
                                  dataset_dir=args.dataset_dir, overwrite=args.overwrite, save_prob=args.save_prob,
                                  save_unc=args.save_unc, mni=args.mni, dicom_seg=args.dicom_seg)
    print(f"{len(report.written)} written, {len(report.skipped)} kept (exist; --overwrite replaces), "
          f"{len(report.failures)} failed -> {args.output}")
    for cid, reason in report.failures:
        print(f"FAILED {cid}: {reason}", file=sys.stderr)
    return EXIT_PROBLEMS if report.failures else EXIT_OK


def evaluate(args) -> int:
    from pipeline.evaluation.report import evaluate

    summary = evaluate(args.datalist, args.predictions, args.output, split=args.split, dataset_dir=args.dataset_dir,
                       tolerance_mm=args.tolerance_mm, run_id=args.run_id, tracking_uri=args.tracking_uri,
                       name=args.name, viewer=args.viewer)
    for name in ("dice", "lesion_f1", "avd_ml", "lesion_count_diff", "hd95_mm"):
        s = summary["metrics"].get(name)
        if s and s["mean"] is not None:
            print(f"{name:>18}: mean {s['mean']:.4f}  median {s['median']:.4f}  95% CI {s['ci95'][0]:.4f}-"
                  f"{s['ci95'][1]:.4f}  (n={s['n']})")
    free = summary["lesion_free"]
    print(f"lesion-free cases with a false lesion: {free['with_false_lesion']} of {free['cases']}")
    vol = summary["volume_agreement"]
    print(f"lesions over {vol['min_true_ml']:g} mL measured within {vol['tolerance']:.0%}: {vol['within']} of "
          f"{vol['cases']} cases")
    coarser = summary["coarser_than_trained"]
    if coarser:
        others = f", the others {coarser['others_dice']:.4f}" if coarser["others_dice"] is not None else ""
        print(f"scans coarser than every training case: {len(coarser['cases'])} (Dice {coarser['dice']:.4f}{others})")
    print(f"report: {Path(args.output) / 'report.html'}")
    for failure in summary["failures"]:
        print(f"FAILED {failure['id']}: {failure['reason']}", file=sys.stderr)
    return EXIT_PROBLEMS if summary["failures"] else EXIT_OK


def reslice(args) -> int:
    from pipeline.data.reslice import reslice_manifest

    thickness = args.thickness if args.thickness or args.coverage else 4.5
    data = reslice_manifest(args.datalist, args.out, thickness, split=args.split, coverage_mm=args.coverage)
    print(f"wrote {len(data['testing'])} case(s) of {data['name']} and {Path(args.out) / 'manifest.json'}")
    return EXIT_OK


def compare(args) -> int:
    from pipeline.evaluation.compare import domain_table, paired_table
    from pipeline.io import atomic_path

    named = {}
    for item in args.evaluations:
        name, sep, folder = item.partition("=")
        if not sep:
            raise SystemExit(f"error: {item!r}: give NAME=EVALUATION_FOLDER")
        named[name] = folder
    table = domain_table(named)
    if args.paired:
        table += "\n" + paired_table(named, args.metric)
    print(table, end="")
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(table)
    return EXIT_OK


def export(args) -> int:
    from pipeline.bundle.export import export_bundle, log_bundle_to_run

    meta = export_bundle(args.checkpoint, args.bundle)
    print(f"exported {args.checkpoint} -> {args.bundle} version {meta['version']}: models/model.pt, model.ts, "
          "model.onnx; metadata, network in/out, TorchScript and ONNX verified")
    if not args.no_mlflow and (run_id := log_bundle_to_run(args.bundle, args.checkpoint)):
        print(f"bundle zip logged to MLflow run {run_id}")
    return EXIT_OK


def mlflow_sync(args) -> int:
    from pipeline.tracking import sync_runs

    copied = sync_runs(args.source, args.target, args.experiment)
    print(f"copied {len(copied)} run(s) to {args.target}")
    return EXIT_OK


def cv(args, overrides: list[str]) -> int:
    from pipeline.training.cross_validation import cv_summary_text, run_cv
    from pipeline.training.experiment import DEFAULT_CONFIG, parse_overrides

    values = parse_overrides(overrides)
    values.setdefault("output_dir", "outputs/cv")
    summary = run_cv(args.config or [DEFAULT_CONFIG], values, folds=args.folds, only_fold=args.fold)
    print(cv_summary_text(summary))
    return EXIT_OK
