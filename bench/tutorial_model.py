"""The TensorFlow tutorial "Image captioning with visual attention", as a baseline
for bench/training.py: its model and train step, written here from the tutorial's
description (not copied), at the tutorial's sizes.

What makes it the tutorial's and not tfcaption's:
- every caption is padded to one length (50 tokens) and the step runs a Python
  loop over all of its positions (unrolled into the graph when traced);
- the attention's W1(features) -- the keys -- is recomputed at every position,
  from features that the encoder's Dense(embedding) + ReLU projects once per
  caption (rows are (image, caption) pairs: an image is encoded once per caption);
- a Keras GRU layer runs one position at a time, then Dense(units) and
  Dense(vocabulary), with the masked mean cross entropy per position, summed.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class Attention(keras.layers.Layer):
    """Bahdanau attention recomputing W1(features) at every call."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.W1 = keras.layers.Dense(units)
        self.W2 = keras.layers.Dense(units)
        self.V = keras.layers.Dense(1)

    def call(self, features, hidden):
        score = tf.nn.tanh(self.W1(features) + self.W2(hidden[:, None, :]))
        weights = tf.nn.softmax(self.V(score), axis=1)  # (batch, locations, 1)
        return tf.reduce_sum(weights * features, axis=1), weights


class Encoder(keras.Model):
    def __init__(self, embedding_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.fc = keras.layers.Dense(embedding_dim, activation="relu")

    def call(self, features):
        return self.fc(features)


class Decoder(keras.Model):
    def __init__(self, embedding_dim: int, units: int, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim)
        self.gru = keras.layers.GRU(units, return_sequences=True, return_state=True,
                                    recurrent_initializer="glorot_uniform")
        self.fc1 = keras.layers.Dense(units)
        self.fc2 = keras.layers.Dense(vocab_size)
        self.attention = Attention(units)

    def call(self, token, features, hidden):
        """token (batch, 1) -> logits (batch, vocab), new hidden state."""
        context, _ = self.attention(features, hidden)
        x = tf.concat([context[:, None, :], self.embedding(token)], axis=-1)
        output, state = self.gru(x, initial_state=hidden)
        x = self.fc1(output)
        return self.fc2(tf.reshape(x, [-1, x.shape[2]])), state


def make_tutorial_step(vocab_size: int, embedding_dim: int = 256, units: int = 512):
    """(features (batch, locations, channels), tokens (batch, 50)) -> loss: one
    train step of the tutorial (Adam, no clipping)."""
    encoder = Encoder(embedding_dim)
    decoder = Decoder(embedding_dim, units, vocab_size)
    optimizer = keras.optimizers.Adam()
    xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    def loss_function(real, logits):
        mask = tf.cast(real != 0, tf.float32)
        return tf.reduce_mean(xent(real, logits) * mask)

    @tf.function
    def step(features, tokens):
        batch = tokens.shape[0]
        hidden = tf.zeros([batch, units])
        token = tokens[:, :1]  # <start>
        loss = 0.0
        with tf.GradientTape() as tape:
            projected = encoder(features)
            for i in range(1, tokens.shape[1]):  # unrolled: one copy per position
                logits, hidden = decoder(token, projected, hidden)
                loss += loss_function(tokens[:, i], logits)
                token = tokens[:, i:i + 1]  # teacher forcing
        variables = encoder.trainable_variables + decoder.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss / int(tokens.shape[1])

    return step
