"""Show, Attend and Tell around a recurrent cell: what the GRU and LSTM decoders share.

Training (teacher forcing), greedy and beam decoding, the SavedModel and the
attention plots all go through `encode` + `step` (or `advance` + `project`, the
two halves of `step`), so there is one copy of the math. A subclass says only
how its state starts, what attention is queried with, and how its cell moves;
the state may be any nested structure (the searches carry it with tf.nest).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfcaption.config import ModelConfig
from tfcaption.models.attention import BahdanauAttention
from tfcaption.decoding.masks import banned_specials
from tfcaption.models.logits import VocabularyProjection
from tfcaption.models.projection import FeatureProjection


class RecurrentDecoder(FeatureProjection, keras.Model):
    """Feature projection + Bahdanau attention queried with the hidden state h +
    gating scalar + recurrent cell + deep output layer.

    Shapes: features (batch, locations, channels) from the cache; tokens int32;
    h (batch, units); alpha (batch, locations), float32.

    Subclasses define `_init_state_layers`, `_make_cell`, `initial_state(mean)
    -> state`, `hidden(state) -> h`, `_cell_variables()` (kernel, recurrent
    kernel, input bias, recurrent bias or None) and `cell_step(x, state,
    weights) -> (h, state)`: the Keras cell's math on its own variables, with
    the input x already multiplied by the kernel. The cell is a holder of
    weights, so that teacher forcing can take the words' share of that
    product, the deep output and the dropout out of its loop (see
    teacher_forced).
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 256, units: int = 512,
                 attention_units: int = 512, feature_dim: int = 512, dropout: float = 0.3,
                 gate: bool = True, init_from_features: bool = True,
                 position_embedding: bool = False, feature_kernel: int = 1, grid_shape=None,
                 top=None, trainable_from: str = "", feature_separable: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.attention_units = attention_units
        self.dropout_rate = dropout
        self.gate = gate
        self.init_from_features = init_from_features
        # The layers are made in this order on purpose: it is the order of
        # trainable_variables, by which the optimizer's checkpointed slots are
        # indexed, so GRU checkpoints from before this base class still resume.
        self._init_projection(feature_dim, position_embedding, feature_kernel, grid_shape, top,
                              trainable_from, feature_separable)
        self.attention = BahdanauAttention(attention_units, name="attention")
        self._init_state_layers()
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.cell = self._make_cell()
        self.gate_layer = keras.layers.Dense(1, activation="sigmoid", name="gate") if gate else None
        # Deep output (Show, Attend and Tell eq. 7): L_o(E y + L_h h + L_z z).
        self.out_h = keras.layers.Dense(embedding_dim, name="out_h")
        self.out_z = keras.layers.Dense(embedding_dim, use_bias=False, name="out_z")
        self.drop = keras.layers.Dropout(dropout)
        self.logits_layer = VocabularyProjection(vocab_size, self.compute_dtype,
                                                 name="logits")

    @classmethod
    def from_config_dataclass(cls, cfg: ModelConfig, vocab_size: int, **kwargs):
        return cls(vocab_size=vocab_size, embedding_dim=cfg.embedding_dim, units=cfg.units,
                   attention_units=cfg.attention_units, feature_dim=cfg.feature_dim,
                   dropout=cfg.dropout, gate=cfg.gate,
                   init_from_features=cfg.init_from_features,
                   position_embedding=cfg.position_embedding,
                   feature_kernel=cfg.feature_kernel,
                   feature_separable=cfg.feature_separable, **kwargs)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim, "units": self.units,
                "attention_units": self.attention_units, "dropout": self.dropout_rate,
                "gate": self.gate, "init_from_features": self.init_from_features,
                **self._projection_config()}

    def encode(self, features, training=False, max_len=None):
        """features (batch, locations, channels) -> values (batch, locations, feature_dim),
        keys (batch, locations, attention_units), the initial state.
        max_len (the longest search, from decoding.decoder_step): unused, a
        recurrent state does not grow with the caption (a transformer's word
        cache does)."""
        values = self.project_features(features, training)
        if self.positions is not None:
            values = self.positions(values)
        values = self.drop(values, training=training)
        keys = self.attention.keys(values)
        mean = tf.reduce_mean(values, axis=1)
        # Without the mean feature the first state is a learned constant (the
        # layers' biases) and the image reaches the decoder only through attention.
        return values, keys, self.initial_state(mean if self.init_from_features
                                                else tf.zeros_like(mean))

    def _per_caption(self, features, tokens, training):
        """Each image encoded once, then its state given to each of its caption
        rows. Its values and keys stay one row per image when both counts are
        static (the attention groups the rows by image); otherwise they are
        given to each row too."""
        values, keys, state = self.encode(features, training=training)
        images, rows = features.shape[0], tokens.shape[0]
        if images is None or rows is None or images != rows:
            # A gather, not tf.repeat: its output shape stays static under XLA.
            per_image = tf.shape(tokens)[0] // tf.shape(features)[0]
            index = tf.range(tf.shape(tokens)[0]) // per_image
            give = lambda x: tf.gather(x, index)  # noqa: E731
            state = tf.nest.map_structure(give, state)
            if images is None or rows is None:
                values, keys = give(values), give(keys)
        return values, keys, state

    def advance(self, token, state, values, keys, training=False, context_tap=None):
        """One step up to, not including, the vocabulary projection.

        token (batch,) int32 -> output (batch, embedding_dim), state, alpha (batch, locations).
        context_tap: zeros (batch, channels) added to the context, through which
        teacher_forced takes the context's gradient out of its loop.
        """
        context, alpha = self.attend(self.hidden(state), values, keys, context_tap)
        embedded = self.embedding(token)
        h, state = self.recur(tf.concat([embedded, context], axis=-1), state)
        return self.deep_output(embedded, h, context, training), state, alpha

    def attend(self, query, values, keys, context_tap=None):
        """The gated context (batch, feature_dim) and alpha (batch, locations)."""
        context, alpha = self.attention(values, keys, query)
        if context_tap is not None:
            context = context + context_tap
        if self.gate_layer is not None:
            context = context * self.gate_layer(query)
        return context, alpha

    def deep_output(self, embedded, h, context, training):
        """E y + L_h h + L_z z, dropped out: (..., embedding_dim)."""
        output = embedded + self.out_h(h) + self.out_z(context)
        return self.drop(output, training=training)

    def cell_weights(self, input_dim: int):
        """The cell's variables (see _cell_variables) in its compute dtype; the
        cell is built on first use, for inputs of input_dim (word + context)."""
        if not self.cell.built:
            self.cell.build((None, input_dim))
        dtype = self.cell.compute_dtype
        return tuple(None if w is None else tf.cast(w, dtype) for w in self._cell_variables())

    def recur(self, inputs, state):
        """The cell's step: inputs (batch, embedding_dim + feature_dim) -> (h, state)."""
        weights = self.cell_weights(inputs.shape[-1])
        return self.cell_step(tf.matmul(inputs, weights[0]) + weights[2], state, weights)

    def project(self, output):
        """(..., embedding_dim) -> float32 logits (..., vocab_size)."""
        return self.logits_layer(output)

    def step(self, token, state, values, keys, training=False):
        """The one step: token (batch,), state -> logits (batch, vocab) float32,
        new state, alpha (batch, locations) float32."""
        output, state, alpha = self.advance(token, state, values, keys, training=training)
        return self.project(output), state, alpha

    def teacher_forced(self, features, tokens, training=False, sampling=None):
        """features (images, locations, channels), tokens (batch, T) ->
        logits (batch, T-1, vocab) float32, alphas (batch, T-1, locations) float32.

        batch = K * images: token rows i K .. i K + K - 1 are captions of image i
        (K = 1: one row per image). Each image is encoded once, whatever K.
        The loop over time is a tf.scan (one graph node whatever T is); the
        vocabulary projection, the largest matmul, runs once over all steps.

        sampling: None, or (probability, key (2,) int64) for scheduled sampling
        (Bengio et al. 2015): each input after <start> is, with that
        probability, a word drawn from the model's own previous distribution
        instead of the reference's word (see _sampled_step). The draws are a
        function of key, so a resumed run draws what the killed one would have.
        """
        values, keys, state = self._per_caption(features, tokens, training)
        inputs = tf.transpose(tokens[:, :-1])  # time-major
        steps, batch = tf.shape(inputs)[0], tf.shape(inputs)[1]
        taps, alphas_seen = _context_taps(values, [steps, batch, values.shape[-1]])
        frozen = tf.stop_gradient(values)
        first = (tf.zeros([batch, self.embedding_dim], values.dtype), state,
                 tf.zeros([batch, tf.shape(values)[1]], tf.float32))
        no_context = tf.zeros([batch, values.shape[-1]], values.dtype)
        if sampling is None:
            # `advance` step by step, with what does not depend on the state
            # done for all steps at once, outside the loop: the words'
            # embedding and their share of the cell's input product (its
            # kernel's first embedding_dim rows), the deep output and its
            # dropout. The loop keeps attention, gate and cell; the loop's
            # backward pass no longer sums the weight gradients of the
            # others step by step.
            embedded = self.embedding(inputs)  # (steps, batch, embedding_dim)
            weights = self.cell_weights(self.embedding_dim + values.shape[-1])
            kernel, input_bias = weights[0], weights[2]
            # A split, not two slices: its gradient is one concat, where each
            # slice's is a zeroed kernel-sized tensor (~5 ms of op time a step).
            words, from_context = tf.split(
                kernel, [self.embedding_dim, kernel.shape[0] - self.embedding_dim], 0)
            words_in = tf.einsum("tbe,eg->tbg", embedded, words) + input_bias

            def one(carry, inputs):
                _, _, state, _ = carry
                word_in, tap = inputs
                context, alpha = self.attend(self.hidden(state), frozen, keys, tap)
                h, state = self.cell_step(word_in + tf.matmul(context, from_context), state,
                                          weights)
                return h, context, state, alpha

            first = (tf.zeros_like(self.hidden(state)), no_context, state, first[2])
            hs, contexts, _, alphas = tf.scan(one, (words_in, taps), initializer=first)
            outputs = self.deep_output(embedded, hs, contexts, training)
            logits = self.project(tf.transpose(outputs, [1, 0, 2]))
        else:
            one, extra = self._sampled_step(frozen, keys, training, steps, batch, *sampling)
            first += (tf.zeros([batch, self.vocab_size], tf.float32),)
            outputs, _, alphas, previous = tf.scan(one, (inputs, taps, *extra),
                                                   initializer=first)
            # previous[t] is step t - 1's logits: shifted by one, plus the last step's.
            logits = tf.transpose(tf.concat([previous[1:], self.project(outputs[-1:])], axis=0),
                                  [1, 0, 2])
        alphas_seen.append(alphas)
        return logits, tf.transpose(alphas, [1, 0, 2])

    def _sampled_step(self, frozen, keys, training, steps, batch, probability, key):
        """Scheduled sampling's loop body and its extra inputs (coins, t). The
        vocabulary projection moves into the loop (a fed word needs the
        previous step's logits), and the logits it computes there are the ones
        the loss reads: no step is projected twice. No gradient flows through a
        draw (an integer)."""
        coin_key, draw_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        coins = tf.random.stateless_uniform([steps, batch], coin_key) < probability
        banned = banned_specials(self.vocab_size)  # what no search emits is never fed

        def one(carry, inputs):
            output, state, _, _ = carry
            token, tap, coin, t = inputs
            previous = self.project(output)  # the logits that predicted this position
            # Gumbel-max: a draw from softmax(previous).
            noise = tf.random.stateless_uniform(
                tf.shape(previous), tf.random.experimental.stateless_fold_in(draw_key, t),
                minval=1e-7, maxval=1.0)
            drawn = tf.argmax(previous + banned - tf.math.log(-tf.math.log(noise)), axis=-1,
                              output_type=token.dtype)
            token = tf.where(coin & (t > 0), drawn, token)  # t = 0 is <start>
            output, state, alpha = self.advance(token, state, frozen, keys, training=training,
                                                context_tap=tap)
            return output, state, alpha, previous

        return one, (coins, tf.range(steps, dtype=tf.int64))

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
            images, locations, channels = values.shape
            if images is None or d_taps.shape[1] == images:
                return tf.einsum("tbl,tbc->blc", alphas, d_taps)
            # K rows per image (BahdanauAttention.call): summed over t and K.
            steps = tf.shape(d_taps)[0]
            return tf.einsum("tikl,tikc->ilc",
                             tf.reshape(alphas, [steps, images, -1, locations]),
                             tf.reshape(d_taps, [steps, images, -1, channels]))
        return tf.zeros(shape, values.dtype), gradient

    return taps(values), alphas_seen
