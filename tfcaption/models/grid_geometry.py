"""Where each cell of a backbone's feature grid looks in the image.

A cell's receptive field is centred where the convolutions and poolings put
it, not at the centre of the image's (i / h, (i + 1) / h) slice. With "valid"
layers the two differ: SqueezeNet's pool3 grid at 128 px has 15 rows centred at
7.5, 15.5, ..., 119.5 px (stride 8, offset 7.5), while equal slices would put
them at 4.3 ... 123.7, up to half a cell away at the borders. Heatmaps and the
pointing game place each cell's value at its true centre.

Standard receptive-field arithmetic, per spatial axis, in input pixels (pixel k
spans [k, k + 1), so its centre is k + 0.5): a layer with kernel k, stride s and
`pad` pixels added before the input maps (start, jump) to
    start' = start + ((k - 1) / 2 - pad) * jump,   jump' = jump * s.
"""

from __future__ import annotations

import math

import keras
import numpy as np

_SHAPE_PRESERVING = (keras.layers.Activation, keras.layers.BatchNormalization,
                     keras.layers.ReLU, keras.layers.Dropout, keras.layers.Rescaling,
                     keras.layers.Normalization, keras.layers.LayerNormalization)
_MERGING = (keras.layers.Concatenate, keras.layers.Add, keras.layers.Multiply,
            keras.layers.Average, keras.layers.Maximum)


def _pad_before(padding: str, size: int, kernel: int, stride: int, dilation: int) -> int:
    """Pixels TensorFlow adds before the input ("same": half of the total, rounded down)."""
    if padding == "valid":
        return 0
    extent = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + extent - size, 0)
    return total // 2


def _axis(start: float, jump: float, size: int, kernel: int, stride: int, dilation: int,
          padding: str) -> tuple[float, float, int]:
    pad = _pad_before(padding, size, kernel, stride, dilation)
    extent = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride) if padding == "same" else (size - extent) // stride + 1
    return start + ((extent - 1) / 2 - pad) * jump, jump * stride, out


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _geometry(layer, inputs):
    """(start_y, jump_y, rows, start_x, jump_x, cols) after `layer`."""
    sy, jy, ny, sx, jx, nx = inputs[0]
    if isinstance(layer, _MERGING):
        if any(g != inputs[0] for g in inputs[1:]):
            raise ValueError(f"{layer.name} merges grids with different geometry")
        return inputs[0]
    if isinstance(layer, keras.layers.ZeroPadding2D):
        (top, _), (left, _) = layer.padding
        return sy - top * jy, jy, ny + sum(layer.padding[0]), sx - left * jx, jx, \
            nx + sum(layer.padding[1])
    if hasattr(layer, "pool_size") or hasattr(layer, "kernel_size"):
        kernel = _pair(getattr(layer, "kernel_size", None) or layer.pool_size)
        strides = _pair(layer.strides or kernel)
        dilation = _pair(getattr(layer, "dilation_rate", 1))
        padding = layer.padding.lower()
        sy, jy, ny = _axis(sy, jy, ny, kernel[0], strides[0], dilation[0], padding)
        sx, jx, nx = _axis(sx, jx, nx, kernel[1], strides[1], dilation[1], padding)
        return sy, jy, ny, sx, jx, nx
    if isinstance(layer, _SHAPE_PRESERVING):
        return inputs[0]
    raise ValueError(f"no receptive-field rule for layer {layer.name} "
                     f"({layer.__class__.__name__})")


def cell_centres(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    """A functional backbone -> (row centres (h,), column centres (w,)) of its output
    grid, as fractions of the input image's height and width (0 = top/left edge)."""
    _, height, width, _ = model.input.shape
    known = {id(model.input): (0.5, 1.0, height, 0.5, 1.0, width)}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        ins = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        if any(id(t) not in known for t in ins):
            raise ValueError(f"{layer.name}: layers must come in graph order")
        known[id(layer.output)] = _geometry(layer, [known[id(t)] for t in ins])
    sy, jy, ny, sx, jx, nx = known[id(model.output)]
    if (ny, nx) != tuple(model.output.shape[1:3]):
        raise ValueError(f"receptive-field walk gave a {ny}x{nx} grid, the model "
                         f"{tuple(model.output.shape[1:3])}")
    return (sy + jy * np.arange(ny)) / height, (sx + jx * np.arange(nx)) / width

