"""Do the TFLite models caption a split as the SavedModel does? A trained pipeline's
checkpoint, exported both ways, on every image of its eval split.

    .venv/bin/python bench/tflite_agreement.py [pipelines/synthetic.py] [--set k=v ...]

Exports the pipeline's chosen checkpoint (best, else latest) as a greedy
SavedModel (`tfcaption export --beam 1`) and as TFLite with float32 and float16
weights, into a temporary folder; captions every image of eval.split with the
SavedModel's `greedy` signature (JPEG bytes in) and with each TFLite model
(the same decoded, squashed uint8 pixels in), and prints how many captions
and tokens agree. Run it after `tfcaption run` (or `train`) of the pipeline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfcaption import export, io, tflite_export  # noqa: E402
from tfcaption.config import override  # noqa: E402
from tfcaption.data import features, sources  # noqa: E402
from tfcaption.models.backbones import build_backbone  # noqa: E402
from tfcaption.pipelines import load_pipeline  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="pipelines/synthetic.py")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    config = load_pipeline(args.pipeline)
    for assignment in args.overrides:
        override(config, assignment)
    examples = sources.load_examples(config.data, config.eval.split)
    blobs = [ex.image if isinstance(ex.image, bytes) else io.read_bytes(ex.image)
             for ex in examples]
    fc = config.features
    backbone = build_backbone(fc.backbone, weights=fc.weights, input_size=fc.input_size,
                              seed=fc.seed)
    pixels = np.stack([backbone.resize(features.decode_image(tf.constant(b))).numpy()
                       for b in blobs]).astype(np.uint8)

    with tempfile.TemporaryDirectory(prefix="tfcaption-tflite-") as out:
        saved = export.export(config, out_root=out, beam_size=1)
        greedy = tf.saved_model.load(saved).signatures["greedy"]
        reference = np.concatenate([
            greedy(image_bytes=tf.constant(blobs[i:i + args.batch]))["tokens"].numpy()
            for i in range(0, len(blobs), args.batch)])
        rows = []
        for dtype in ("float32", "float16"):
            path = tflite_export.export_tflite(config, out, float16=dtype == "float16")
            runner = tflite_export.interpreter(io.join(path, tflite_export.MODEL_FILE))
            found = np.concatenate([runner(images=pixels[i:i + args.batch])["tokens"]
                                    for i in range(0, len(pixels), args.batch)])
            width = min(found.shape[1], reference.shape[1])
            same = np.all(found[:, :width] == reference[:, :width], axis=1)
            tokens = np.mean(found[:, :width] == reference[:, :width])
            size = io.gfile.stat(io.join(path, tflite_export.MODEL_FILE)).length
            rows.append((dtype, int(same.sum()), len(same), tokens, size))
    print(f"\n{config.name}, {config.eval.split} split, {len(blobs)} images, greedy "
          f"(no-repeat {config.decode.no_repeat_ngram}): TFLite against the SavedModel")
    print(f"{'weights':<10}{'captions equal':>16}{'tokens equal':>14}{'file MB':>9}")
    for dtype, same, n, tokens, size in rows:
        print(f"{dtype:<10}{f'{same}/{n}':>16}{tokens:>14.4f}{size / 2**20:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
