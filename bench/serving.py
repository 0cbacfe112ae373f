"""Serving throughput: JPEG bytes -> captions through a reloaded SavedModel, against
the bare backbone.

    .venv/bin/python bench/serving.py [--backbone squeezenet|inception_v3|vgg16]
        [--pipeline pipelines/flickr8k_squeezenet.py] [--images DIR] [--max-len 18]
        [--decoders gru,lstm,transformer]

A random-weight backbone (SqueezeNet by default: 224 px, 13x13x512 grid) and an
untrained decoder sized as the pipeline file says (the Flickr8k SqueezeNet run by
default; vocabulary 3000), once per decoder type (model.decoder: a row each), are
exported twice, greedy and beam 3, with `export.CaptionModule` and `tf.saved_model.save`, then
reloaded with `tf.saved_model.load` (what TF Serving runs: no Python objects).
Untrained weights change no FLOP count; they do change caption length, so the
bias on <end> is bisected to give greedy captions of `--words` words on average
(a trained Flickr8k model writes ~11); the table shows the lengths found.

All rates come from one process, the same images and batch size, measured
alternately (bare, model, greedy, beam, bare, ...) so machine noise hits all
alike; the best of each is kept. "bare" is the backbone's forward pass on
preprocessed tensors already in memory; "/ bare" says what JPEG decoding,
resizing, the decoder and the word lookup cost on top of it (1.0 = nothing).
"model" adds the decoder's greedy search to "bare", still in memory, so
greedy / model is the cost of serving itself apart from the model's math.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import os
import pathlib
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tfcaption import export  # noqa: E402
from tfcaption.config import ModelConfig, RunConfig  # noqa: E402
from tfcaption.data import text  # noqa: E402
from tfcaption.data.pipeline import max_tokens  # noqa: E402
from tfcaption.data.text import END_ID  # noqa: E402
from tfcaption.models.backbones import BACKBONES, build_backbone  # noqa: E402
from tfcaption.pipelines import load_pipeline  # noqa: E402
from tfcaption.models.build import build_decoder  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


def jpeg_bytes(folder: str, count: int, seed: int = 0) -> tuple[list[bytes], str]:
    """`count` JPEG files of `folder` as they are on disk, else synthetic 500x375 JPEGs
    (Flickr8k's usual size) of smooth noise, so decoding costs what it would."""
    files = sorted(glob.glob(os.path.join(folder, "*.jpg")))[:count]
    if len(files) == count:
        return [open(f, "rb").read() for f in files], f"{count} JPEGs of {folder}"
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(count):
        small = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(small).resize((500, 375), Image.BILINEAR).save(out, "JPEG", quality=90)
        blobs.append(out.getvalue())
    return blobs, f"{count} synthetic 500x375 JPEGs ({folder} not found)"


def build_module(backbone, model: ModelConfig, vocab_path: str, beam_size: int,
                 end_bias: float, max_len: int) -> export.CaptionModule:
    config = RunConfig(model=dataclasses.replace(model, dropout=0.0))
    tokenizer = text.Tokenizer(vocab_path, config.data.max_caption_words)
    keras.utils.set_random_seed(0)  # the same decoder in both exports
    decoder = build_decoder(config, tokenizer.vocab_size, backbone.grid_shape)
    set_end_bias(decoder, end_bias)
    return export.CaptionModule(backbone, decoder, tokenizer, beam_size, max_len, 0.0)


def set_end_bias(decoder, value: float) -> None:
    bias = decoder.logits_layer.bias
    bias.assign(tf.tensor_scatter_nd_update(tf.zeros_like(bias), [[END_ID]], [value]))


def calibrate_end_bias(module: export.CaptionModule, grid, words: float) -> float:
    """An untrained decoder almost never says <end>; the bias on <end> (bisected)
    that makes its greedy captions `words` words long on average, as a trained
    model's are. Only the loop's length depends on it, not the cost of a step."""
    decoder = module._keras.decoder
    greedy = tf.function(lambda g: module._caption_features(g, 1)["lengths"])
    low, high = 0.0, 40.0
    for _ in range(14):
        set_end_bias(decoder, (low + high) / 2)
        mean_words = float(np.mean(greedy(grid))) - 1  # lengths count <end>
        low, high = ((low + high) / 2, high) if mean_words > words else (low, (low + high) / 2)
    return (low + high) / 2


def save_and_load(module: export.CaptionModule, path: str):
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.caption_images.get_concrete_function(),
        "caption_features": module.caption_features.get_concrete_function(),
    })
    return tf.saved_model.load(path).signatures["serving_default"]


