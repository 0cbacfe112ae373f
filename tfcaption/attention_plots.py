"""Attention heatmaps from a SavedModel's outputs alone: the image, its words, their maps.

Alignment: every backbone squashes the whole image to its square input (no
crop), so a position in the grid is the same relative position in the original
H x W image. Each cell's value is placed at its receptive field's centre
(`cell_centres`, from the SavedModel's assets.extra/tfcaption.json) and
interpolated between centres, so a peak lands where the model looked. Without
centres the grid is taken as equal slices, each value at its slice's centre.
"""

from __future__ import annotations

import io as stdio
import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tfcaption import io  # noqa: E402
from tfcaption.attention_correctness import grid_centres  # noqa: E402


def load_rgb(image) -> np.ndarray:
    """A path, encoded bytes or an array -> (H, W, 3) uint8."""
    if isinstance(image, np.ndarray):
        return image.astype(np.uint8)
    blob = image if isinstance(image, bytes) else io.read_bytes(image)
    with Image.open(stdio.BytesIO(blob)) as img:
        return np.asarray(img.convert("RGB"))


def _axis_weights(centres: np.ndarray, size: int) -> np.ndarray:
    """(size, n): linear interpolation weights from n cell centres (fractions of the
    image) to the size pixel centres; constant beyond the outermost centres."""
    eye = np.eye(len(centres))
    pixels = (np.arange(size) + 0.5) / size
    return np.stack([np.interp(pixels, centres, row) for row in eye], axis=1)


def upsample(attention: np.ndarray, height: int, width: int, centres=None) -> np.ndarray:
    """(h, w) attention -> (height, width), smooth (bilinear between cell centres),
    aligned as the module says. centres: {"rows": (h,), "cols": (w,)} or None."""
    rows, cols = grid_centres(*attention.shape, centres)
    return (_axis_weights(rows, height) @ np.asarray(attention, np.float64)
            @ _axis_weights(cols, width).T).astype(np.float32)


def word_maps(words: list[str], attention: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Pairs each word with its step's (h, w) map; attention is (T, h, w), T >= len(words)."""
    return [(w, attention[t]) for t, w in enumerate(words)]


def caption_words(caption: str, steps: int) -> list[str]:
    """The words a caption's attention steps belong to: its words, then <end>
    (the step that ended the caption looked somewhere too), at most `steps`."""
    return (caption.split() + ["<end>"])[:steps]


def figure(image, words: list[str], attention: np.ndarray, columns: int = 4,
           cmap: str = "inferno", alpha: float = 0.6, title: str | None = None,
           panel_inches: float = 2.6, centres: dict | None = None):
    """One figure for one image: the image, then one panel per word (the word as
    its title) with that step's map upsampled over the image, and one colour
    bar. attention: (T, h, w), T >= len(words), any grid and any image aspect.

    All panels share one colour scale, so a brighter map means more attention
    on that spot than on the brightest spot of a dimmer map. The default colour
    map, inferno, is perceptually uniform and still reads in greyscale print.
    """
    rgb = load_rgb(image)
    height, width = rgb.shape[:2]
    maps = [(w, upsample(a, height, width, centres)) for w, a in word_maps(words, attention)]
    panels = 1 + len(maps)
    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    # Panels keep the image's aspect, so a wide photo gets no empty bands.
    scale = panel_inches / max(height, width)
    fig, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained",
                             figsize=(columns * width * scale + 1.0,
                                      rows * (height * scale + 0.35) + (0.5 if title else 0)))
    vmax = max((float(m.max()) for _, m in maps), default=1.0) or 1.0
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("image", fontsize=11)
    shown = None
    for ax, (word, heat) in zip(axes.flat[1:], maps):
        ax.imshow(rgb)
        # The map's pixels sit exactly on the image's (same extent), so the
        # upsampling's cell-centre alignment carries through to the picture.
        shown = ax.imshow(np.clip(heat, 0.0, None), cmap=cmap, alpha=alpha, vmin=0.0, vmax=vmax,
                          extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        ax.set_title(word, fontsize=11)
    for ax in axes.flat:
        ax.axis("off")
    if shown is not None:
        bar = fig.colorbar(shown, ax=list(axes.flat), fraction=0.03, pad=0.02, shrink=0.9)
        bar.set_label("attention weight")
        bar.solids.set_alpha(1.0)  # the scale itself, not washed out like the overlay
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=12)
    return fig


def caption_figure(image, caption: str, attention: np.ndarray, **kwargs):
    """figure() for a caption as the SavedModel returns it; attention (T, h, w)."""
    return figure(image, caption_words(caption, attention.shape[0]), attention, title=caption,
                  **kwargs)


def jpeg_bytes(fig, dpi: int = 110, quality: int = 85) -> bytes:
    """The figure as JPEG bytes, closed afterwards (for pages that embed images):
    photo overlays are ~8x smaller as JPEG than as PNG at no visible loss."""
    buffer = stdio.BytesIO()
    fig.savefig(buffer, format="jpeg", dpi=dpi, pil_kwargs={"quality": quality})
    plt.close(fig)
    return buffer.getvalue()


def save_figure(path_stem: str, image, caption: str, attention: np.ndarray,
                formats=("png", "pdf"), dpi: int = 110, centres: dict | None = None
                ) -> list[str]:
    """Writes <path_stem>.png and .pdf (vector, for papers) for one image;
    attention (T, h, w) as the SavedModel returns it; centres as in upsample."""
    fig = caption_figure(image, caption, attention, centres=centres)
    paths = []
    for fmt in formats:
        paths.append(f"{path_stem}.{fmt}")
        buffer = stdio.BytesIO()  # matplotlib writes local files only; gfile writes anywhere
        fig.savefig(buffer, format=fmt, dpi=dpi)
        io.write_bytes(paths[-1], buffer.getvalue())
    plt.close(fig)
    return paths
