"""Attention heatmaps from a SavedModel's outputs alone: the image, its words, their maps.

Alignment: every backbone squashes the whole image to its square input (no
crop), so attention cell (i, j) of an h x w grid covers rows [i*H/h, (i+1)*H/h)
and columns [j*W/w, (j+1)*W/w) of the original H x W image. Upsampling with
half-pixel centres (PIL's resize) keeps each cell's value at that cell's centre,
so a peak lands where the model looked.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def load_rgb(image) -> np.ndarray:
    """A path, encoded bytes or an array -> (H, W, 3) uint8."""
    if isinstance(image, np.ndarray):
        return image.astype(np.uint8)
    source = io.BytesIO(image) if isinstance(image, bytes) else image
    with Image.open(source) as img:
        return np.asarray(img.convert("RGB"))


def upsample(attention: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) attention -> (height, width), smooth (bicubic), aligned as the module says."""
    grid = Image.fromarray(np.asarray(attention, np.float32), mode="F")
    return np.asarray(grid.resize((width, height), Image.BICUBIC), np.float32)


def word_maps(words: list[str], attention: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Pairs each word with its step's (h, w) map; attention is (T, h, w), T >= len(words)."""
    return [(w, attention[t]) for t, w in enumerate(words)]


def figure(image, words: list[str], attention: np.ndarray, columns: int = 4,
           cmap: str = "jet", alpha: float = 0.5, title: str | None = None):
    """One figure: the image, then one panel per word with its heatmap overlaid,
    a shared colour bar. attention: (T, h, w) with T >= len(words)."""
    rgb = load_rgb(image)
    height, width = rgb.shape[:2]
    maps = [(w, upsample(a, height, width)) for w, a in word_maps(words, attention)]
    panels = 1 + len(maps)
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    vmax = max((float(m.max()) for _, m in maps), default=1.0) or 1.0
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title(title or "image", fontsize=10)
    shown = None
    for ax, (word, heat) in zip(axes.flat[1:], maps):
        ax.imshow(rgb)
        shown = ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=vmax,
                          extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        ax.set_title(word, fontsize=12)
    for ax in axes.flat:
        ax.axis("off")
    if shown is not None:
        fig.colorbar(shown, ax=list(axes.flat), fraction=0.02, pad=0.01, label="attention")
    return fig


def save_figure(path_stem: str, image, caption: str, attention: np.ndarray,
                formats=("png", "pdf")) -> list[str]:
    """Writes <path_stem>.png and .pdf for one image; attention (T, h, w)."""
    words = caption.split() + ["<end>"]
    words = words[: attention.shape[0]]
    fig = figure(image, words, attention, title=caption)
    paths = []
    for fmt in formats:
        paths.append(f"{path_stem}.{fmt}")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths
