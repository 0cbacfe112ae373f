"""Heatmaps land where the model looked: upsampling, then the rendered picture itself."""

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from tfcaption import attention_plots

GRID = (4, 5)  # h, w: a grid that is not square either
HEIGHT, WIDTH = 60, 100  # a landscape image, squashed to the backbone's square


def peaked(row, col, grid=GRID):
    """A softmax-like map with its peak at (row, col) and some mass everywhere."""
    rng = np.random.default_rng(row * 10 + col)
    att = rng.uniform(0.0, 0.2, size=grid).astype(np.float32)
    att[row, col] = 1.0
    return att / att.sum()


def cell_region(row, col, grid=GRID, height=HEIGHT, width=WIDTH):
    """Pixel rows and columns that cell (row, col) covers in the squashed-back image."""
    h, w = grid
    return ((row * height / h, (row + 1) * height / h),
            (col * width / w, (col + 1) * width / w))


@pytest.mark.parametrize("row,col", [(1, 3), (0, 0), (3, 4), (2, 1)])
def test_upsampled_peak_lies_in_the_peak_cell(row, col):
    heat = attention_plots.upsample(peaked(row, col), HEIGHT, WIDTH)
    assert heat.shape == (HEIGHT, WIDTH)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    (y0, y1), (x0, x1) = cell_region(row, col)
    # Pixel centres (y + 0.5, x + 0.5) inside the cell's region.
    assert y0 <= y + 0.5 < y1 and x0 <= x + 0.5 < x1


def test_upsampled_peak_sits_at_the_cells_receptive_field_centre():
    """A valid-padding grid: cell centres pulled in from the border, not at slice centres."""
    centres = {"rows": [0.2, 0.4, 0.6, 0.8], "cols": [0.1, 0.3, 0.5, 0.7, 0.9]}
    for row, col in [(1, 1), (2, 3)]:
        heat = attention_plots.upsample(peaked(row, col), HEIGHT, WIDTH, centres)
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        assert abs((y + 0.5) / HEIGHT - centres["rows"][row]) <= 0.5 / HEIGHT + 1e-9
        assert abs((x + 0.5) / WIDTH - centres["cols"][col]) <= 0.5 / WIDTH + 1e-9
    # Beyond the outermost centres the map keeps its border value.
    heat = attention_plots.upsample(peaked(0, 0), HEIGHT, WIDTH, centres)
    assert np.allclose(heat[0], heat[int(0.2 * HEIGHT) - 1])


def hottest_point(png: bytes, fig, ax, cmap="inferno", alpha=0.6, grey=128):
    """The image coordinates (x, y) of the hottest overlay pixels of panel `ax`
    in a rendered PNG: each pixel's heat is read back by matching its colour to
    the colour map blended over the grey image, as the figure drew it."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32)
    lut = plt.get_cmap(cmap)(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0
    blended = alpha * lut + (1.0 - alpha) * grey
    box = ax.get_window_extent()  # display pixels, origin at the bottom left
    top = pixels.shape[0]
    rows = np.arange(int(top - box.y1) + 2, int(top - box.y0) - 2)
    cols = np.arange(int(box.x0) + 2, int(box.x1) - 2)
    panel = pixels[rows[:, None], cols[None, :]]
    distance = ((panel[:, :, None, :] - blended[None, None]) ** 2).sum(-1)
    heat = distance.argmin(-1)
    assert distance.min(-1).max() < 30.0, "panel pixels are not colour-map colours"
    ys, xs = np.nonzero(heat >= heat.max() - 3)
    # Display pixel centres -> data coordinates, which are image pixel coordinates.
    display = np.stack([cols[xs] + 0.5, top - (rows[ys] + 0.5)], axis=1)
    data = ax.transData.inverted().transform(display)
    return data[:, 0].mean(), data[:, 1].mean()


def test_rendered_heatmap_is_hottest_over_the_attended_cell():
    grey = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)  # so colour = heat alone
    fig = attention_plots.figure(grey, ["circle"], peaked(1, 3)[None])
    ax = fig.axes[1]
    assert ax.get_title() == "circle"
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=fig.dpi)  # same dpi: display pixels = PNG pixels
    x, y = hottest_point(out.getvalue(), fig, ax)
    plt.close(fig)
    (y0, y1), (x0, x1) = cell_region(1, 3)
    # Image pixel (i, j) is centred on data (j, i): a cell covers [x0 - 0.5, x1 - 0.5).
    assert x0 - 0.5 <= x < x1 - 0.5 and y0 - 0.5 <= y < y1 - 0.5
    # Well inside, not merely at an edge of the cell.
    assert abs(x - ((x0 + x1) / 2 - 0.5)) < (x1 - x0) / 4
    assert abs(y - ((y0 + y1) / 2 - 0.5)) < (y1 - y0) / 4


def test_save_figure_writes_png_and_pdf_one_panel_per_word(tmp_path):
    image = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(image)
    attention = np.stack([peaked(i % 4, i) for i in range(5)])  # (T=5, 4, 5)
    paths = attention_plots.save_figure(str(tmp_path / "photo"), str(image), "a red circle",
                                        attention)
    assert paths == [str(tmp_path / "photo.png"), str(tmp_path / "photo.pdf")]
    assert (tmp_path / "photo.pdf").read_bytes().startswith(b"%PDF")
    with Image.open(tmp_path / "photo.png") as png:
        assert png.format == "PNG" and png.width > 400
    # The caption's words, then <end>: attention steps after it are padding.
    assert attention_plots.caption_words("a red circle", 5) == ["a", "red", "circle", "<end>"]
    assert attention_plots.caption_words("a red circle", 2) == ["a", "red"]
    fig = attention_plots.caption_figure(str(image), "a red circle", attention)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    plt.close(fig)
    assert titles == ["image", "a", "red", "circle", "<end>"]
