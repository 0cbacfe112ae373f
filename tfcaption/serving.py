"""Using an exported SavedModel from Python: what `tfcaption caption` runs.

Only the SavedModel is needed (no checkpoint, no config, no model code): the
same path a TF Serving client takes, minus the network.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np
import tensorflow as tf

from tfcaption import io

log = logging.getLogger("tfcaption.caption")

# Written last by export: a version folder without it is incomplete (an export
# killed half way, or one still being written where folders cannot be renamed
# into place, as on Cloud Storage).
INFO_FILE = os.path.join("assets.extra", "tfcaption.json")


def model_info(model_dir: str) -> dict:
    return io.read_json(io.join(model_dir, INFO_FILE))


def complete_versions(model_dir: str) -> list[int]:
    """The versions under saved_models/<name>/ that are complete, oldest first."""
    return io.versions(model_dir, marker=INFO_FILE)


def signature_for(model, model_dir: str, beam: int | None):
    """The exported graph fixes the beam size; greedy is always there as well."""
    exported = model_info(model_dir)["beam_size"]
    if beam is None or beam == exported:
        return model.signatures["serving_default"]
    if beam == 1:
        return model.signatures["greedy"]
    raise ValueError(f"{model_dir} was exported with beam size {exported}; it offers "
                     f"--beam {exported} or --beam 1. Re-export with --beam {beam}")


def sampler_for(model, num_captions: int, temperature: float):
    """The "sample" signature with its per-request settings bound."""
    if "sample" not in model.signatures:
        raise ValueError("this SavedModel has no \"sample\" signature (exported before "
                         "sampling existed): re-export it to sample captions")
    return functools.partial(model.signatures["sample"],
                             num_captions=tf.constant(num_captions, tf.int32),
                             temperature=tf.constant(temperature, tf.float32))


def _run(signature, blobs: list[bytes]) -> dict:
    out = {k: v.numpy() for k, v in signature(image_bytes=tf.constant(blobs, tf.string)).items()}
    if out["caption"].ndim == 2:
        # Sampled, N per image: the likeliest leads (and gets the attention
        # figure); all N go along as "samples".
        rows = np.arange(len(out["caption"]))
        best = out["scores"].argmax(axis=1)
        samples = [[{"caption": c.decode("utf-8"), "score": float(s)} for c, s in zip(cs, ss)]
                   for cs, ss in zip(out["caption"], out["scores"])]
        out = {k: v[rows, best] for k, v in out.items()}
        out["samples"] = samples
    return out


def error_reason(err: tf.errors.OpError) -> str:
    """The line of a graph error that says what went wrong. Its first line is
    only "Graph execution error:", followed by where it was detected."""
    lines = [line.strip() for line in err.message.splitlines() if line.strip()]
    noise = ("Graph execution error", "Detected at node", "<stack traces", "File ", "[[")
    useful = [line for line in lines if not line.startswith(noise)]
    return (useful or lines or [type(err).__name__])[0][:300]


def caption_bytes(signature, blobs: list[bytes], names: list[str], batch_size: int = 32):
    """Captions in batches; a batch that fails (a bad image fails its whole request,
    as in TF Serving) is retried image by image so that only the bad ones are lost,
    and each is reported by name."""
    results = []
    for start in range(0, len(blobs), batch_size):
        part, part_names = blobs[start:start + batch_size], names[start:start + batch_size]
        try:
            outs = [(_run(signature, part), part_names)]
        except tf.errors.InvalidArgumentError:
            outs = []
            for blob, name in zip(part, part_names):
                try:
                    outs.append((_run(signature, [blob]), [name]))
                except tf.errors.InvalidArgumentError as err:
                    reason = error_reason(err)
                    log.error("skipped %s: %s", name, reason)
                    results.append({"image": name, "error": reason})
        for out, out_names in outs:
            for i, name in enumerate(out_names):
                n = int(out["lengths"][i])
                results.append({"image": name, "caption": out["caption"][i].decode("utf-8"),
                                "score": float(out["scores"][i]),
                                "tokens": out["tokens"][i][:n].tolist(),
                                "attention": out["attention"][i][:n],
                                **({"samples": out["samples"][i]} if "samples" in out else {})})
    order = {name: i for i, name in enumerate(names)}
    return sorted(results, key=lambda r: order[r["image"]])


def caption_files(paths: list[str], model_dir: str, beam: int | None = None,
                  attention_dir: str | None = None, num_captions: int | None = None,
                  temperature: float = 1.0) -> list[dict]:
    """-> one dict per image: image, caption, score, tokens (or image, error); with
    num_captions, sampled captions: also samples [{caption, score}] (N of them)."""
    model = tf.saved_model.load(model_dir)
    signature = sampler_for(model, num_captions, temperature) if num_captions else \
        signature_for(model, model_dir, beam)
    blobs, names, results = [], [], []
    for path in paths:
        try:
            blobs.append(io.read_bytes(path))
            names.append(path)
        except (OSError, tf.errors.OpError) as err:
            reason = getattr(err, "message", None) or str(err)
            log.error("skipped %s: %s", path, reason)
            results.append({"image": path, "error": reason})
    results += caption_bytes(signature, blobs, names)
    if attention_dir:
        from tfcaption import attention_plots
        io.makedirs(attention_dir)
        centres = model_info(model_dir).get("cell_centres")  # absent in older exports
        stems: set[str] = set()
        for r in results:
            if "caption" in r:
                name = os.path.splitext(os.path.basename(r["image"]))[0]
                # a/x.jpg and b/x.jpg must not overwrite each other's figures.
                stem, n = name, 1
                while stem in stems:
                    n += 1
                    stem = f"{name}-{n}"
                stems.add(stem)
                stem = os.path.join(attention_dir, stem)
                r["figures"] = attention_plots.save_figure(stem, r["image"], r["caption"],
                                                           r["attention"], centres=centres)
    for r in results:
        r.pop("attention", None)
    order = {p: i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r["image"]])
