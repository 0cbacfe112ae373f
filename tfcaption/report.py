"""The report: one self-contained HTML page to read, print or attach.

Built from the exported SavedModel alone (tf.saved_model.load, the
serving_default signature on the image bytes: the path TF Serving takes), the
eval split's images and reference captions, and the split's metrics.json when
`evaluate` has written it. Every picture is embedded as a data URI, so the one
file is the whole report: it can be mailed, archived or printed to PDF.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io as stdio
import json

import tensorflow as tf
from PIL import Image

from tfcaption import attention_plots, io, report_diversity, serving
from tfcaption.config import RunConfig
from tfcaption.data import sources
from tfcaption.data.example import examples_digest

THUMBNAIL = 360  # longest side, in pixels, of the image shown beside its captions

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
.example { border: 1px solid #ddd; border-radius: 4px; padding: 1em; margin: 1.5em 0;
           break-inside: avoid; page-break-inside: avoid; }
.top { display: flex; gap: 1.5em; align-items: flex-start; }
.top img { max-width: 360px; height: auto; flex: none; }
.caption { font-size: 1.15em; font-weight: 600; margin: 0 0 0.5em; }
.refs, .samples { margin: 0; padding-left: 1.2em; color: #444; }
.heatmaps { width: 100%; height: auto; margin-top: 0.8em; }
.error { color: #a00; }
@media print {
  body { max-width: none; margin: 0; font-size: 10pt; }
  .example { border: none; border-top: 1px solid #ccc; border-radius: 0; }
  a { color: inherit; text-decoration: none; }
}
"""


def latest_model_dir(config: RunConfig) -> str:
    """The newest complete version under <eval.export_dir>/<name>/."""
    root = io.join(config.eval.export_dir, config.name)
    versions = serving.complete_versions(root)
    if not versions:
        raise FileNotFoundError(f"no exported SavedModel under {root}; run `tfcaption export`")
    return io.join(root, str(versions[-1]))


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _thumbnail(blob: bytes) -> str:
    """A small JPEG of the image (photos can be megabytes; the page should not be)."""
    with Image.open(stdio.BytesIO(blob)) as img:
        img = img.convert("RGB")
        img.thumbnail((THUMBNAIL, THUMBNAIL))
        out = stdio.BytesIO()
        img.save(out, format="JPEG", quality=88)
    return _data_uri(out.getvalue(), "image/jpeg")


def _read(image) -> bytes:
    return image if isinstance(image, bytes) else io.read_bytes(image)


def _metrics_html(path: str) -> str:
    if not io.exists(path):
        return (f"<p class='meta'>No metrics yet ({html.escape(path)} is missing): "
                "run <code>tfcaption evaluate</code> first.</p>")
    stored = io.read_json(path)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td class='num'>{v:.4f}</td></tr>"
                   for k, v in stored["metrics"].items())
    body = f"<table><tr><th>metric</th><th>score</th></tr>{rows}</table>"
    correctness = stored.get("attention_correctness")
    if correctness and correctness.get("words"):
        body += ("<table><tr><th>attention correctness</th><th></th></tr>"
                 f"<tr><th>pointing game accuracy</th>"
                 f"<td class='num'>{correctness['pointing_accuracy']:.4f}</td></tr>"
                 f"<tr><th>attention mass in box</th>"
                 f"<td class='num'>{correctness['mass_in_box']:.4f}</td></tr>"
                 f"<tr><th>chance (box share of image)</th>"
                 f"<td class='num'>{correctness['chance']:.4f}</td></tr>"
                 f"<tr><th>words scored</th><td class='num'>{correctness['words']}</td></tr>"
                 "</table>")
    elif correctness:
        body += "<p class='meta'>Attention correctness: no generated word named a boxed object.</p>"
    body += report_diversity.metrics_table(stored)
    search = "greedy" if stored.get("beam") == 1 else f"beam {stored.get('beam')}"
    if stored.get("search"):  # eval.search = "sample"
        search = f"one sample per image at temperature {stored['search']['temperature']}"
    body += (f"<p class='meta'>{stored.get('count')} images, {search}, checkpoint "
             f"{html.escape(str(stored.get('checkpoint')))}</p>")
    body += "".join(f"<p class='meta'>Note: {html.escape(n)}</p>" for n in stored.get("notes", []))
    return body


