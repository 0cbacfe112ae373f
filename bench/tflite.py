"""TFLite against the SavedModel: file size and per-image latency of greedy captioning.

    .venv/bin/python bench/tflite.py [--backbone squeezenet] [--images DIR] [--count 16]

One graph, three runtimes: tflite_export.greedy_function (uint8 image of the input
size -> tokens, lengths, scores, attention) saved as a SavedModel and run by
TensorFlow, and converted to TFLite with float32 and with float16 weights, run by
tf.lite.Interpreter. The decoder is untrained and sized as the pipeline file says
(Flickr8k SqueezeNet by default, vocabulary 3000); its <end> bias is bisected as in
bench/serving.py so greedy captions are ~11 words, as a trained model's. The
backbone has random weights (no FLOP changes).

Latency is one image per call (batch 1, a phone's case), measured alternately
(savedmodel, tflite32, tflite16, savedmodel, ...) so machine noise hits all
alike; the median of each round, best round kept. Both runtimes get the same
number of threads. "agree" compares each TFLite model's tokens with the
SavedModel's: whole captions equal, and tokens equal.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from serving import SHARED, build_module, calibrate_end_bias, jpeg_bytes  # noqa: E402

from tfcaption import io, tflite_export  # noqa: E402
from tfcaption.data import text  # noqa: E402
from tfcaption.models.backbones import BACKBONES, build_backbone  # noqa: E402
from tfcaption.pipelines import load_pipeline  # noqa: E402


def size_of(path: str) -> int:
    """Bytes of a file, or of every file under a folder."""
    found = pathlib.Path(path)
    files = [found] if found.is_file() else [f for f in found.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files)


def latencies(fn, images) -> list[float]:
    """Seconds per call of fn on each image, one at a time (after a warm-up)."""
    fn(images[:1])
    out = []
    for i in range(len(images)):
        start = time.perf_counter()
        fn(images[i:i + 1])
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(SHARED / "flickr8k" / "Flicker8k_Dataset"))
    parser.add_argument("--backbone", default="squeezenet", choices=sorted(BACKBONES))
    parser.add_argument("--pipeline", default=str(pathlib.Path(__file__).resolve().parents[1]
                                                  / "pipelines" / "flickr8k_squeezenet_gru.py"))
    parser.add_argument("--count", type=int, default=16, help="images per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--words", type=float, default=11.0)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    blobs, source = jpeg_bytes(args.images, args.count)
    tmp = tempfile.mkdtemp(prefix="tfcaption-bench-tflite-")
    try:
        vocab_path = io.join(tmp, "vocabulary.txt")
        text.save_vocabulary(list(text.SPECIALS) + [f"w{i}" for i in range(args.vocab - 4)],
                             vocab_path)
        backbone = build_backbone(args.backbone, weights="random")
        sizes = load_pipeline(args.pipeline).model
        images = np.stack([backbone.resize(tf.io.decode_jpeg(b, channels=3)).numpy()
                           for b in blobs])
        module = build_module(backbone, sizes, vocab_path, 1, 0.0, args.max_len)
        grid = backbone(backbone.normalize(images))
        calibrate_end_bias(module, grid, args.words)  # leaves the decoder at the bias found
        function = tflite_export.greedy_function(backbone, module._keras.decoder, args.max_len)

        holder = tf.Module()
        holder.variables_ = list(function.variables)
        saved = io.join(tmp, "savedmodel")
        tf.saved_model.save(holder, saved, signatures={"greedy": function})
        signature = tf.saved_model.load(saved).signatures["greedy"]
        files = {"savedmodel": saved}
        runners = {}
        for name, half in (("tflite32", False), ("tflite16", True)):
            files[name] = io.join(tmp, f"{name}.tflite")
            io.write_bytes(files[name], tflite_export.convert(function, float16=half))
            runners[name] = tflite_export.interpreter(files[name], threads=args.threads)

        calls = {"savedmodel": lambda x: {k: v.numpy() for k, v in
                                          signature(images=tf.constant(x)).items()}}
        calls.update({name: (lambda r: lambda x: r(images=x))(r) for name, r in runners.items()})
        tokens = {name: np.concatenate([fn(images[i:i + 1])["tokens"]
                                        for i in range(len(images))])
                  for name, fn in calls.items()}
        rounds = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, fn in calls.items():
                rounds[name].append(float(np.median(latencies(fn, images))))
        sizes_bytes = {name: size_of(path) for name, path in files.items()}
    finally:
        io.rmtree(tmp)

    best = {name: min(r) for name, r in rounds.items()}
    h, w, c = backbone.grid_shape
    lengths = (tokens["savedmodel"] != 0).sum(axis=1) - 1
    print(f"\n{args.backbone} (random) {backbone.input_size}px -> {h}x{w}x{c}; decoder "
          f"embedding {sizes.embedding_dim}, units {sizes.units}, vocabulary {args.vocab}, "
          f"max_len {args.max_len}, greedy captions {lengths.mean():.1f} words; {source}; "
          f"{args.threads} threads, batch 1\n")
    labels = {"savedmodel": "SavedModel (TF runtime), float32",
              "tflite32": "TFLite, float32 weights", "tflite16": "TFLite, float16 weights"}
    print(f"{'model':<36}{'MB':>8}{'/ SM':>7}{'ms/image':>10}{'/ SM':>7}"
          f"{'captions =':>12}{'tokens =':>10}   rounds (ms)")
    for name, label in labels.items():
        same = tokens[name] == tokens["savedmodel"]
        print(f"{label:<36}{sizes_bytes[name] / 1e6:>8.2f}"
              f"{sizes_bytes[name] / sizes_bytes['savedmodel']:>7.2f}"
              f"{best[name] * 1e3:>10.1f}{best[name] / best['savedmodel']:>7.2f}"
              f"{same.all(axis=1).mean():>12.2f}{same.mean():>10.3f}   "
              f"{' '.join(f'{x * 1e3:.1f}' for x in rounds[name])}")
    print("\nMB: the SavedModel folder (graph + variables) or the .tflite file; ms/image:\n"
          "median per-image latency of the best round; captions = / tokens =: share equal\n"
          "to the SavedModel's.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
