"""The GRU decoder with soft attention (the recurrent skeleton is models/recurrent.py)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfcaption.models.recurrent import RecurrentDecoder


class GRUDecoder(RecurrentDecoder):
    """Show, Attend and Tell with a GRU cell: state h (batch, units), from the
    mean projected feature through one Dense tanh layer (`init_state`)."""

    def _init_state_layers(self):
        self.init_state = keras.layers.Dense(self.units, activation="tanh", name="init_state")

    def _make_cell(self):
        # reset_after (Keras' default, cuDNN's GRU): the bias holds an input
        # row and a recurrent row, and the reset gate scales h's projection.
        return keras.layers.GRUCell(self.units, reset_after=True, name="gru")

    def initial_state(self, mean):
        return self.init_state(mean)

    def hidden(self, state):
        return state

    def _cell_variables(self):
        cell = self.cell
        return cell.kernel, cell.recurrent_kernel, cell.bias[0], cell.bias[1]

    def cell_step(self, x, state, weights):
        """keras.layers.GRUCell's math (reset_after), x already projected."""
        _, recurrent_kernel, _, recurrent_bias = weights
        inner = tf.matmul(state, recurrent_kernel) + recurrent_bias
        x_z, x_r, x_h = tf.split(x, 3, axis=-1)
        h_z, h_r, h_h = tf.split(inner, 3, axis=-1)
        z = tf.sigmoid(x_z + h_z)
        r = tf.sigmoid(x_r + h_r)
        h = z * state + (1 - z) * tf.tanh(x_h + r * h_h)
        return h, h
