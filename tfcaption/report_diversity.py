"""The report's diversity parts: the table of metrics.json's "diversity", and each
image's sampled captions from the SavedModel's "sample" signature."""

from __future__ import annotations

import html

from tfcaption import serving

ROWS = (("distinct_1", "distinct-1", "{:.4f}"),
        ("distinct_2", "distinct-2", "{:.4f}"),
        ("vocabulary", "vocabulary used", "{:d}"),
        ("novel", "novel (not a training caption)", "{:.4f}"),
        ("repeated_bigrams", "captions repeating a bigram", "{:.4f}"),
        ("self_bleu_4", "self-BLEU-4 among an image's samples", "{:.4f}"))


def metrics_table(stored: dict) -> str:
    """metrics.json's diversity: one column for the searched captions, one for the
    samples when evaluation drew them."""
    found = stored.get("diversity")
    if not found:
        return ""
    sets = [("captions", "searched")] + (
        [("samples", f"{found['samples']['num_captions']} samples per image, temperature "
          f"{found['samples']['temperature']}")] if "samples" in found else [])
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in sets)
    rows = ""
    for key, label, form in ROWS:
        cells = [found[s].get(key) for s, _ in sets]
        if all(c is None for c in cells):
            continue
        rows += f"<tr><th>{html.escape(label)}</th>" + "".join(
            f"<td class='num'>{'' if c is None else form.format(c)}</td>" for c in cells) + "</tr>"
    return f"<table><tr><th>diversity</th>{head}</tr>{rows}</table>"


def sample_images(model, blobs: list[bytes], names: list[str], num_captions: int,
                  temperature: float) -> dict[str, list[dict]]:
    """image name -> its sampled [{caption, score}], likeliest first; {} when the
    SavedModel predates the "sample" signature or num_captions < 2."""
    if num_captions < 2 or "sample" not in model.signatures:
        return {}
    sampler = serving.sampler_for(model, num_captions, temperature)
    return {r["image"]: sorted(r["samples"], key=lambda s: -s["score"])
            for r in serving.caption_bytes(sampler, blobs, names) if "samples" in r}


def samples_html(samples: list[dict] | None) -> str:
    if not samples:
        return ""
    items = "".join(f"<li>{html.escape(s['caption'])} <span class='meta'>({s['score']:.2f})"
                    "</span></li>" for s in samples)
    return f"<p class='meta'>Sampled captions (log-probability):</p><ol class='samples'>{items}</ol>"
