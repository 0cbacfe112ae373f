"""The GRU decoder with soft attention: one `step` that every user of the model calls.

Training (teacher forcing), greedy and beam decoding, the SavedModel and the
attention plots all go through `encode` + `step` (or `advance` + `project`, the
two halves of `step`), so there is one copy of the math.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfcaption.config import ModelConfig
from tfcaption.models.attention import BahdanauAttention, LocationEmbedding
from tfcaption.models.projection import feature_layers, project_features


class GRUDecoder(keras.Model):
    """Feature projection + Bahdanau attention + GRU cell + deep output layer.

    Shapes: features (batch, locations, channels) from the cache; tokens int32;
    state (batch, units); alpha (batch, locations), float32.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 256, units: int = 512,
                 attention_units: int = 512, feature_dim: int = 512, dropout: float = 0.3,
                 gate: bool = True, init_from_features: bool = True,
                 position_embedding: bool = False, feature_kernel: int = 1, grid_shape=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.attention_units = attention_units
        self.feature_dim = feature_dim
        self.dropout_rate = dropout
        self.gate = gate
        self.init_from_features = init_from_features
        self.position_embedding = position_embedding
        self.feature_kernel = feature_kernel
        self.grid_shape = tuple(grid_shape[:2]) if grid_shape else None
        # Normalised, then projected: see projection.feature_layers.
        self.feature_norm, self.feature_proj = feature_layers(feature_dim, feature_kernel,
                                                              grid_shape)
        self.positions = LocationEmbedding(name="positions") if position_embedding else None
        self.attention = BahdanauAttention(attention_units, name="attention")
        self.init_state = keras.layers.Dense(units, activation="tanh", name="init_state")
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.cell = keras.layers.GRUCell(units, name="gru")
        self.gate_layer = keras.layers.Dense(1, activation="sigmoid", name="gate") if gate else None
        # Deep output (Show, Attend and Tell eq. 7): L_o(E y + L_h h + L_z z).
        self.out_h = keras.layers.Dense(embedding_dim, name="out_h")
        self.out_z = keras.layers.Dense(embedding_dim, use_bias=False, name="out_z")
        self.drop = keras.layers.Dropout(dropout)
        self.logits_layer = keras.layers.Dense(vocab_size, name="logits", dtype="float32")

    @classmethod
    def from_config_dataclass(cls, cfg: ModelConfig, vocab_size: int, **kwargs) -> "GRUDecoder":
        return cls(vocab_size=vocab_size, embedding_dim=cfg.embedding_dim, units=cfg.units,
                   attention_units=cfg.attention_units, feature_dim=cfg.feature_dim,
                   dropout=cfg.dropout, gate=cfg.gate,
                   init_from_features=cfg.init_from_features,
                   position_embedding=cfg.position_embedding,
                   feature_kernel=cfg.feature_kernel, **kwargs)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim, "units": self.units,
                "attention_units": self.attention_units, "feature_dim": self.feature_dim,
                "dropout": self.dropout_rate, "gate": self.gate,
                "init_from_features": self.init_from_features,
                "position_embedding": self.position_embedding,
                "feature_kernel": self.feature_kernel, "grid_shape": self.grid_shape}

    def project_features(self, features):
        """feature_proj(feature_norm(features)), the norm folded into the
        projection (see projection.project_features)."""
        return project_features(features, self.feature_norm, self.feature_proj,
                                self.feature_kernel, self.grid_shape)

    def encode(self, features, training=False, max_len=None):
        """features (batch, locations, channels) -> values (batch, locations, feature_dim),
        keys (batch, locations, attention_units), initial state (batch, units).
        max_len (the longest search): unused, the GRU's state does not grow with
        the caption (a transformer's word cache does)."""
        values = self.project_features(features)
        if self.positions is not None:
            values = self.positions(values)
        values = self.drop(values, training=training)
        keys = self.attention.keys(values)
        mean = tf.reduce_mean(values, axis=1)
        # Without the mean feature the first state is a learned constant (the
        # layer's bias) and the image reaches the decoder only through attention.
        state = self.init_state(mean if self.init_from_features else tf.zeros_like(mean))
        return values, keys, state

    def advance(self, token, state, values, keys, training=False, context_tap=None):
        """One step up to, not including, the vocabulary projection.

        token (batch,) int32 -> output (batch, embedding_dim), state, alpha (batch, locations).
        context_tap: zeros (batch, channels) added to the context, through which
        teacher_forced takes the context's gradient out of its loop.
        """
        context, alpha = self.attention(values, keys, state)
        if context_tap is not None:
            context = context + context_tap
        if self.gate_layer is not None:
            context = context * self.gate_layer(state)
        embedded = self.embedding(token)
        h, _ = self.cell(tf.concat([embedded, context], axis=-1), [state], training=training)
        h = h[0] if isinstance(h, (list, tuple)) else h
        output = embedded + self.out_h(h) + self.out_z(context)
        return self.drop(output, training=training), h, alpha

    def project(self, output):
        """(..., embedding_dim) -> float32 logits (..., vocab_size)."""
        return self.logits_layer(output)

    def step(self, token, state, values, keys, training=False):
        """The one step: token (batch,), state (batch, units) -> logits (batch, vocab)
        float32, new state, alpha (batch, locations) float32."""
        output, state, alpha = self.advance(token, state, values, keys, training=training)
        return self.project(output), state, alpha

    def teacher_forced(self, features, tokens, training=False):
        """features (images, locations, channels), tokens (batch, T) ->
        logits (batch, T-1, vocab) float32, alphas (batch, T-1, locations) float32.

        batch = K * images: token rows i K .. i K + K - 1 are captions of image i
        (K = 1: one row per image). Each image is encoded once, whatever K.
        The loop over time is a tf.scan (one graph node whatever T is); the
        vocabulary projection, the largest matmul, runs once over all steps.
        """
        values, keys, state = self.encode(features, training=training)
        images, rows = features.shape[0], tokens.shape[0]
        if images is None or rows is None or images != rows:
            # A gather, not tf.repeat: its output shape stays static under XLA.
            per_image = tf.shape(tokens)[0] // tf.shape(features)[0]
            index = tf.range(tf.shape(tokens)[0]) // per_image
            values, keys, state = (tf.gather(x, index) for x in (values, keys, state))
        inputs = tf.transpose(tokens[:, :-1])  # time-major
        steps, batch = tf.shape(inputs)[0], tf.shape(inputs)[1]
        taps, alphas_seen = _context_taps(values, [steps, batch, values.shape[-1]])
        frozen = tf.stop_gradient(values)

        def one(carry, inputs):
            _, state, _ = carry
            token, tap = inputs
            return self.advance(token, state, frozen, keys, training=training, context_tap=tap)

        first = (tf.zeros([batch, self.embedding_dim], values.dtype), state,
                 tf.zeros([batch, tf.shape(values)[1]], tf.float32))
        outputs, _, alphas = tf.scan(one, (inputs, taps), initializer=first)
        alphas_seen.append(alphas)
        logits = self.project(tf.transpose(outputs, [1, 0, 2]))
        return logits, tf.transpose(alphas, [1, 0, 2])

    def call(self, inputs, training=False):
        features, tokens = inputs
        return self.teacher_forced(features, tokens, training=training)


def _context_taps(values, shape):
    """Zeros (steps, batch, channels) for the loop's contexts, and a list to put
    the loop's alphas (steps, batch, locations) in.

    The loop attends over constant (stop_gradient) values; a context's gradient
    reaches its tap instead, and the taps' gradient turns all of them into the
    values' gradient at once: sum_t alpha_t^T dcontext_t, one batched matmul
    after the loop. Left to the loop's own backward pass, every iteration would
    form that outer product (batch x locations x channels) and add it to a
    running sum: ~20% of a demo train step.
    """
    alphas_seen: list = []

    @tf.custom_gradient
    def taps(values):
        def gradient(d_taps):
            alphas = tf.cast(alphas_seen[0], d_taps.dtype)
            return tf.einsum("tbl,tbc->blc", alphas, d_taps)
        return tf.zeros(shape, values.dtype), gradient

    return taps(values), alphas_seen