def rate(fn, batches, repeats: int) -> float:
    """Images/s of fn over every batch, `repeats` times (after one warm-up call)."""
    fn(batches[0])
    start = time.perf_counter()
    for _ in range(repeats):
        for b in batches:
            fn(b)
    return repeats * sum(int(b.shape[0]) for b in batches) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(SHARED / "flickr8k" / "Flicker8k_Dataset"))
    parser.add_argument("--backbone", default="squeezenet", choices=sorted(BACKBONES))
    parser.add_argument("--pipeline", default=str(pathlib.Path(__file__).resolve().parents[1]
                                                  / "pipelines" / "flickr8k_squeezenet.py"),
                        help="the decoder's sizes come from this pipeline's model config")
    parser.add_argument("--decoders", default="gru,lstm,transformer",
                        help="model.decoder types, a row each")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--words", type=float, default=11.0,
                        help="mean caption length the <end> bias aims at")
    parser.add_argument("--size", type=int, default=0, help="0 = the backbone's native size")
    parser.add_argument("--max-len", type=int, default=max_tokens(30),
                        help="the export's max_len (default: 30 words + <start>, <end>); "
                        "lower it to cap the loop where a trained model's longest caption ends")
    args = parser.parse_args()

    blobs, source = jpeg_bytes(args.images, args.batch * args.batches)
    tmp = tempfile.mkdtemp(prefix="tfcaption-bench-")
    try:
        vocab_path = os.path.join(tmp, "vocabulary.txt")
        text.save_vocabulary(list(text.SPECIALS) + [f"w{i}" for i in range(args.vocab - 4)],
                             vocab_path)
        backbone = build_backbone(args.backbone, weights="random", input_size=args.size)
        sizes = load_pipeline(args.pipeline).model
        byte_batches = [tf.constant(blobs[i:i + args.batch])
                        for i in range(0, len(blobs), args.batch)]
        preprocessed = [tf.stack([backbone.preprocess(tf.io.decode_jpeg(b, channels=3))
                                  for b in blobs[i:i + args.batch]])
                        for i in range(0, len(blobs), args.batch)]
        forward = tf.function(lambda x: backbone(x))
        modules, model_fns = {}, {}
        for decoder in args.decoders.split(","):
            # The same sizes for each type; each gets its own <end> bias, so
            # every decoder's captions have the same mean length.
            typed = dataclasses.replace(sizes, decoder=decoder)
            end_bias = calibrate_end_bias(build_module(backbone, typed, vocab_path, 1, 0.0,
                                                       args.max_len),
                                          forward(preprocessed[0]), args.words)
            for name, k in (("greedy", 1), ("beam3", 3)):
                modules[f"{decoder} {name}"] = build_module(backbone, typed, vocab_path, k,
                                                            end_bias, args.max_len)
            # The model's own compute, in this process: backbone + greedy search.
            greedy = modules[f"{decoder} greedy"]
            model_fns[decoder] = tf.function(
                lambda x, m=greedy: m._caption_features(backbone(x), 1))
        signatures = {name: save_and_load(module, os.path.join(tmp, name.replace(" ", "-")))
                      for name, module in modules.items()}
        lengths = {name: np.concatenate([sig(image_bytes=b)["lengths"].numpy()
                                         for b in byte_batches]) - 1
                   for name, sig in signatures.items()}

        measures = {"bare": lambda b: forward(b).numpy()}
        inputs = {"bare": preprocessed}
        for decoder, fn in model_fns.items():
            measures[f"{decoder} model"] = lambda b, fn=fn: fn(b)["tokens"].numpy()
            inputs[f"{decoder} model"] = preprocessed
            for name in ("greedy", "beam3"):
                sig = signatures[f"{decoder} {name}"]
                measures[f"{decoder} {name}"] = \
                    lambda b, sig=sig: sig(image_bytes=b)["tokens"].numpy()
                inputs[f"{decoder} {name}"] = byte_batches
        runs: dict[str, list[float]] = {name: [] for name in measures}
        for _ in range(args.rounds):
            for name, fn in measures.items():
                runs[name].append(rate(fn, inputs[name], args.repeats))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    best = {name: max(r) for name, r in runs.items()}
    h, w, c = backbone.grid_shape
    print(f"\n{args.backbone} (random) {backbone.input_size}px -> {h}x{w}x{c}; decoder "
          f"embedding {sizes.embedding_dim}, units {sizes.units}, attention "
          f"{sizes.attention_units}, features {sizes.feature_dim} (transformer: d_model = units, "
          f"{sizes.layers} blocks, {sizes.heads} heads), vocabulary {args.vocab}, "
          f"max_len {args.max_len}; batch {args.batch}; {source}; {os.cpu_count()} CPUs\n")
    rows = [("bare", "backbone forward, in-memory tensors")]
    for decoder in model_fns:
        rows += [(f"{decoder} model", f"{decoder}: backbone + greedy, in-memory"),
                 (f"{decoder} greedy", f"{decoder}: SavedModel, greedy"),
                 (f"{decoder} beam3", f"{decoder}: SavedModel, beam 3")]
    print(f"{'measure':<44}{'images/s':>10}{'/ bare':>8}{'words':>11}   runs")
    for name, label in rows:
        words = (f"{lengths[name].mean():.1f}/{lengths[name].max()}" if name in lengths
                 else "")
        print(f"{label:<44}{best[name]:>10.1f}{best[name] / best['bare']:>8.3f}{words:>11}   "
              f"{' '.join(f'{x:.1f}' for x in runs[name])}")
    for decoder in model_fns:
        print(f"{decoder + ': greedy SavedModel / in-memory':<44}"
              f"{best[decoder + ' greedy'] / best[decoder + ' model']:>18.3f}")
    print("\nwords: mean/max caption length (the loop runs to the longest of its batch);\n"
          "the last ratio is what serving adds to the model's compute: JPEG decoding,\n"
          "resizing, the SavedModel call and the word lookup.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
