"""The SavedModel: JPEG/PNG bytes in; captions, scores and attention maps out.

A `tf.Module` with explicit input signatures (not the Keras objects themselves,
whose restored copies are not callable) holding the backbone, the decoder and
the vocabulary asset. The whole path -- decoding the image bytes, the backbone,
the search loop, the id -> word lookup -- is core TensorFlow, so a stock
TF Serving binary runs it with no Python and no tensorflow-text kernels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import types

import tensorflow as tf

from tfcaption import decoding, io
from tfcaption.checkpoints import chosen_checkpoint, decoder_key, restore_decoder
from tfcaption.config import DecodeConfig, RunConfig
from tfcaption.data import text
from tfcaption.data.features import load_manifest
from tfcaption.data.pipeline import max_tokens
from tfcaption.models.backbones import build_backbone
from tfcaption.serving import INFO_FILE

log = logging.getLogger(__name__)

_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG"


def decode_image_bytes(encoded: tf.Tensor) -> tf.Tensor:
    """One JPEG or PNG -> (h, w, 3) uint8. Anything else fails the request with an
    InvalidArgument error that says decoding failed, instead of reaching the backbone."""
    with tf.name_scope("image_decoding"):
        head = tf.strings.substr(encoded, 0, 4)
        is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), _JPEG)
        is_png = tf.equal(head, _PNG)
        check = tf.debugging.Assert(
            is_jpeg | is_png, ["image decoding failed: input is neither JPEG nor PNG; first bytes:",
                               head])
        with tf.control_dependencies([check]):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image


class CaptionModule(tf.Module):
    """What the SavedModel holds; its tf.functions are the signatures.

    The Keras objects are kept out of the module's object graph on purpose, and
    the tf.Variables the traced functions read are tracked instead. A tracked
    Keras 3 model exports each weight as two variable handles, one that the
    checkpoint restores and one that the functions read; tf.saved_model.load
    copes, but the TF1-style loader of TF Serving and `saved_model_cli run`
    leaves the second uninitialised and every request fails with "Could not find
    variable ...". Tracking exactly the graph's variables gives one handle per
    weight, restored by both loaders (keras.export.ExportArchive does the same).
    """

    def __init__(self, backbone, decoder, tokenizer: text.Tokenizer, beam_size: int,
                 max_len: int, length_penalty: float, decode: DecodeConfig | None = None):
        super().__init__(name="tfcaption")
        # A SimpleNamespace is not trackable: the Keras objects stay out of the save.
        self._keras = types.SimpleNamespace(backbone=backbone, decoder=decoder)
        self.tokenizer = tokenizer  # tracked: the vocabulary asset and its tables
        self.beam_size, self.max_len, self.length_penalty = beam_size, max_len, length_penalty
        # Sampling takes num_captions and temperature per request; the rest is fixed here.
        self.decode = decode or DecodeConfig()
        self.grid_shape = tuple(backbone.grid_shape)
        h, w, c = self.grid_shape
        images = tf.TensorSpec([None], tf.string, name="image_bytes")
        self.caption_images = tf.function(
            lambda image_bytes: self._caption_images(image_bytes, self.beam_size),
            input_signature=[images], autograph=False)
        self.greedy_images = tf.function(
            lambda image_bytes: self._caption_images(image_bytes, 1), input_signature=[images],
            autograph=False)
        self.sample_images = tf.function(self._sample_images, input_signature=[
            images, tf.TensorSpec([], tf.int32, name="num_captions"),
            tf.TensorSpec([], tf.float32, name="temperature")], autograph=False)
        self.caption_features = tf.function(
            lambda features: self._caption_features(features, self.beam_size),
            input_signature=[tf.TensorSpec([None, h, w, c], tf.float32, name="features")],
            autograph=False)
        functions = (self.caption_images, self.greedy_images, self.caption_features,
                     self.sample_images)
        graph_variables = {id(v): v for f in functions
                           for v in f.get_concrete_function().variables}
        self.graph_variables = list(graph_variables.values())

    def _caption_images(self, image_bytes, beam_size: int):
        return self._caption_features(self._image_features(image_bytes), beam_size)

    def _image_features(self, image_bytes):
        backbone = self._keras.backbone
        size = backbone.input_size
        images = tf.map_fn(lambda b: backbone.preprocess(decode_image_bytes(b)),
                           image_bytes, parallel_iterations=8,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        # An empty request skips the backbone, whose convolutions reject a batch of 0.
        return tf.cond(tf.size(image_bytes) > 0, lambda: backbone(images),
                       lambda: tf.zeros([0, *self.grid_shape]))

    def _sample_images(self, image_bytes, num_captions, temperature):
        """num_captions sampled captions per image: caption (batch, N), tokens
        (batch, N, max_len), lengths and scores (batch, N), attention (batch, N,
        max_len, h, w). The seed is fixed: the same request gets the same captions."""
        h, w, c = self.grid_shape
        flat = tf.reshape(self._image_features(image_bytes), [-1, h * w, c])
        d = self.decode
        tokens, lengths, scores, attention = decoding.sample(
            self._keras.decoder, flat, num_captions, self.max_len, temperature, d.top_k,
            d.top_p, d.seed, d.no_repeat_ngram)
        captions = self.tokenizer.detokenize(tf.reshape(tokens, [-1, self.max_len]))
        return {
            "caption": tf.reshape(captions, tf.shape(lengths)),
            "tokens": tokens,
            "lengths": lengths,
            "scores": scores,
            "attention": tf.reshape(attention, [-1, num_captions, self.max_len, h, w]),
        }

    def _caption_features(self, features, beam_size: int):
        h, w, c = self.grid_shape
        flat = tf.reshape(features, [-1, h * w, c])
        decoder = self._keras.decoder
        no_repeat = self.decode.no_repeat_ngram
        if beam_size > 1:
            tokens, lengths, scores, attention = decoding.beam(
                decoder, flat, beam_size, self.max_len, self.length_penalty, no_repeat)
        else:
            tokens, lengths, scores, attention = decoding.greedy(decoder, flat, self.max_len,
                                                                 no_repeat)
        return {
            "caption": self.tokenizer.detokenize(tokens),
            "tokens": tokens,
            "lengths": lengths,
            "scores": scores,
            "attention": tf.reshape(attention, [-1, self.max_len, h, w]),
        }


def traced_as_save_traces():
    """A context in which tf.functions trace as tf.saved_model.save will: save
    traces again every function traced outside one (the save context is part
    of a trace's key), so each of the export's four searches was traced twice.
    TensorFlow's own (private) context with save's default options, which
    export uses; without it (another TensorFlow) only that second trace comes back."""
    try:
        from tensorflow.python.saved_model import save_context, save_options
    except ImportError:
        return contextlib.nullcontext()
    return save_context.save_context(save_options.SaveOptions())


def next_version(model_dir: str) -> int:
    """After every numbered folder, complete or not: an incomplete one may be
    an export still being written (in place, on Cloud Storage)."""
    return max(io.versions(model_dir), default=0) + 1


def export_key(config: RunConfig, checkpoint: str, beam_size: int, max_len: int,
               length_penalty: float) -> dict:
    """What a SavedModel is made of, by content; stored in its tfcaption.json,
    so that `tfcaption run` keeps a version made from the same inputs and
    exports anew when any of them changed (a retrain into the same path too,
    or a decode.* setting the graph fixes, such as decode.no_repeat_ngram)."""
    fingerprint = load_manifest(config.features.cache_dir, "train")["fingerprint"]
    backbone = {k: fingerprint.get(k) for k in ("backbone", "weights", "layer", "input_size")}
    if fingerprint.get("trainable_from"):  # only when set: older keys stay the same
        backbone["trainable_from"] = fingerprint["trainable_from"]
    return {**decoder_key(config, checkpoint), "backbone_sha1": io.digest_json(backbone),
            "beam_size": beam_size, "max_len": max_len, "length_penalty": length_penalty,
            # The decode.* fields this graph fixed as constants.
            "decode_settings": decoding.decode_settings(config)}


def restore_parts(config: RunConfig, checkpoint: str | None = None):
    """-> backbone, decoder, tokenizer, manifest, checkpoint: what an export holds,
    the backbone checked to load the weights the features were cached with."""
    decoder, tokenizer, manifest, checkpoint = restore_decoder(config, checkpoint)
    fc = config.features
    # With features.trainable_from this is the frozen bottom; the (fine-tuned)
    # top is in the decoder, restored from the checkpoint.
    backbone = build_backbone(fc.backbone, weights=fc.weights, input_size=fc.input_size,
                              seed=fc.seed, layer=fc.layer, trainable_from=fc.trainable_from)
    if backbone.weights_id != manifest["weights"]:
        raise RuntimeError(f"the backbone now loads weights {backbone.weights_id}, but the "
                           f"features were cached with {manifest['weights']}")
    return backbone, decoder, tokenizer, manifest, checkpoint


def version_folder(model_dir: str, version: int | None) -> tuple[str, str, int]:
    """-> (final, tmp, version): the version folder to create (the next integer by
    default) and where to write it. On a local disk tmp is a per-process sibling
    (not a number, so neither TF Serving nor io.versions takes it for a version),
    renamed into place by `publish`; elsewhere (gs://, ram://) a folder "rename"
    is a copy, so tmp is the final folder itself, written in place."""
    version = version or next_version(model_dir)
    final = io.join(model_dir, str(version))
    if io.exists(final):
        raise FileExistsError(f"{final} exists; pick another --version")
    tmp = io.temp_name(final) if io.is_local(final) else final
    if tmp != final:
        io.rmtree(tmp)  # the leftover of a killed export by a process of the same id
        for stale in io.remove_dead_temps(model_dir):  # and of those by other ids, here
            log.warning("removed %s: left by an export that did not finish", stale)
    return final, tmp, version


def publish(tmp: str, final: str, info_file: str, info: dict) -> str:
    """Completes a version folder that version_folder gave: writes `info` to
    tmp/info_file LAST (its presence marks the version complete) and moves tmp
    into place when it was written aside. -> final."""
    io.write_json(io.join(tmp, info_file), info)
    if tmp != final:
        io.rename(tmp, final)
    return final


def export(config: RunConfig, out_root: str = "saved_models", version: int | None = None,
           beam_size: int = 3, max_len: int | None = None, length_penalty: float = 0.0,
           checkpoint: str | None = None, name: str | None = None) -> str:
    """Writes saved_models/<name>/<version>/ and returns its path.

    A version counts as complete once its assets.extra/tfcaption.json exists,
    which is written last. On a local disk the folder is also written aside and
    renamed into place, so that TF Serving, which loads any numbered folder it
    finds, never sees half of one; elsewhere (gs://) a folder "rename" is a
    copy, so the version is written in place."""
    checkpoint = chosen_checkpoint(config.train.train_dir, checkpoint)
    max_len = max_len or max_tokens(config.data.max_caption_words)
    key = export_key(config, checkpoint, beam_size, max_len, length_penalty)
    backbone, decoder, tokenizer, manifest, checkpoint = restore_parts(config, checkpoint)
    fc = config.features
    with traced_as_save_traces():
        module = CaptionModule(backbone, decoder, tokenizer, beam_size, max_len,
                               length_penalty, config.decode)
        signatures = {
            "serving_default": module.caption_images.get_concrete_function(),
            "caption_features": module.caption_features.get_concrete_function(),
            "greedy": module.greedy_images.get_concrete_function(),
            "sample": module.sample_images.get_concrete_function(),
        }
    final, tmp, version = version_folder(io.join(out_root, name or config.name), version)
    tf.saved_model.save(module, tmp, signatures=signatures)
    h, w, c = backbone.grid_shape
    # The key (search and decode settings, digests) first: what `tfcaption run` compares.
    info = {**key, "name": name or config.name, "version": version, "checkpoint": checkpoint,
            "backbone": fc.backbone, "layer": backbone.layer, "weights": backbone.weights_id,
            "trainable_from": backbone.trainable_from,
            "input_size": backbone.input_size, "grid": [h, w, c],
            "decode": dataclasses.asdict(config.decode),
            "vocab_size": tokenizer.vocab_size, "resize": "squash (no crop): the attention "
            "grid covers the whole image",
            # Where each attention cell looks, as fractions of the image's height
            # (rows) and width (cols): what heatmaps need to sit on the right pixels.
            "cell_centres": backbone.cell_centres()}
    return publish(tmp, final, INFO_FILE, info)
