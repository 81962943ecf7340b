"""Robustness: the same test cases stored, gridded and damaged as other scanners and converters leave them.

Each variant rewrites every case of a test manifest (default: the shifted-domain set) and segments it with a
trained model (``--model``, else as ``bench_accuracy.py`` finds one) through the project's batch inference:

* **Same content, other storage or grid** (the Dice should not move): big-endian ``.nii``, a ``.hdr/.img`` NIfTI
  pair, int16 and uint8 with scale factors (nibabel's choice), float64 times 1e6, every value minus twice the
  file's 99th percentile (an offset below 0), z-scored over the field of view, an orientation in the qform only,
  a 0/255 mask, the ADC on a grid of its own (1.5x coarser, rotated 10 degrees, as SimpleITK resamples it), and each
  scan cut to 36 mm around its lesion (a partial-coverage scan; ``pipeline.data.reslice``). Reported: mean Dice and
  the largest change of any case against the untouched files.
* **Damaged** (each case must fail alone, in one line naming its file, and no mask be written): a truncated gzip
  DWI, NaN voxels in the ADC, an empty FLAIR file, an all-zero ADC.

Writes ``benchmarks/results_robustness.json`` and ``.md``. Run: ``make bench`` (or
``python benchmarks/bench_robustness.py --datalist data_manifests/shifted.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def _save(img: nib.spatialimages.SpatialImage, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return str(path)


def big_endian(img, path: Path) -> str:
    data = np.asanyarray(img.dataobj)
    swapped = nib.Nifti1Image(data.astype(data.dtype.newbyteorder(">")), img.affine, img.header.as_byteswapped(">"))
    return _save(swapped, path.with_name(path.name.replace(".nii.gz", ".nii")))


def nifti_pair(img, path: Path) -> str:
    return _save(nib.Nifti1Pair(np.asanyarray(img.dataobj), img.affine, img.header),
                 path.with_name(path.name.replace(".nii.gz", ".img")))


def stored_as(dtype):
    def write(img, path: Path) -> str:
        new = nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine)
        new.set_data_dtype(dtype)  # nibabel picks scl_slope and scl_inter to fit the range
        return _save(new, path)
    return write


def times_1e6(img, path: Path) -> str:
    return _save(nib.Nifti1Image(img.get_fdata() * 1e6, img.affine, dtype=np.float64), path)


def below_zero(img, path: Path) -> str:
    """Every value minus twice the file's 99th percentile: an offset that puts the whole image below 0."""
    data = img.get_fdata()
    return _save(nib.Nifti1Image((data - 2 * np.percentile(data, 99)).astype(np.float32), img.affine), path)


def z_scored(img, path: Path) -> str:
    """Mean 0 and std 1 over the field of view, as a preprocessing tool writes it."""
    data = img.get_fdata()
    return _save(nib.Nifti1Image(((data - data.mean()) / data.std()).astype(np.float32), img.affine), path)


def qform_only(img, path: Path) -> str:
    new = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    new.set_qform(img.affine, code=1)
    new.set_sform(None, code=0)
    return _save(new, path)


