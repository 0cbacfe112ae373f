"""The transformer decoder: the contract every decoder keeps (encode, step,
teacher_forced; tests/models/test_decoder_contract.py) over N pre-norm blocks
of masked self-attention over the words, cross-attention over the feature grid
and a feed-forward layer.

Sizes: d_model is `units` (ModelConfig.units), the word embeddings and every
block's width; the feed-forward layer is 4 d_model wide; `feature_dim` is the
projected grid, which each block's cross-attention maps to its own keys and
values once per image when decoding (`encode`), not once per word; teacher
forcing, which sees every word at once, folds those maps into the words'
queries and contexts instead (`DecoderBlock.grid_attention`).

Incremental decoding: the state is the words' keys and values per block in a
cache preallocated for `max_len` steps, (batch, layers, max_len, d_model), and
the position t (batch,). A step embeds the one new word, writes its key and
value at t and attends over positions <= t; the words before it are never run
again (the step is not given them: only the cache holds them). Every part of
the state has the batch on axis 0, so the searches repeat it for beams and
samples and regroup it after a beam step as they do a recurrent state.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfcaption.config import ModelConfig
from tfcaption.models.logits import VocabularyProjection
from tfcaption.models.projection import FeatureProjection

NEG = -1e9  # a masked score: exp() gives exactly 0, and no inf - inf = NaN


def sinusoid(positions, units: int):
    """positions int (...) -> float32 (..., units): Vaswani et al.'s encoding.

    Sinusoids rather than a learned table: they need no longest caption fixed
    when the decoder is made, and step t's row is computed from t alone.
    """
    rates = tf.exp(tf.range(units // 2, dtype=tf.float32) * (-2.0 * math.log(1e4) / units))
    angles = tf.cast(positions, tf.float32)[..., None] * rates
    return tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)


def attend(queries, keys, values, heads: int, visible=None):
    """Multi-head scaled dot-product attention.

    queries (batch, Tq, d), keys and values (batch, Tk, d); visible: bool
    broadcastable to (batch, Tq, Tk), None = all -> context (batch, Tq, d),
    weights (batch, heads, Tq, Tk) float32 (each row a distribution over Tk).
    """
    batch, d = tf.shape(queries)[0], queries.shape[-1]
    split = lambda x: tf.reshape(x, [batch, -1, heads, d // heads])  # noqa: E731
    scores = tf.einsum("bqhc,bkhc->bhqk", split(queries), split(keys))
    # Softmax in float32: float16 sums over ~100-200 locations lose precision.
    scores = tf.cast(scores, tf.float32) / math.sqrt(d // heads)
    if visible is not None:
        scores = tf.where(visible[:, None], scores, NEG)
    weights = tf.nn.softmax(scores, axis=-1)
    context = tf.einsum("bhqk,bkhc->bqhc", tf.cast(weights, values.dtype), split(values))
    return tf.reshape(context, [batch, -1, d]), weights


def write_at(cache, new, position):
    """cache (batch, max_len, d) with new (batch, d) at position (batch,).

    A select over the static buffer rather than a scatter: the same shapes at
    every step (XLA, TFLite), and its cost is that of reading the cache, which
    the attention does anyway.
    """
    at = tf.equal(tf.range(cache.shape[1])[None, :], position[:, None])
    return tf.where(at[:, :, None], new[:, None, :], cache)


class DecoderBlock(keras.layers.Layer):
    """x + SelfAttention(LN x); + CrossAttention(LN x, grid); + FFN(LN x).

    Pre-norm (Xiong et al. 2020): the residual stream itself is never
    normalised, so the gradient reaches early blocks undiminished and training
    does not hinge on a long learning-rate warmup as post-norm's does.
    """

    def __init__(self, units: int, heads: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.units, self.heads, self.dropout_rate = units, heads, dropout
        dense = keras.layers.Dense
        self.self_norm = keras.layers.LayerNormalization(name="self_norm")
        self.qkv = dense(3 * units, name="qkv")  # one matmul for the three
        self.self_out = dense(units, name="self_out")
        self.cross_norm = keras.layers.LayerNormalization(name="cross_norm")
        self.cross_query = dense(units, name="cross_query")
        # No bias: q.b is the same at every location, so the softmax never sees it.
        self.cross_key = dense(units, use_bias=False, name="cross_key")
        self.cross_value = dense(units, name="cross_value")
        self.cross_out = dense(units, name="cross_out")
        self.ffn_norm = keras.layers.LayerNormalization(name="ffn_norm")
        self.ffn_in = dense(4 * units, activation="relu", name="ffn_in")
        self.ffn_out = dense(units, name="ffn_out")
        self.drop = keras.layers.Dropout(dropout)

    def memory(self, grid):
        """grid (batch, locations, feature_dim) -> the cross-attention's keys and
        values (batch, locations, units): per image, not per word."""
        with keras.name_scope(self.name):  # called apart from call(): name its weights
            return self.cross_key(grid), self.cross_value(grid)

    def grid_attention(self, query, grid):
        """The cross-attention of teacher forcing, computed from the grid
        (batch, locations, feature_dim) without its keys and values: query
        (batch, T, units) -> context (batch, T, units), weights (batch, heads,
        T, locations) float32, as attend(query, *memory(grid), heads).

        The same math regrouped: per head h, q.(g K_h) = (q K_h^T).g (the keys
        have no bias), and sum_l a_l (g_l V_h + c_h) = (sum_l a_l g_l) V_h + c_h,
        as the weights sum to 1. With T words and L locations, the per-location
        projections (2 L feature_dim units multiply-adds an image, and as
        much again twice in the backward pass) become per-word ones (2 T
        feature_dim units); the Flickr8k step has T ~ 22 against L = 169.
        Decoding keeps memory(): there one image's keys serve every step.
        """
        if not self.cross_key.built:  # teacher forcing alone never calls memory()
            self.memory(grid)
        batch, d, f = tf.shape(query)[0], query.shape[-1], grid.shape[-1]
        c = d // self.heads
        kernel = lambda layer: tf.reshape(tf.cast(layer.kernel, query.dtype),  # noqa: E731
                                          [f, self.heads, c])
        q = tf.reshape(query, [batch, -1, self.heads, c])
        q_grid = tf.einsum("bqhc,fhc->bhqf", q, kernel(self.cross_key))
        scores = tf.einsum("bhqf,bkf->bhqk", q_grid, grid)
        weights = tf.nn.softmax(tf.cast(scores, tf.float32) / math.sqrt(c), axis=-1)
        seen = tf.einsum("bhqk,bkf->bqhf", tf.cast(weights, grid.dtype), grid)
        context = tf.einsum("bqhf,fhc->bqhc", seen, kernel(self.cross_value))
        context = tf.reshape(context, [batch, -1, d]) + tf.cast(self.cross_value.bias, query.dtype)
        return context, weights

    def call(self, x, memory_keys, memory_values, visible, cache=None, position=None,
             training=None):
        """x (batch, T, units): the words' residual stream; memory_* (batch,
        locations, units), or memory_keys the projected grid (batch, locations,
        feature_dim) and memory_values None (grid_attention); visible bool
        (batch or 1, T, Tk): which keys each word sees.

        cache None (teacher forcing): the words' own keys and values, Tk = T.
        cache (keys, values) (batch, max_len, units), T = 1: the new word's are
        written at position (batch,) first, Tk = max_len.

        -> x, cross-attention weights (batch, heads, T, locations) float32, and
        the self-attention's keys and values (the updated cache, or T's own).
        """
        q, k, v = tf.split(self.qkv(self.self_norm(x)), 3, axis=-1)
        if cache is not None:
            k, v = write_at(cache[0], k[:, 0], position), write_at(cache[1], v[:, 0], position)
        context, _ = attend(q, k, v, self.heads, visible)
        x = x + self.drop(self.self_out(context), training=training)
        query = self.cross_query(self.cross_norm(x))
        if memory_values is None:  # memory_keys is the grid: teacher forcing
            context, alpha = self.grid_attention(query, memory_keys)
        else:
            context, alpha = attend(query, memory_keys, memory_values, self.heads)
        x = x + self.drop(self.cross_out(context), training=training)
        x = x + self.drop(self.ffn_out(self.ffn_in(self.ffn_norm(x))), training=training)
        return x, alpha, (k, v)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "heads": self.heads,
                "dropout": self.dropout_rate}


class TransformerDecoder(FeatureProjection, keras.Model):
    """Feature projection (projection.FeatureProjection) + location embedding,
    N pre-norm decoder blocks, final LayerNorm, float32 vocabulary projection.

    Shapes: features (batch, locations, channels); tokens int32; values and keys
    (batch, layers, locations, units): every block's cross-attention values and
    keys; state {"position": (batch,) int32, "keys", "values": (batch, layers,
    max_len, units)}; alpha (batch, locations) float32.
    """

    def __init__(self, vocab_size: int, units: int = 512, num_layers: int = 2, heads: int = 4,
                 feature_dim: int = 512, dropout: float = 0.1, feature_kernel: int = 1,
                 grid_shape=None, top=None, trainable_from: str = "",
                 feature_separable: bool = False, **kwargs):
        super().__init__(**kwargs)
        if units % heads or units % 2:
            raise ValueError(f"units {units} must be even and a multiple of heads {heads}")
        self.vocab_size, self.units, self.num_layers, self.heads = (vocab_size, units,
                                                                   num_layers, heads)
        self.dropout_rate = dropout
        # The location embedding is always on: attention over the grid is blind
        # to where a cell is, and captions say "left of".
        self._init_projection(feature_dim, True, feature_kernel, grid_shape, top, trainable_from,
                              feature_separable)
        # N(0, 1/units) scaled by sqrt(units) below: unit-sized entries, the
        # scale of the sinusoids they are added to.
        self.embedding = keras.layers.Embedding(
            vocab_size, units, name="embedding",
            embeddings_initializer=keras.initializers.RandomNormal(stddev=units ** -0.5))
        # A tuple: Keras 3 tracks a list (or dict) of layers for its own weights
        # but hides it from tf.train.Checkpoint, which would then save and
        # restore no block at all (build.check_checkpointed refuses that).
        self.blocks = tuple(DecoderBlock(units, heads, dropout, name=f"block_{i}")
                            for i in range(num_layers))
        self.final_norm = keras.layers.LayerNormalization(name="final_norm")
        self.drop = keras.layers.Dropout(dropout)
        self.logits_layer = VocabularyProjection(vocab_size, self.compute_dtype,
                                                 name="logits")

    @classmethod
    def from_config_dataclass(cls, cfg: ModelConfig, vocab_size: int,
                              **kwargs) -> "TransformerDecoder":
        return cls(vocab_size=vocab_size, units=cfg.units, num_layers=cfg.layers,
                   heads=cfg.heads, feature_dim=cfg.feature_dim, dropout=cfg.dropout,
                   feature_kernel=cfg.feature_kernel,
                   feature_separable=cfg.feature_separable, **kwargs)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "units": self.units,
                "num_layers": self.num_layers, "heads": self.heads,
                "dropout": self.dropout_rate,
                # Its location embedding is always on: not an argument.
                **{k: v for k, v in self._projection_config().items()
                   if k != "position_embedding"}}

    def grid(self, features, training=False):
        """features (batch, locations, channels) -> the projected grid with its
        location embedding (batch, locations, feature_dim)."""
        grid = self.positions(self.project_features(features, training))
        return self.drop(grid, training=training)

    def encode(self, features, training=False, max_len=None):
        """features (batch, locations, channels) -> values, keys (batch, layers,
        locations, units), state: an empty cache for max_len steps (see the class
        docstring), or {} without max_len (teacher forcing needs none)."""
        grid = self.grid(features, training)
        keys, values = zip(*(block.memory(grid) for block in self.blocks))
        keys, values = tf.stack(keys, axis=1), tf.stack(values, axis=1)
        if max_len is None:
            return values, keys, {}
        batch = tf.shape(features)[0]
        cache = tf.zeros([batch, self.num_layers, max_len, self.units], self.compute_dtype)
        return values, keys, {"position": tf.zeros([batch], tf.int32), "keys": cache,
                              "values": cache}

    def embed(self, tokens, positions):
        """tokens int (...) at positions int (...) -> (..., units)."""
        embedded = self.embedding(tokens) * math.sqrt(self.units)
        return embedded + tf.cast(sinusoid(positions, self.units), embedded.dtype)

    def project(self, x):
        """(..., units) -> float32 logits (..., vocab_size)."""
        return self.logits_layer(self.final_norm(x))

    @staticmethod
    def attention_map(alpha):
        """The last block's cross-attention, its heads averaged: (batch, heads, T,
        locations) -> (batch, T, locations), each row summing to 1.

        The last block: its context is the last the word's prediction reads
        (through one feed-forward layer), so it shows where the word was
        found; earlier blocks' queries serve later blocks. All heads, averaged:
        a mean of distributions is one, and no head is singled out by a rule
        that would not survive retraining. It is also what the doubly
        stochastic regulariser of caption_loss acts on.
        """
        return tf.reduce_mean(alpha, axis=1)

    def step(self, token, state, values, keys, training=False):
        """The one step: token (batch,), state from encode(..., max_len) or a
        step -> logits (batch, vocab) float32, new state, alpha (batch,
        locations) float32."""
        if "position" not in state:
            raise ValueError("the transformer's step needs the word cache that "
                             "encode(features, max_len=...) makes")
        position = state["position"]
        x = self.drop(self.embed(token, position), training=training)[:, None]
        max_len = state["keys"].shape[2]
        visible = tf.range(max_len)[None, None, :] <= position[:, None, None]
        caches = []
        for i, block in enumerate(self.blocks):
            x, alpha, cache = block(x, keys[:, i], values[:, i], visible,
                                    cache=(state["keys"][:, i], state["values"][:, i]),
                                    position=position, training=training)
            caches.append(cache)
        new_keys, new_values = (tf.stack(c, axis=1) for c in zip(*caches))
        state = {"position": position + 1, "keys": new_keys, "values": new_values}
        return self.project(x[:, 0]), state, self.attention_map(alpha)[:, 0]

    def teacher_forced(self, features, tokens, training=False):
        """features (images, locations, channels), tokens (batch, T) ->
        logits (batch, T-1, vocab) float32, alphas (batch, T-1, locations) float32.

        batch = K * images: token rows i K .. i K + K - 1 are captions of image i;
        each image is encoded once, whatever K. All positions at once, each
        word seeing itself and the words before it.
        """
        # The grid, not encode's stacked keys and values: each block attends
        # to it directly (DecoderBlock.grid_attention). Slicing blocks out of
        # a stack also cost a full-size StridedSliceGrad each in the backward
        # pass, a fifth of the Flickr8k step's op time.
        grid = self.grid(features, training)
        images, rows = features.shape[0], tokens.shape[0]
        if images is None or rows is None or images != rows:
            # A gather, not tf.repeat: its output shape stays static under XLA.
            per_image = tf.shape(tokens)[0] // tf.shape(features)[0]
            index = tf.range(tf.shape(tokens)[0]) // per_image
            grid = tf.gather(grid, index)
        inputs = tokens[:, :-1]
        positions = tf.range(tf.shape(inputs)[1])
        x = self.drop(self.embed(inputs, positions[None, :]), training=training)
        visible = (positions[None, None, :] <= positions[None, :, None])  # key <= query
        for block in self.blocks:  # the grid itself, no keys and values (grid_attention)
            x, alpha, _ = block(x, grid, None, visible, training=training)
        return self.project(x), self.attention_map(alpha)

    def call(self, inputs, training=False):
        features, tokens = inputs
        return self.teacher_forced(features, tokens, training=training)
