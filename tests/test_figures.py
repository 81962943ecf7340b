"""Figure helpers: the slice a reader wants to see, and PNGs written whole."""

import numpy as np
from PIL import Image

from pipeline.figures import lesion_slice, overlay_grid, save_figure


def test_lesion_slice_prefers_the_truth_then_the_prediction_then_the_middle():
    truth, pred = np.zeros((8, 8, 10), bool), np.zeros((8, 8, 10), bool)
    pred[2:4, 2:4, 7] = True
    assert lesion_slice(truth, pred) == 7
    truth[1:6, 1:6, 2] = True
    truth[1:2, 1:2, 5] = True
    assert lesion_slice(truth, pred) == 2  # the slice with the most lesion
    assert lesion_slice(None, np.zeros((8, 8, 10), bool)) == 5
    assert lesion_slice(truth, axis=0) in range(1, 6)


def test_overlay_grid_saves_a_png_with_one_panel_per_case(tmp_path):
    image = np.random.default_rng(0).random((20, 24))
    truth = np.zeros((20, 24), bool)
    truth[5:9, 5:9] = True
    fig = overlay_grid([(image, truth, truth), (image, None, None)], "two cases", names=["a", "b"])
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["a", "b"]
    path = save_figure(fig, tmp_path / "sub" / "grid.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["grid.png"]  # no temporary file left
