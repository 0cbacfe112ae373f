"""The GRU decoder with soft attention (the recurrent skeleton is models/recurrent.py)."""

from __future__ import annotations

import keras

from tfcaption.models.recurrent import RecurrentDecoder


class GRUDecoder(RecurrentDecoder):
    """Show, Attend and Tell with a GRU cell: state h (batch, units), from the
    mean projected feature through one Dense tanh layer (`init_state`)."""

    def _init_state_layers(self):
        self.init_state = keras.layers.Dense(self.units, activation="tanh", name="init_state")

    def _make_cell(self):
        return keras.layers.GRUCell(self.units, name="gru")

    def initial_state(self, mean):
        return self.init_state(mean)

    def hidden(self, state):
        return state

    def recur(self, inputs, state, training):
        h, _ = self.cell(inputs, [state], training=training)
        h = h[0] if isinstance(h, (list, tuple)) else h
        return h, h
