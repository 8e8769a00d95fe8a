"""The one image-grid helper: PNG size from the layout, overlays drawn, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from vce.image_grid import TITLE_INCHES, Panel, image_grid, percentile_window


def _img(seed: int = 0, shape=(24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


@pytest.mark.parametrize(
    ("nrows", "ncols", "panel_size", "dpi", "title"),
    [(1, 1, 2.0, 100, None), (2, 3, 1.5, 80, None), (3, 2, (2.4, 2.5), 110, "a title"), (2, 4, 2.0, 72, "t")],
)
def test_png_size_follows_the_layout(tmp_path, nrows, ncols, panel_size, dpi, title):
    rows = [[Panel(_img(r * ncols + c)) for c in range(ncols)] for r in range(nrows)]
    out = image_grid(rows, tmp_path / "g.png", col_titles=[f"c{c}" for c in range(ncols)],
                     row_labels=[f"r{r}" for r in range(nrows)], title=title, panel_size=panel_size, dpi=dpi)
    assert out == tmp_path / "g.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = (panel_size, panel_size) if np.isscalar(panel_size) else panel_size
    height, width = imread(str(out)).shape[:2]
    assert width == int(w * ncols * dpi)  # matplotlib truncates inches * dpi
    assert height == int((h * nrows + (TITLE_INCHES if title else 0.0)) * dpi)
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]  # atomic: no temporary left behind


def test_overlay_changes_pixels_and_output_is_deterministic(tmp_path):
    base = np.tile(np.linspace(0, 1, 40), (40, 1))
    mask = np.zeros_like(base)
    mask[10:30, 10:30] = 1
    plain = image_grid([[Panel(base, 0, 1)]], tmp_path / "plain.png")
    again = image_grid([[Panel(base, 0, 1)]], tmp_path / "again.png")
    over = image_grid([[Panel(base, 0, 1, overlay=mask)]], tmp_path / "over.png")
    assert plain.read_bytes() == again.read_bytes()  # no version / date metadata
    a, b = imread(str(plain)), imread(str(over))
    assert a.shape == b.shape
    diff = np.abs(a - b).sum(-1) > 1e-3
    assert diff.any()
    red = b[diff]
    assert (red[:, 0] >= red[:, 1]).all() and (red[:, 0] >= red[:, 2]).all()  # tinted red


def test_empty_cells_colour_bar_and_own_titles(tmp_path):
    rows = [[Panel(_img(), colorbar=True, cmap="magma", title="own"), None], [Panel(_img(1)), Panel(_img(2))]]
    out = image_grid(rows, tmp_path / "g.png", col_titles=["a", "b"])
    assert imread(str(out)).shape[:2] == (400, 400)


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [[]],
        [[Panel(np.zeros((4, 4)))], [Panel(np.zeros((4, 4))), Panel(np.zeros((4, 4)))]],  # ragged
        [[np.zeros((4, 4))]],  # not a Panel
    ],
)
def test_bad_grids_raise(tmp_path, rows):
    with pytest.raises(ValueError):
        image_grid(rows, tmp_path / "g.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("image", [np.zeros(5), np.zeros((2, 3, 4)), np.zeros((0, 3)), 1.0])
def test_non_2d_panel_raises(image):
    with pytest.raises(ValueError, match="2-D"):
        Panel(image)


def test_bad_labels_overlay_and_sizes_raise(tmp_path):
    one = [[Panel(np.zeros((4, 4)))]]
    with pytest.raises(ValueError, match="overlay shape"):
        Panel(np.zeros((4, 4)), overlay=np.zeros((4, 5)))
    with pytest.raises(ValueError, match="col_titles"):
        image_grid(one, tmp_path / "g.png", col_titles=["a", "b"])
    with pytest.raises(ValueError, match="row_labels"):
        image_grid(one, tmp_path / "g.png", row_labels=[])
    with pytest.raises(ValueError, match="positive"):
        image_grid(one, tmp_path / "g.png", panel_size=0)


def test_percentile_window():
    assert percentile_window(np.arange(101.0)) == (1.0, 99.0)
    assert percentile_window(np.full((3, 3), 5.0)) == (5.0, 6.0)  # flat image: a unit window
