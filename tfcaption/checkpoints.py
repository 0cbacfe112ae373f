"""Checkpoints: restore with a check, the checkpoint a stage uses, the trained decoder."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfcaption import io
from tfcaption.config import RunConfig
from tfcaption.data import text
from tfcaption.data.features import load_manifest, vocabulary_file
from tfcaption.data.pipeline import vocabulary_path
from tfcaption.models.build import backbone_top, build_decoder, decoder_type

# A run's checkpoints name their decoder type (config.model.decoder) in a string
# variable beside the weights, so that restoring one into another type fails
# with both names rather than with a list of weights that do not match.
# Checkpoints written before there was a choice hold none: they are GRU's.
TYPE_KEY = "model_decoder"
UNRECORDED_TYPE = "gru"


def weight_names(prefix: str) -> list[str]:
    return list(tf.compat.v1.train.NewCheckpointReader(prefix).get_variable_to_shape_map())


# Likewise the backbone layer a decoder with a trainable top runs from
# (features.trainable_from); checkpoints without it have no top.
TOP_KEY = "features_trainable_from"


def type_record(decoder) -> dict:
    """{TYPE_KEY: a variable naming decoder's type} (and TOP_KEY: its top's
    first layer, when it has one), to give tf.train.Checkpoint beside
    decoder=decoder so that its files say what they hold."""
    record = {TYPE_KEY: tf.Variable(decoder_type(decoder), trainable=False, name=TYPE_KEY)}
    if decoder.top is not None:
        record[TOP_KEY] = tf.Variable(decoder.trainable_from, trainable=False, name=TOP_KEY)
    return record


def recorded_type(path: str, key: str = TYPE_KEY) -> str | None:
    """The decoder type (or another record) the checkpoint at path records;
    None if it records none."""
    # The reader itself, not tf.train.load_checkpoint: on ram:// a prefix
    # passes for a directory, and load_checkpoint then looks for a
    # `checkpoint` file in it (as weight_names does).
    reader = tf.compat.v1.train.NewCheckpointReader(path)
    key = f"{key}/.ATTRIBUTES/VARIABLE_VALUE"
    return reader.get_tensor(key).decode() if reader.has_tensor(key) else None


def _check_decoder_type(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Raises when path was trained with another decoder type than checkpoint's
    decoder: its weights could not fit, and the error should say why."""
    decoder = getattr(checkpoint, "decoder", None)
    if decoder is None:
        return
    recorded = recorded_type(path)
    found, wanted = recorded or UNRECORDED_TYPE, decoder_type(decoder)
    if found != wanted:
        why = "" if recorded else " (it records no type: it predates model.decoder)"
        raise ValueError(f"checkpoint {path} was trained with model.decoder={found}{why}; "
                         f"this config says model.decoder={wanted}. Use it with --set "
                         f"model.decoder={found}, or train {wanted} in another train.train_dir")
    top, wanted_top = recorded_type(path, TOP_KEY) or "", decoder.trainable_from
    if top != wanted_top:
        said = lambda v: f"features.trainable_from={v}" if v else "no features.trainable_from"  # noqa: E731
        raise ValueError(f"checkpoint {path} was trained with {said(top)} (a backbone top "
                         f"{'in' if top else 'not in'} the model); this config says "
                         f"{said(wanted_top)}. Set features.trainable_from={top!r} to use "
                         "it, or train in another train.train_dir")


def _decoder_weights(keys) -> set[str]:
    return {k for k in keys if k.startswith("decoder/") and "OPTIMIZER_SLOT" not in k}


def _check_no_extra_weights(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Raises when path holds decoder weights that checkpoint's decoder lacks
    (another decoder, or a tfcaption whose layers had more weights): a plain
    restore would drop them without a word and run a different model."""
    decoder = getattr(checkpoint, "decoder", None)
    if decoder is None:
        return
    # The decoder's own keys, as a checkpoint of it would name them.
    probe = f"ram://tfcaption-probe-{id(decoder)}/ckpt"
    written = tf.train.Checkpoint(decoder=decoder).write(probe)
    try:  # read by prefix: ram:// says any prefix of a file is a directory
        mine = _decoder_weights(weight_names(written))
    finally:
        io.gfile.rmtree(probe.rsplit("/", 1)[0])
    extra = sorted(_decoder_weights(weight_names(path)) - mine)
    if extra:
        names = ", ".join(k.split("/.ATTRIBUTES")[0] for k in extra[:5])
        raise ValueError(f"{path} holds decoder weights this decoder does not have ({names}"
                         f"{', ...' if len(extra) > 5 else ''}): it was trained with other "
                         "model options or by an older tfcaption; retrain, or set "
                         "config.model as it was")


def restore_checked(checkpoint: tf.train.Checkpoint, path: str):
    """Restores path into checkpoint's objects; raises when path was trained with
    another decoder type, when one of their weights is not in it (a run trained
    with other model options), which a plain restore would leave at its initial
    value without a word, and when it holds decoder weights the decoder lacks."""
    _check_decoder_type(checkpoint, path)
    _check_no_extra_weights(checkpoint, path)
    try:  # ValueError: a weight whose shape changed, or one matched to another's slot
        status = checkpoint.restore(path)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise ValueError(f"{path} does not hold every weight of the decoder that "
                         f"config.model describes (trained with other model options?): "
                         f"{e}") from None
    return status


def chosen_checkpoint(train_dir: str, checkpoint: str | None = None) -> str:
    """What evaluation and export use: `checkpoint` if given, else the best (by
    validation CIDEr-D), else the latest."""
    found = checkpoint or tf.train.latest_checkpoint(io.join(train_dir, "best")) \
        or tf.train.latest_checkpoint(io.join(train_dir, "latest"))
    if not found:
        raise FileNotFoundError(f"no checkpoint under {train_dir}; run `tfcaption train` first")
    return found


def checkpoint_digest(path: str) -> str:
    """A key for a checkpoint's content (its index and data files), not its
    name: a retrain after `make clean` writes the same name with other weights."""
    files = sorted(io.gfile.glob(f"{path}.*"))
    if not files:
        raise FileNotFoundError(f"checkpoint {path} has no files")
    return io.digest_files(files)


def decoder_key(config: RunConfig, checkpoint: str) -> dict:
    """What the decoder that restore_decoder returns is made of, by content:
    the checkpoint's weights and the vocabulary its ids index. Evaluation and
    export store it with their output and redo their work when it changes."""
    return {"checkpoint_digest": checkpoint_digest(checkpoint),
            "vocabulary_sha1": io.digest_files([vocabulary_file(config.features.cache_dir)])}


def restore_decoder(config: RunConfig, checkpoint: str | None = None):
    """The trained decoder (float32) from the best checkpoint (else the latest),
    with its tokenizer and the cache manifest."""
    manifest = load_manifest(config.features.cache_dir, "train")
    tokenizer = text.Tokenizer(vocabulary_path(manifest), config.data.max_caption_words)
    checkpoint = chosen_checkpoint(config.train.train_dir, checkpoint)
    float32 = dataclasses.replace(
        config, train=dataclasses.replace(config.train, mixed_precision=""))
    # The top's weights are the checkpoint's: the random ones need no ImageNet file.
    decoder = build_decoder(float32, tokenizer.vocab_size, manifest["grid_shape"],
                            backbone_top(config, "random"))
    # expect_partial: the optimizer's slots are in the checkpoint, not needed here.
    restore_checked(tf.train.Checkpoint(decoder=decoder), checkpoint).expect_partial()
    return decoder, tokenizer, manifest, checkpoint
