"""Command line: ``python -m pipeline <command> ...``.

Parses arguments, calls one library function, maps known errors to one line and an exit code.
Heavy libraries (torch, MONAI, Lightning, MLflow) are imported inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2


def _synth(args) -> int:
    from pipeline.data.synthetic import synthesize

    data = synthesize(args.out, subjects=args.subjects, seed=args.seed, spacing=args.spacing,
                      manifest=args.manifest, folds=args.folds, test_fraction=args.test_fraction)
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

    problems = validate_manifest(args.manifest, dataset_dir=args.dataset_dir)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="Stroke-lesion segmentation on MONAI.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="synthesise ISLES'22-like stroke MRI on ICBM152 anatomy")
    p.add_argument("--out", required=True, help="folder for the BIDS tree")
    p.add_argument("--subjects", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=float, default=2.0, help="DWI/ADC voxel size in mm (default 2)")
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
    p.set_defaults(func=_validate)

    p = sub.add_parser("preview", help="PNG montage of a manifest's cases")
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--dataset-dir")
    p.set_defaults(func=_preview)
    p = sub.add_parser("train", help="train from the bundle's train config; --ID VALUE overrides any config ID",
                       epilog="example: python -m pipeline train --max_epochs 2 --spatial_dims 2 "
                              "--network_def#channels '[8, 16, 32]'")
    p.add_argument("--config", action="append", help="config file (repeat to merge several; default: "
                   "bundles/stroke_mri_segmentation/configs/train.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from output_dir's last checkpoint and MLflow run")
    p.set_defaults(func=_train, takes_overrides=True)
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
