"""The captioner as a TensorFlow Lite model, for phones and small boards.

Input: `images`, uint8 (batch, size, size, 3) RGB, the image already decoded and
squashed to the backbone's input size (what `Backbone.resize` returns; a camera
frame scaled by the app). JPEG decoding stays with the app: TFLite has no
DecodeJpeg builtin and the platform's decoder is faster anyway. The batch is
dynamic (-1): the interpreter's resize_tensor_input takes any batch, 1 by default.

Outputs: tokens (batch, max_len) int32 (<pad> = 0 after <end>), lengths (batch,),
scores (batch,) summed log-probabilities, attention (batch, max_len, h, w)
float32. Word ids index the lines of vocab.txt, written beside the model.

Greedy search only: its tf.while_loop becomes a TFLite WHILE over builtin ops.
Beam search does not convert to builtins (its buffer writes need the
StridedSlice form TFLite lacks) and would need the Flex delegate, which apps
rarely ship. Weights are float32 by default: its tokens are the SavedModel's
(300/300 demo test images, bench/tflite_agreement.py). float16 on request
halves the file (the kernels compute in float32 after dequantising) and
changed 1 of the 300 demo captions.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2)

from tfcaption import decoding, io
from tfcaption.config import RunConfig
from tfcaption.data.pipeline import max_tokens, vocabulary_path

OUTPUTS = ("tokens", "lengths", "scores", "attention")
MODEL_FILE, VOCAB_FILE, INFO_FILE = "model.tflite", "vocab.txt", "tfcaption.json"


def greedy_function(backbone, decoder, max_len: int, no_repeat_ngram: int = 0):
    """The concrete function TFLite converts: uint8 images -> OUTPUTS (see above)."""
    size = backbone.input_size
    h, w, c = backbone.grid_shape

    def caption(images):
        grid = backbone(backbone.normalize(images))
        tokens, lengths, scores, attention = decoding.greedy(
            decoder, tf.reshape(grid, [-1, h * w, c]), max_len, no_repeat_ngram)
        return dict(zip(OUTPUTS, (tokens, lengths, scores,
                                  tf.reshape(attention, [-1, max_len, h, w]))))

    spec = tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")
    return tf.function(caption, input_signature=[spec],
                       autograph=False).get_concrete_function()


def convert(function, float16: bool = False) -> bytes:
    """A concrete function (see greedy_function) -> the .tflite flatbuffer.

    The variables are frozen into constants first: left to the converter, those
    read inside the WHILE body stay READ_VARIABLE ops with no value behind them,
    and the interpreter fails on the first step. Freezing drops the output
    structure, so a thin wrapper gives the names back as the signature's keys.
    """
    frozen = convert_variables_to_constants_v2(function, lower_control_flow=False)
    named = tf.function(
        lambda images: tf.nest.pack_sequence_as(function.structured_outputs, frozen(images)),
        input_signature=function.structured_input_signature[0], autograph=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [named.get_concrete_function()], tf.Module())
    if float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def interpreter(model, threads: int | None = None):
    """model: a .tflite path (any filesystem io reads: local, gs://, ram://) or its
    bytes -> its signature runner, called as runner(images=uint8 array) ->
    OUTPUTS. tf.lite.Interpreter warns that LiteRT (ai_edge_litert) replaces it;
    the flatbuffer is the same for both."""
    content = model if isinstance(model, bytes) else io.read_bytes(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        found = tf.lite.Interpreter(model_content=content, num_threads=threads)
    return found.get_signature_runner()


def run(model, images: np.ndarray) -> dict:
    """images uint8 (batch, size, size, 3) -> OUTPUTS as numpy arrays."""
    return interpreter(model)(images=np.asarray(images, np.uint8))


def export_tflite(config: RunConfig, out_root: str = "saved_models", version: int | None = None,
                  max_len: int | None = None, checkpoint: str | None = None,
                  name: str | None = None, float16: bool = False) -> str:
    """Writes <out_root>/<name>-tflite/<version>/ (model.tflite, vocab.txt,
    tfcaption.json) and returns its path. Not under <name>/ itself: TF Serving
    reads every integer folder there as a SavedModel. As a SavedModel version
    (export.version_folder), the folder is complete once its tfcaption.json,
    written last, exists; on a local disk it is written aside and renamed."""
    from tfcaption.export import publish, restore_parts, version_folder

    backbone, decoder, tokenizer, manifest, checkpoint = restore_parts(config, checkpoint)
    fc = config.features
    max_len = max_len or max_tokens(config.data.max_caption_words)
    flatbuffer = convert(greedy_function(backbone, decoder, max_len,
                                         config.decode.no_repeat_ngram), float16)
    final, tmp, version = version_folder(
        io.join(out_root, f"{name or config.name}-tflite"), version)
    io.write_bytes(io.join(tmp, MODEL_FILE), flatbuffer)
    io.write_bytes(io.join(tmp, VOCAB_FILE), io.read_bytes(vocabulary_path(manifest)))
    size = backbone.input_size
    info = {"name": name or config.name, "version": version, "checkpoint": checkpoint,
            "backbone": fc.backbone, "layer": backbone.layer, "weights": backbone.weights_id,
            "input": {"name": "images", "dtype": "uint8", "shape": [-1, size, size, 3],
                      "resize": "squash (no crop) to the input size, RGB"},
            "outputs": list(OUTPUTS), "search": "greedy", "max_len": max_len,
            "grid": list(backbone.grid_shape), "vocab_size": tokenizer.vocab_size,
            "weights_dtype": "float16" if float16 else "float32",
            "decode_settings": decoding.decode_settings(config),
            "cell_centres": backbone.cell_centres()}
    return publish(tmp, final, INFO_FILE, info)
