"""Which decode.* settings an artifact depends on, so a stage can tell whether
what it made earlier still holds.

An export fixes some sampling settings in its graph (top-k, top-p, the seed and
the n-gram ban); temperature and the number of captions arrive with each request
and so are not part of it. Diverse beam search is not exported.
"""

from __future__ import annotations

# DecodeConfig fields an exported graph holds as constants.
EXPORTED = ("no_repeat_ngram", "top_k", "top_p", "seed")
# ... and those sampled evaluation adds: it fixes them per run, not per request.
SAMPLED = EXPORTED + ("num_captions", "temperature")


def decode_settings(config) -> dict:
    """config (a RunConfig) -> {field: value} of the decode settings an export
    holds; the export records it in tfcaption.json as "decode_settings", so a
    runner re-exports when any of them changed."""
    return {name: getattr(config.decode, name) for name in EXPORTED}


def sampled_settings(config) -> dict:
    """The decode settings that sampled captions in evaluation depend on."""
    return {name: getattr(config.decode, name) for name in SAMPLED}
