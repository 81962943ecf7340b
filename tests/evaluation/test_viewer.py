"""The report's NiiVue viewer: one self-contained page, drawn in a real headless Chromium without console errors."""

import io
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import oblique_lps_case, write_nifti
from pipeline.evaluation.report import evaluate
from pipeline.evaluation.viewer import write_viewer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _study(tmp_path, n=2):
    """``n`` labelled oblique LPS cases, each predicted as its own truth shifted by one voxel."""
    cases = []
    for k in range(n):
        case, blob = oblique_lps_case(tmp_path / "in", name=f"case{k}")
        ref = nib.load(case["label"])
        write_nifti(tmp_path / "pred" / f"case{k}.nii.gz", np.roll(blob, 1, axis=0).astype(np.uint8), ref.affine)
        cases.append(case)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": cases}))
    return manifest, cases


def test_report_embeds_niivue_and_every_case_so_it_opens_offline(tmp_path):
    manifest, _ = _study(tmp_path)
    evaluate(manifest, tmp_path / "pred", tmp_path / "eval", progress=False)
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "niivue" in page.lower() and '<script src=' not in page  # the library is inline, no file beside it
    assert page.count('<option value="case') == 2  # both cases selectable


def test_large_studies_get_one_page_per_case_linked_from_the_report(tmp_path):
    manifest, cases = _study(tmp_path, n=3)
    section = write_viewer(cases, tmp_path / "pred", tmp_path / "eval", max_embedded=2)
    for case in cases:
        page = (tmp_path / "eval" / "viewer" / f"{case['id']}.html").read_text()
        assert f'href="viewer/{case["id"]}.html"' in section and '"' + case["id"] + '"' in page
    assert (tmp_path / "eval" / "viewer" / "niivue.umd.js").stat().st_size > 100_000


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: `make install-browser` installs it "
                                             "(Debian package chromium)")
def test_viewer_draws_the_case_and_its_prediction_in_headless_chromium(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency: make install")
    manifest, _ = _study(tmp_path)
    evaluate(manifest, tmp_path / "pred", tmp_path / "eval", progress=False)
    problems = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda err: problems.append(str(err)))
        page.goto((tmp_path / "eval" / "report.html").as_uri())
        page.wait_for_function("document.body.dataset.viewer === 'ready'", timeout=60_000)
        page.wait_for_timeout(300)
        first = page.locator("#viewer-canvas").screenshot(path=str(tmp_path / "case0.png"))
        page.evaluate("document.body.dataset.viewer = ''")
        page.select_option("#viewer-select", "case1")
        page.wait_for_function("document.body.dataset.viewer === 'ready'", timeout=60_000)
        shown = page.locator("#viewer-case").text_content()
        browser.close()
    assert not problems, problems
    assert shown == "case1"
    pixels = np.asarray(Image.open(io.BytesIO(first)).convert("RGB"), dtype=float)
    assert pixels.std() > 10, "the canvas is blank"
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    assert red.sum() > 20, "the prediction overlay (red) is not drawn"
