"""An interactive viewer for the report: NiiVue showing each case's first image with the prediction (red) and,
where known, the truth (green) as overlays, in three planes, the crosshair on the largest lesion.

NiiVue's JavaScript ships inside nilearn's wheel and the volumes are embedded as base64 NIfTI, so the page is
one file that opens offline. The image is stored as uint8 (0.5-99.5 percentile window) and, above
``max_voxels``, subsampled by 2 along each axis; masks stay on their own grid (NiiVue resamples overlays).
Studies with more than ``max_embedded`` cases get one page per case (``viewer/<id>.html``, sharing
``viewer/niivue.umd.js``) linked from the report instead, so the report stays small.

Example:
    >>> section = viewer_section({"sub-01": case_volumes(case, "outputs/predictions")})  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.io import atomic_path

__all__ = ["niivue_js", "case_volumes", "viewer_section", "write_viewer"]

_SCRIPT = """
const CASES = __CASES__;
const nv = new niivue.Niivue({backColor: [0, 0, 0, 1], show3Dcrosshair: true, isColorbar: false,
                              crosshairColor: [1, 1, 0, 0.6]});
const ready = nv.attachTo("viewer-canvas");
function volume(base64, name, options) { return niivue.NVImage.loadFromBase64({base64, name, ...options}); }
async function showCase(id) {
  await ready;
  const c = CASES[id];
  while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1]);
  const layers = [await volume(c.image, id + "_image.nii.gz", {colormap: "gray", cal_min: 0, cal_max: 255})];
  if (c.truth) layers.push(await volume(c.truth, id + "_truth.nii.gz",
                                        {colormap: "green", opacity: 0.45, cal_min: 0.5, cal_max: 1}));
  layers.push(await volume(c.pred, id + "_pred.nii.gz", {colormap: "red", opacity: 0.6, cal_min: 0.5, cal_max: 1}));
  for (const layer of layers) nv.addVolume(layer);
  nv.setSliceType(nv.sliceTypeMultiplanar);
  if (c.focus) { nv.scene.crosshairPos = nv.mm2frac(c.focus); nv.updateGLVolume(); }
  document.getElementById("viewer-case").textContent = id;
  document.body.dataset.viewer = "ready";
}
const select = document.getElementById("viewer-select");
if (select) select.addEventListener("change", (e) => showCase(e.target.value));
showCase(Object.keys(CASES)[0]).catch((err) => console.error("viewer: " + err));
"""

_STYLE = ("<style>#viewer-box{width:100%;height:460px;background:#000}"
          ".legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}</style>")


def niivue_js() -> str:
    """NiiVue's UMD build from nilearn's wheel (no network)."""
    import nilearn

    path = Path(nilearn.__file__).parent / "_assets" / "js" / "niivue.umd.js"
    if not path.is_file():
        raise FileNotFoundError(f"NiiVue is not in this nilearn ({nilearn.__version__}): {path}")
    return path.read_text(encoding="utf-8")


def _nifti_b64(data: np.ndarray, affine: np.ndarray) -> str:
    img = nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.uint8), affine)
    img.header.set_xyzt_units("mm")
    return base64.b64encode(gzip.compress(img.to_bytes(), compresslevel=6)).decode()


def _window(image: np.ndarray) -> np.ndarray:
    values = image[np.isfinite(image) & (image != 0)]
    if not len(values):
        return np.zeros(image.shape, np.uint8)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return np.clip((np.nan_to_num(image) - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)


def case_volumes(case: dict, predictions: str | Path, max_voxels: int = 4_000_000) -> dict:
    """One case's viewer data: base64 NIfTI of its first image (uint8), prediction and truth, and the focus
    (mm, RAS) at the centre of its largest predicted (else true) lesion."""
    img = nib.load(case["image"][0])
    image = np.asarray(img.dataobj, dtype=np.float32)
    image = image[..., -1] if image.ndim == 4 else image
    affine = np.asarray(img.affine, float)
    if image.size > max_voxels:
        image, affine = image[::2, ::2, ::2], affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    pred_img = nib.load(Path(predictions) / f"{case['id']}.nii.gz")
    pred = np.asarray(pred_img.dataobj) > 0
    truth_img = nib.load(case["label"]) if case.get("label") else None
    truth = np.asarray(truth_img.dataobj) > 0.5 if truth_img is not None else None
    focus = _largest_centre(pred, pred_img.affine)
    if focus is None and truth is not None:
        focus = _largest_centre(truth, truth_img.affine)
    return dict(image=_nifti_b64(_window(image), affine), pred=_nifti_b64(pred, pred_img.affine),
                truth=_nifti_b64(truth, truth_img.affine) if truth is not None else None, focus=focus)


def _largest_centre(mask: np.ndarray, affine: np.ndarray) -> list[float] | None:
    import cc3d

    if not mask.any():
        return None
    largest = cc3d.largest_k(mask, k=1, connectivity=26) > 0
    centre = np.argwhere(largest).mean(0)
    return [round(float(v), 1) for v in np.asarray(affine)[:3, :3] @ centre + np.asarray(affine)[:3, 3]]


def viewer_section(volumes: dict[str, dict], script_src: str | None = None) -> str:
    """HTML of the viewer: a case selector, the canvas and the scripts (NiiVue inline unless ``script_src``)."""
    options = "".join(f'<option value="{html.escape(cid)}">{html.escape(cid)}</option>' for cid in volumes)
    niivue = f'<script src="{html.escape(script_src)}"></script>' if script_src else \
        "<script>" + niivue_js().replace("</script", "<\\/script") + "</script>"
    cases = json.dumps(volumes).replace("</", "<\\/")
    legend = ('<span class="legend"><span style="background:#f00"></span>prediction'
              '<span style="background:#0c0"></span>truth</span>')
    select = f'<select id="viewer-select">{options}</select>' if len(volumes) > 1 else ""
    return (f'{_STYLE}<div id="viewer"><p>{select} <b id="viewer-case"></b>{legend} '
            "(drag to move the crosshair, scroll to change slice)</p>"
            f'<div id="viewer-box"><canvas id="viewer-canvas"></canvas></div></div>{niivue}<script>'
            + _SCRIPT.replace("__CASES__", cases) + "</script>")


def write_viewer(cases: list[dict], predictions: str | Path, output: str | Path, max_embedded: int = 20) -> str:
    """The report's viewer section: embedded for up to ``max_embedded`` cases, else links to one page per case
    under ``output/viewer``. Cases whose files cannot be read are left out."""
    output = Path(output)
    if len(cases) <= max_embedded:
        return viewer_section({str(c["id"]): case_volumes(c, predictions) for c in cases})
    folder = output / "viewer"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "niivue.umd.js") as tmp:
        Path(tmp).write_text(niivue_js(), encoding="utf-8")
    links = []
    for case in cases:
        cid = str(case["id"])
        page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(cid)}</title></head>'
                f'<body style="font-family:sans-serif">'
                + viewer_section({cid: case_volumes(case, predictions)}, "niivue.umd.js") + "</body></html>")
        with atomic_path(folder / f"{cid}.html") as tmp:
            Path(tmp).write_text(page, encoding="utf-8")
        links.append(f'<a href="viewer/{html.escape(cid)}.html">{html.escape(cid)}</a>')
    return f"<p>{len(cases)} cases, one viewer page each: {' · '.join(links)}</p>"
