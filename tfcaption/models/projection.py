"""The feature grid as every decoder attends over it: each location's channels
normalised, then projected (one location alone, or a k x k convolution).

Shared by the decoders (GRU, transformer), each of which keeps the two layers
as attributes of its own (`feature_norm`, `feature_proj`), so their checkpoint
names stay those of the GRU decoder that came first.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def feature_layers(feature_dim: int, feature_kernel: int = 1, grid_shape=None):
    """-> (feature_norm, feature_proj), unbuilt: what `project_features` reads.

    Raw backbone scales differ by orders of magnitude (random weights give
    ~1e-3, ImageNet VGG ~1e2): each location's channels are normalised first.
    The norm's scale and offset are folded into feature_proj when projecting
    (see project_features): the same function and gradients, without
    feature_proj's input gradient (~20% of a demo step).
    """
    if feature_kernel > 1 and not grid_shape:
        raise ValueError("feature_kernel > 1 needs the grid's (height, width)")
    norm = keras.layers.LayerNormalization(name="feature_norm")
    if feature_kernel > 1:
        proj = keras.layers.Conv2D(feature_dim, feature_kernel, padding="same",
                                   activation="relu", name="feature_proj")
    else:
        proj = keras.layers.Dense(feature_dim, activation="relu", name="feature_proj")
    return norm, proj


def project_features(features, norm, proj, feature_kernel: int = 1, grid_shape=None):
    """features (batch, locations, channels) -> proj(norm(features)) (batch,
    locations, feature_dim), with the norm's scale and offset folded into the
    projection: proj(gamma * x + beta) = proj'(x) + proj(beta), proj' having its
    input channels scaled by gamma.

    Why: the normalised features x are constants of the cache, so nothing
    then needs proj's input gradient, which unfolded costs as much as its
    weight gradient; gamma's gradient comes through the scaled kernel instead.
    proj(beta) is the projection of a constant grid (zero padding included, so
    border cells get what they got unfolded): one image's work, broadcast over
    the batch. (norm is still built and checkpointed as a layer: its variables
    keep their names.)
    """
    if not norm.built:
        norm.build(features.shape)
    if not proj.built:
        channels = features.shape[-1]
        proj.build((None, *grid_shape[:2], channels) if feature_kernel > 1 else (None, channels))
    dtype = proj.compute_dtype
    x = tf.cast(features, tf.float32)
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    x = tf.cast((x - mean) * tf.math.rsqrt(variance + norm.epsilon), dtype)
    gamma, beta = tf.cast(norm.gamma, dtype), tf.cast(norm.beta, dtype)
    kernel, bias = tf.cast(proj.kernel, dtype), tf.cast(proj.bias, dtype)
    if feature_kernel > 1:  # a convolution over the grid, back to locations
        h, w = grid_shape[:2]
        grid = tf.reshape(x, [-1, h, w, x.shape[-1]])
        scaled = tf.nn.conv2d(grid, kernel * gamma[:, None], 1, "SAME")
        offset = tf.nn.conv2d(tf.broadcast_to(beta, [1, h, w, beta.shape[0]]), kernel, 1,
                              "SAME")
        return tf.reshape(tf.nn.relu(scaled + offset + bias), [-1, h * w, kernel.shape[-1]])
    return tf.nn.relu(tf.matmul(x, kernel * gamma[:, None])
                      + tf.matmul(beta[None, :], kernel) + bias)
