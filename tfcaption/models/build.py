"""Model construction from the config: the one place a decoder is made."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from tfcaption.config import RunConfig
from tfcaption.models.decoder import GRUDecoder
from tfcaption.models.transformer import TransformerDecoder

# config.model.decoder -> the class; each has from_config_dataclass and the
# encode / step / teacher_forced contract that training and decoding call.
DECODERS = {"gru": GRUDecoder, "transformer": TransformerDecoder}


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras 3 reads the policy when a layer is built; set it for the build only."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name or "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def build_decoder(config: RunConfig, vocab_size: int, grid_shape) -> keras.Model:
    """A decoder with its variables created (so checkpoints restore into them)."""
    name = config.model.decoder
    if name not in DECODERS:
        raise ValueError(f"model.decoder must be one of {', '.join(DECODERS)}, not {name!r}")
    with dtype_policy(config.train.mixed_precision):
        decoder = DECODERS[name].from_config_dataclass(config.model, vocab_size,
                                                       grid_shape=grid_shape)
    h, w, c = grid_shape
    decoder((tf.zeros([1, h * w, c]), tf.zeros([1, 2], tf.int32)))
    return decoder