def own_grid(img, path: Path, factor: float = 1.5, degrees: float = 10.0) -> str:
    """The file of ``img`` resampled (linear, SimpleITK) onto a grid ``factor`` coarser, turned ``degrees`` about
    the scanner z axis."""
    import SimpleITK as sitk

    source = sitk.ReadImage(img.get_filename(), sitk.sitkFloat32)
    size = [max(2, int(n / factor)) for n in source.GetSize()]
    spacing = [s * factor for s in source.GetSpacing()]
    turn = sitk.Euler3DTransform()
    turn.SetRotation(0, 0, np.deg2rad(degrees))
    direction = np.asarray(turn.GetMatrix()).reshape(3, 3) @ np.asarray(source.GetDirection()).reshape(3, 3)
    centre = np.asarray(source.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in source.GetSize()]))
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetDirection(direction.ravel().tolist())
    reference.SetOrigin((centre - direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Resample(source, reference, sitk.Transform(), sitk.sitkLinear, 0.0), str(path))
    return str(path)


def truncated(img, path: Path) -> str:
    _save(img, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return str(path)


def with_nan(img, path: Path) -> str:
    data = img.get_fdata(dtype=np.float32)
    data[::7, ::5, ::3] = np.nan
    return _save(nib.Nifti1Image(data, img.affine), path)


def empty(img, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def all_zero(img, path: Path) -> str:
    return _save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), path)


def copy(img, path: Path) -> str:
    return _save(img, path)


# name -> (writer of the images, channels it rewrites, writer of the label)
SAME_CONTENT = {
    "big-endian .nii": (big_endian, (0, 1, 2), None),
    ".hdr/.img pair": (nifti_pair, (0, 1, 2), None),
    "int16 with scale factors": (stored_as(np.int16), (0, 1, 2), None),
    "uint8 with scale factors": (stored_as(np.uint8), (0, 1, 2), None),
    "float64 x 1e6": (times_1e6, (0, 1), None),
    "offset below 0 (minus twice the 99th percentile)": (below_zero, (0, 1, 2), None),
    "z-scored over the field of view": (z_scored, (0, 1, 2), None),
    "orientation in the qform only": (qform_only, (0, 1, 2), qform_only),
    "mask stored 0/255": (copy, (), lambda img, path: _save(nib.Nifti1Image(
        (np.asanyarray(img.dataobj) > 0).astype(np.uint8) * 255, img.affine), path)),
    "ADC on its own grid (1.5x coarser, turned 10 degrees)": (own_grid, (1,), None),
}
DAMAGED = {"truncated gzip DWI": (truncated, (0,)), "NaN voxels in the ADC": (with_nan, (1,)),
           "empty FLAIR file": (empty, (2,)), "all-zero ADC": (all_zero, (1,))}
LABEL_THRESHOLD = {"mask stored 0/255": 0.5}


def rewrite(cases: list[dict], out: Path, writer, channels, label_writer=None) -> list[dict]:
    """Every case with the files of ``channels`` (and the label) rewritten by the writers into ``out``."""
    result = []
    for case in cases:
        cid, images = str(case["id"]), list(case["image"])
        for c in channels:
            if c < len(images) and images[c] is not None:
                images[c] = writer(nib.load(images[c]), out / cid / f"image_{c}.nii.gz")
        label = label_writer(nib.load(case["label"]), out / cid / "label.nii.gz") if label_writer else case["label"]
        result.append(dict(case, image=images, label=label))
    return result


def slabs(cases: list[dict], out: Path, coverage_mm: float = 36.0) -> list[dict]:
    """Every case cut to ``coverage_mm`` around its lesion (each file on its own grid)."""
    from pipeline.data.reslice import lesion_centre_z, slab_image

    result = []
    for case in cases:
        cid, label = str(case["id"]), nib.load(case["label"])
        centre = lesion_centre_z(label, nib.load(case["image"][0]))
        images = [None if p is None else _save(slab_image(nib.load(p), centre, coverage_mm),
                                               out / cid / f"image_{i}.nii.gz") for i, p in enumerate(case["image"])]
        result.append(dict(case, image=images, label=_save(slab_image(label, centre, coverage_mm),
                                                           out / cid / "label.nii.gz")))
    return result


def segment(predictor, cases: list[dict], out: Path):
    from pipeline.inference.batch import segment_cases

    return segment_cases(predictor, cases, out, progress=False, lesion_table=False, mni=False)


def dices(cases: list[dict], predictions: Path, threshold: float = 0.5) -> dict[str, float]:
    from pipeline.evaluation.metrics import dice

    out = {}
    for case in cases:
        mask = predictions / f"{case['id']}.nii.gz"
        if mask.is_file():
            truth = np.asanyarray(nib.load(case["label"]).dataobj) >= threshold
            out[str(case["id"])] = float(dice(np.asanyarray(nib.load(mask).dataobj) > 0, truth))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", default=str(ROOT / "data_manifests" / "shifted.json"),
                        help="test manifest whose cases are rewritten (default: the shifted-domain set)")
    parser.add_argument("--model", help="checkpoint or bundle (default: as bench_accuracy.py finds one)")
    parser.add_argument("--training-datalist", default=str(ROOT / "data_manifests" / "synthetic.json"),
                        help="what a model is trained on when there is none")
    parser.add_argument("--output", default=str(HERE / "results_robustness.json"))
    args = parser.parse_args(argv)
    from bench_accuracy import find_model

    from pipeline.data.manifest import select_cases
    from pipeline.inference import Predictor

    model = find_model(args.model, args.training_datalist, 12)
    predictor = Predictor.from_path(model, device="cpu")
    cases = select_cases(args.datalist, "testing")
    rows, damaged = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        segment(predictor, cases, tmp / "untouched_pred")
        base = dices(cases, tmp / "untouched_pred")
        rows.append(dict(variant="untouched", cases=len(base), dice=float(np.mean(list(base.values()))),
                         largest_change=0.0))
        variants = {name: rewrite(cases, tmp / f"v{i}", *spec) for i, (name, spec) in enumerate(SAME_CONTENT.items())}
        variants["cut to 36 mm around the lesion (partial coverage)"] = slabs(cases, tmp / "slab")
        for i, (name, rewritten) in enumerate(variants.items()):
            report = segment(predictor, rewritten, tmp / f"p{i}")
            got = dices(rewritten, tmp / f"p{i}", LABEL_THRESHOLD.get(name, 0.5))
            change = max((abs(got[c] - base[c]) for c in got if c in base), default=float("nan"))
            rows.append(dict(variant=name, cases=len(got), dice=float(np.mean(list(got.values()))) if got else None,
                             largest_change=None if "cut to" in name else change, failures=report.failures))
            print(f"{name}: Dice {rows[-1]['dice']}, {len(report.failures)} failed", flush=True)
        for i, (name, (writer, channels)) in enumerate(DAMAGED.items()):
            broken = rewrite(cases[:1], tmp / f"d{i}", writer, channels) + cases[1:2]
            report = segment(predictor, broken, tmp / f"q{i}")
            failed = dict(report.failures)
            first, second = str(broken[0]["id"]), str(broken[1]["id"]) if len(broken) > 1 else None
            damaged.append(dict(variant=name, refused=first in failed, message=failed.get(first, ""),
                                others_written=second is None or second in report.written,
                                mask_written=(tmp / f"q{i}" / f"{first}.nii.gz").exists()))
            print(f"{name}: {failed.get(first, 'NOT REFUSED')}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    result = dict(model=str(model), datalist=args.datalist, variants=rows, damaged=damaged)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.output).with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


def to_markdown(r: dict) -> str:
    lines = [f"Robustness: {Path(r['datalist']).name}'s cases rewritten, model {r['model']}", "",
             "| variant | cases | mean Dice | largest change of a case against untouched |",
             "| --- | --- | --- | --- |"]
    for v in r["variants"]:
        dice = "" if v["dice"] is None else f"{v['dice']:.4f}"
        change = "(other files)" if v["largest_change"] is None else f"{v['largest_change']:.4f}"
        failed = f" ({len(v.get('failures') or [])} failed)" if v.get("failures") else ""
        lines.append(f"| {v['variant']} | {v['cases']}{failed} | {dice} | {change} |")
    lines += ["", "Damaged files (the first case damaged, the second untouched):", "",
              "| damage | refused in one line | mask written | the other case written | message |",
              "| --- | --- | --- | --- | --- |"]
    for d in r["damaged"]:
        message = d["message"].replace("|", "/").split(": ", 1)[-1]
        lines.append(f"| {d['variant']} | {'yes' if d['refused'] else 'NO'} | {'YES' if d['mask_written'] else 'no'} | "
                     f"{'yes' if d['others_written'] else 'NO'} | {message} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
