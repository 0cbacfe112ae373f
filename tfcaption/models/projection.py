"""The cached feature grid -> the attention "values": what every decoder does first."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfcaption.models.attention import LocationEmbedding


def normalise(features, epsilon: float, dtype):
    """Each location's channels to mean 0 and variance 1 (feature_norm
    without its scale and offset), computed in float32, returned in dtype."""
    x = tf.cast(features, tf.float32)
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return tf.cast((x - mean) * tf.math.rsqrt(variance + epsilon), dtype)


# The same function fused by XLA, for the train step: unfused it is six passes
# over the batch's grid (cast, mean, squared difference, mean, subtract and
# scale, cast), ~22 ms of op time in a ~200 ms step at the bench's sizes
# (64 x 64 x 2048); fused, its passes cost about as much as the first cast.
normalise_compiled = tf.function(normalise, jit_compile=True, autograph=False)


class FeatureProjection:
    """A mixin for a keras.Model decoder (RecurrentDecoder, TransformerDecoder,
    each calling _init_projection first): feature_norm, feature_proj and the
    optional location table, set as the decoder's own attributes (not a layer
    of their own), so their checkpoint keys stay decoder/feature_norm/... as
    they were before decoders shared them.

    Shapes: features (batch, locations, channels) -> values (batch, locations,
    feature_dim).
    """

    def _init_projection(self, feature_dim: int, position_embedding: bool,
                         feature_kernel: int, grid_shape, top=None, trainable_from: str = "",
                         feature_separable: bool = False):
        self.feature_dim = feature_dim
        if feature_kernel > 1 and not grid_shape:
            raise ValueError("feature_kernel > 1 needs the grid's (height, width)")
        if feature_separable and feature_kernel < 2:
            raise ValueError("feature_separable needs feature_kernel > 1")
        self.position_embedding = position_embedding
        self.feature_kernel = feature_kernel
        self.feature_separable = feature_separable
        self.grid_shape = tuple(grid_shape[:2]) if grid_shape else None
        # Raw backbone scales differ by orders of magnitude (random weights give
        # ~1e-3, ImageNet VGG ~1e2): normalise each location's channels first.
        # Its scale and offset are folded into feature_proj when projecting
        # (see project_features): the same function and gradients, without
        # feature_proj's input gradient (~20% of a demo step).
        self.feature_norm = keras.layers.LayerNormalization(name="feature_norm")
        if feature_separable:
            # A k x k depthwise convolution (each channel over its neighbours),
            # then a 1x1 across channels: ~1/k^2 of the full convolution's
            # multiplies (model.feature_separable).
            self.feature_proj = keras.layers.SeparableConv2D(
                feature_dim, feature_kernel, padding="same", activation="relu",
                name="feature_proj")
        elif feature_kernel > 1:
            self.feature_proj = keras.layers.Conv2D(feature_dim, feature_kernel, padding="same",
                                                    activation="relu", name="feature_proj")
        else:
            self.feature_proj = keras.layers.Dense(feature_dim, activation="relu",
                                                   name="feature_proj")
        self.positions = LocationEmbedding(name="positions") if position_embedding else None
        # The backbone's trainable top (features.trainable_from; see
        # build.backbone_top): the cache then holds the grid below it. Given
        # to the constructor, not set later: Keras 3 stops tracking new
        # attributes after __init__, and the checkpoints would miss it.
        if top is not None and not grid_shape:
            raise ValueError("a backbone top needs the cached grid's (height, width)")
        self.top = top
        self.trainable_from = trainable_from

    def _projection_config(self) -> dict:
        return {"feature_dim": self.feature_dim, "position_embedding": self.position_embedding,
                "feature_kernel": self.feature_kernel, "grid_shape": self.grid_shape,
                "feature_separable": self.feature_separable}

    def project_features(self, features, training=False):
        """feature_proj(feature_norm(features)), with the norm's scale and offset
        folded into the projection: proj(gamma * x + beta) = proj'(x) + proj(beta),
        proj' having its input channels scaled by gamma.

        Why: the normalised features x are constants of the cache, so nothing
        then needs feature_proj's input gradient, which unfolded costs as much
        as its weight gradient; gamma's gradient comes through the scaled
        kernel instead. proj(beta) is the projection of a constant grid (zero
        padding included, so border cells get what they got unfolded): one
        image's work, broadcast over the batch. (feature_norm is still built and
        checkpointed as a layer: its variables keep their names.)
        """
        if self.top is not None:
            features = self.run_top(features)
        norm, proj = self.feature_norm, self.feature_proj
        if not norm.built:
            norm.build(features.shape)
        if not proj.built:
            self._build_projection(features.shape[-1])
        dtype = proj.compute_dtype
        x = (normalise_compiled if training else normalise)(features, norm.epsilon, dtype)
        gamma, beta = tf.cast(norm.gamma, dtype), tf.cast(norm.beta, dtype)
        bias = tf.cast(proj.bias, dtype)
        if self.feature_separable:
            return tf.nn.relu(self._separable(x, gamma, beta, dtype) + bias)
        kernel = tf.cast(proj.kernel, dtype)
        if self.feature_kernel > 1:  # a convolution over the grid, back to locations
            h, w = self.grid_shape
            grid = tf.reshape(x, [-1, h, w, x.shape[-1]])
            scaled = tf.nn.conv2d(grid, kernel * gamma[:, None], 1, "SAME")
            offset = tf.nn.conv2d(tf.broadcast_to(beta, [1, h, w, beta.shape[0]]), kernel, 1,
                                  "SAME")
            values = tf.reshape(tf.nn.relu(scaled + offset + bias), [-1, h * w, self.feature_dim])
        else:
            # tensordot, not matmul: it multiplies (batch * locations, channels)
            # by the kernel, whose gradient is then one matmul. A batched
            # matmul's is one (channels, feature_dim) product per image, then
            # their sum (bench sizes: 64 x 2048 x 256 floats; step -4%).
            values = tf.nn.relu(tf.tensordot(x, kernel * gamma[:, None], 1)
                                + tf.matmul(beta[None, :], kernel) + bias)
        return values

    def _separable(self, x, gamma, beta, dtype):
        """The folded norm through a separable convolution: gamma scales each
        input channel, so it scales that channel's depthwise filter; beta's
        constant grid goes through both convolutions (its border cells
        included), one image's work broadcast over the batch. The 1x1 is a
        tensordot over (batch * locations, channels): one matmul, forward and
        back."""
        h, w = self.grid_shape
        depthwise = tf.cast(self.feature_proj.depthwise_kernel, dtype)
        pointwise = tf.cast(self.feature_proj.pointwise_kernel, dtype)[0, 0]
        grid = tf.reshape(x, [-1, h, w, x.shape[-1]])
        spread = tf.nn.depthwise_conv2d(grid, depthwise * gamma[:, None], [1, 1, 1, 1], "SAME")
        constant = tf.nn.depthwise_conv2d(tf.broadcast_to(beta, [1, h, w, beta.shape[0]]),
                                          depthwise, [1, 1, 1, 1], "SAME")
        mixed = tf.tensordot(tf.reshape(spread, [-1, h * w, x.shape[-1]]), pointwise, 1)
        offset = tf.tensordot(tf.reshape(constant, [1, h * w, x.shape[-1]]), pointwise, 1)
        return mixed + offset

    def run_top(self, features):
        """The cut grid (batch, locations, channels) from the cache -> the
        backbone's top over it, (batch, locations, top channels) float32.

        Always in inference mode: BatchNorm layers (ResNet's, InceptionV3's)
        keep ImageNet's moving statistics rather than normalising with
        statistics of batches that hold several captions of one image; a
        dropout in the top would stay off too. Runs in float32 whatever the
        decoder's policy: its layers were built by the backbone, outside it."""
        h, w = self.grid_shape
        grid = tf.reshape(tf.cast(features, tf.float32), [-1, h, w, features.shape[-1]])
        channels = self.top.output.shape[-1]
        if grid.shape[0]:  # a static batch (training's): never empty
            out = self.top(grid, training=False)
        else:  # a SavedModel's request may hold no image, and convolutions reject none
            out = tf.cond(tf.shape(grid)[0] > 0, lambda: self.top(grid, training=False),
                          lambda: tf.zeros([0, h, w, channels]))
        return tf.reshape(out, [-1, h * w, channels])

    def _build_projection(self, channels: int):
        if self.feature_kernel > 1:
            self.feature_proj.build((None, *self.grid_shape, channels))
        else:
            self.feature_proj.build((None, channels))
