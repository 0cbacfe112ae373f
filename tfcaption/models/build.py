"""Model construction from the config: the one place a decoder is made."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from tfcaption.config import ModelConfig, RunConfig
from tfcaption.models.backbones import build_backbone
from tfcaption.models.decoder import GRUDecoder
from tfcaption.models.lstm import LSTMDecoder
from tfcaption.models.transformer import TransformerDecoder

# config.model.decoder -> the class. Every one has the same protocol: encode
# (features, training, max_len), step, teacher_forced, project, vocab_size,
# from_config_dataclass (tests/models/test_decoder_contract.py).
DECODERS = {"gru": GRUDecoder, "lstm": LSTMDecoder, "transformer": TransformerDecoder}


def check_model(model: ModelConfig) -> None:
    """Refuses a decoder type that does not exist, or sizes that cannot be built."""
    if model.decoder not in DECODERS:
        raise ValueError(f"model.decoder={model.decoder!r} is not a decoder; choose one of "
                         f"{', '.join(DECODERS)}")
    if model.layers < 1 or model.heads < 1:
        raise ValueError(f"model.layers ({model.layers}) and model.heads ({model.heads}) "
                         "must be >= 1")
    if model.decoder == "transformer" and (model.units % model.heads or model.units % 2):
        raise ValueError(f"model.units ({model.units}) must be even and a multiple of "
                         f"model.heads ({model.heads}) for the transformer")


def decoder_type(decoder) -> str:
    """The config.model.decoder name of a built decoder (what its checkpoints record)."""
    for name, cls in DECODERS.items():
        if type(decoder) is cls:
            return name
    raise TypeError(f"{type(decoder).__name__} is not in models.build.DECODERS")


def check_checkpointed(decoder) -> None:
    """Raises when one of decoder's weights is out of reach of
    tf.train.Checkpoint(decoder=decoder): a checkpoint would neither save nor
    restore it, and restore_checked could not tell (it compares the
    checkpoint with what the checkpoint can see). Keras 3 does this to layers
    held in a list or dict attribute: it tracks them for `weights` but hides
    them from tf.train.Checkpoint; hold them in a tuple or as attributes.

    A walk over the checkpoint's object graph, no file written (~1 ms).
    """
    checkpoint = tf.train.Checkpoint(decoder=decoder)  # TrackableView keeps a weakref
    reachable = {id(x) for x in tf.train.TrackableView(checkpoint).descendants()}
    missing = [w.path for w in decoder.weights if id(w) not in reachable]
    if missing:
        names = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise TypeError(f"{type(decoder).__name__}: {len(missing)} of its "
                        f"{len(decoder.weights)} weights would be missing from its "
                        f"checkpoints ({names}): layers held in a list or dict are hidden "
                        "from tf.train.Checkpoint; hold them in a tuple")


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras 3 reads the policy when a layer is built; set it for the build only."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name or "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def backbone_top(config: RunConfig, weights: str | None = None):
    """The backbone's top above features.trainable_from (None when it is not
    set), with `weights` (default features.weights: ImageNet's, where training
    starts from; "random" where a checkpoint's weights replace them)."""
    fc = config.features
    if not fc.trainable_from:
        return None
    return build_backbone(fc.backbone, weights=weights or fc.weights, input_size=fc.input_size,
                          seed=fc.seed, layer=fc.layer, trainable_from=fc.trainable_from).top


def top_variables(decoder) -> list:
    """The trainable weights of decoder's backbone top ([] without one)."""
    return list(decoder.top.trainable_variables) if decoder.top is not None else []


def head_variables(decoder) -> list:
    """decoder's trainable weights but the backbone top's: what the
    cross-entropy phase trains (in decoder.trainable_variables' order)."""
    top = {id(v) for v in top_variables(decoder)}
    return [v for v in decoder.trainable_variables if id(v) not in top]


def build_decoder(config: RunConfig, vocab_size: int, grid_shape, top=None):
    """A decoder of type config.model.decoder with its variables created (so
    checkpoints restore into them), every one of them checkpointed. grid_shape:
    the cached grid's; top: the backbone's top over it (backbone_top), run by
    the decoder before its feature projection."""
    check_model(config.model)
    with dtype_policy(config.train.mixed_precision):
        more = {} if top is None else {"top": top,
                                       "trainable_from": config.features.trainable_from}
        decoder = DECODERS[config.model.decoder].from_config_dataclass(
            config.model, vocab_size, grid_shape=grid_shape, **more)
    h, w, c = grid_shape
    decoder((tf.zeros([1, h * w, c]), tf.zeros([1, 2], tf.int32)))
    check_checkpointed(decoder)
    return decoder