def _example_html(example, result: dict, blob: bytes, centres: dict | None) -> str:
    refs = "".join(f"<li>{html.escape(c)}</li>" for c in example.captions)
    name = html.escape(example.image_id)
    if "error" in result:
        return (f"<div class='example'><p class='caption'>{name}</p>"
                f"<p class='error'>not captioned: {html.escape(result['error'])}</p></div>")
    fig = attention_plots.caption_figure(blob, result["caption"], result["attention"],
                                         centres=centres)
    heatmaps = _data_uri(attention_plots.jpeg_bytes(fig), "image/jpeg")
    caption = html.escape(result["caption"])
    return f"""<div class="example">
<div class="top"><img src="{_thumbnail(blob)}" alt="{name}">
<div><p class="caption">{caption}</p>
<p class="meta">{name} &middot; log-probability {result['score']:.2f}</p>
{report_diversity.samples_html(result.get("samples"))}
<p class="meta">References:</p><ol class="refs">{refs}</ol></div></div>
<img class="heatmaps" src="{heatmaps}" alt="attention of each word of: {caption}">
</div>"""


# The first line of a report names what it was made from, so that `tfcaption
# run` can keep a report that is already up to date.
_STAMP = "<!-- tfcaption report inputs "


def _stamp_of(path: str) -> str | None:
    if not io.exists(path):
        return None
    first = io.read_text(path).split("\n", 1)[0].strip()
    return first[len(_STAMP):-len("-->")].strip() if first.startswith(_STAMP) else None


def write_report(config: RunConfig, model_dir: str | None = None, images: int | None = None
                 ) -> str:
    """Captions the first `images` (default config.eval.report_images) images of
    the eval split with the SavedModel at `model_dir` (default: the newest
    export), and writes <eval.report_dir>/index.html; returns its path.

    A report already made from the same SavedModel (its path and its
    tfcaption.json, which holds the checkpoint's digest: a version number
    reused after `make clean` holds another model), the same images and
    references, and the same metrics.json is kept as it is.
    """
    model_dir = model_dir or latest_model_dir(config)
    split = config.eval.split
    count = config.eval.report_images if images is None else images
    path = io.join(config.eval.report_dir, "index.html")
    metrics_file = io.join(config.eval.out_dir, split, "metrics.json")
    n, temperature = config.decode.num_captions, config.decode.temperature
    examples = sources.load_examples(config.data, split)[:count]
    inputs = {"model": io.abspath(model_dir), "split": split, "images": count,
              "model_info": serving.model_info(model_dir),
              "examples": examples_digest(examples), "metrics": None}
    if n > 1:  # only then: reports made before sampling keep their stamp
        inputs["samples"] = [n, temperature]
    if io.exists(metrics_file):
        inputs["metrics"] = hashlib.sha256(io.read_bytes(metrics_file)).hexdigest()
    stamp = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    if _stamp_of(path) == stamp:
        return path
    blobs = [_read(ex.image) for ex in examples]
    names = [ex.image_id for ex in examples]
    model = tf.saved_model.load(model_dir)
    results = serving.caption_bytes(model.signatures["serving_default"], blobs, names)
    # With decode.num_captions > 1, each image's N samples go under its best caption.
    sampled = report_diversity.sample_images(model, blobs, names, n, temperature)
    results = [{**r, "samples": sampled.get(r["image"])} for r in results]
    info = serving.model_info(model_dir)
    search = "greedy" if info["beam_size"] == 1 else f"beam {info['beam_size']}"
    page = f"""{_STAMP}{stamp} -->
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>tfcaption report: {html.escape(config.name)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(config.name)}: Show, Attend and Tell</h1>
<p class="meta">SavedModel {html.escape(model_dir)} ({html.escape(info['backbone'])}
{info['input_size']}&times;{info['input_size']}, {info['grid'][0]}&times;{info['grid'][1]}
attention grid, {search}) &middot; {html.escape(split)} split</p>
<h2>Scores on the {html.escape(split)} split</h2>
{_metrics_html(metrics_file)}
<h2>Examples</h2>
<p class="meta">Each word's attention map is upsampled from the grid to the whole image
(the backbone sees the image squashed to a square, so the grid spans the full frame),
each cell's weight placed at the centre of that cell's receptive field.
All maps of an image share one colour scale.</p>
{"".join(_example_html(ex, r, b, info.get("cell_centres"))
         for ex, r, b in zip(examples, results, blobs))}
</body></html>
"""
    io.write_text(path, page)
    return path
