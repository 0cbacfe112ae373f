"""Show, Attend and Tell's own decoder: an LSTM (the recurrent skeleton is models/recurrent.py)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfcaption.models.recurrent import RecurrentDecoder


class LSTMDecoder(RecurrentDecoder):
    """Show, Attend and Tell with an LSTM cell (Xu et al. 2015, eq. 1-7).

    State: the tuple (h, c), each (batch, units). Both start from the mean
    projected feature through two separate Dense tanh layers (`init_h`,
    `init_c`; the paper's f_init,h and f_init,c, tanh as in its Theano code).
    Attention and the gating scalar are queried with h, the LSTM's output, not
    the memory c.
    """

    def _init_state_layers(self):
        self.init_h = keras.layers.Dense(self.units, activation="tanh", name="init_h")
        self.init_c = keras.layers.Dense(self.units, activation="tanh", name="init_c")

    def _make_cell(self):
        return keras.layers.LSTMCell(self.units, name="lstm")

    def initial_state(self, mean):
        return self.init_h(mean), self.init_c(mean)

    def hidden(self, state):
        return state[0]

    def _cell_variables(self):
        cell = self.cell
        return cell.kernel, cell.recurrent_kernel, cell.bias, None

    def cell_step(self, x, state, weights):
        """keras.layers.LSTMCell's math (gates i, f, c, o), x already projected
        (the bias included)."""
        h, c = state
        i, f, g, o = tf.split(x + tf.matmul(h, weights[1]), 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, (h, c)
