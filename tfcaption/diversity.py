"""How varied the captions are, apart from how right they are.

Pure functions on captions given as word lists (already normalised the way the
scores see them; see `words`), so each one can be checked by hand:

    distinct_n        Li et al. (2016): distinct n-grams / all n-grams, over the set
    vocabulary        distinct words used
    mean_length       words per caption (SCST is known to shorten or lengthen them)
    repeated_ngrams   share of captions that hold some n-gram twice ("a dog a dog")
    novel             share of captions not found verbatim among training captions
    self_bleu         Shetty et al. (2017) "mBLEU": each of an image's N captions
                      scored against the other N - 1, averaged; 1 = all alike

A captioner that copies training sentences scores low on novel; one whose
sampled captions all say the same thing scores high on self-BLEU.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Iterable, Sequence

Caption = Sequence[str]


def words(caption: str) -> list[str]:
    """A normalised caption's words (tfcaption's normalisation leaves single spaces)."""
    return caption.split()


def ngrams(caption: Caption, n: int) -> list[tuple[str, ...]]:
    return [tuple(caption[i:i + n]) for i in range(len(caption) - n + 1)]


def distinct_n(captions: Iterable[Caption], n: int) -> float:
    """Distinct n-grams over all n-grams of all captions; 0.0 when there are none."""
    seen, total = set(), 0
    for caption in captions:
        grams = ngrams(caption, n)
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def vocabulary(captions: Iterable[Caption]) -> int:
    return len({word for caption in captions for word in caption})


def repeated_ngrams(captions: Sequence[Caption], n: int = 2) -> float:
    """Share of captions in which some n-gram occurs more than once."""
    if not captions:
        return 0.0
    repeats = sum(any(c > 1 for c in Counter(ngrams(caption, n)).values())
                  for caption in captions)
    return repeats / len(captions)


def novel(captions: Sequence[Caption], training: Iterable[Caption]) -> float:
    """Share of captions that are not, word for word, a training caption."""
    if not captions:
        return 0.0
    known = {tuple(caption) for caption in training}
    return sum(tuple(caption) not in known for caption in captions) / len(captions)


def self_bleu(groups: Sequence[Sequence[Caption]], n: int = 4) -> float:
    """Mean sentence BLEU-n of each caption against the other captions of its group
    (an image's samples), never itself: a caption always matches itself, so
    including it would put every group near 1. pycocoevalcap's BLEU (closest
    reference length, its tiny smoothing), as the other scores use.
    Groups need at least two captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    candidates, references = {}, {}
    for g, group in enumerate(groups):
        if len(group) < 2:
            raise ValueError(f"self-BLEU needs at least 2 captions per group; group {g} "
                             f"has {len(group)}")
        for i, caption in enumerate(group):
            key = f"{g}/{i}"
            candidates[key] = [" ".join(caption)]
            references[key] = [" ".join(c) for j, c in enumerate(group) if j != i]
    if not candidates:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its n-gram counts
        _, per_sentence = Bleu(n).compute_score(references, candidates, verbose=0)
    scores = per_sentence[n - 1]
    return float(sum(scores) / len(scores))


def summary(captions: Sequence[Caption], training: Iterable[Caption] | None = None) -> dict:
    """The set measures of one set of captions, as metrics.json stores them."""
    out = {"distinct_1": distinct_n(captions, 1), "distinct_2": distinct_n(captions, 2),
           "vocabulary": vocabulary(captions),
           "repeated_bigrams": repeated_ngrams(captions, 2),
           "mean_length": sum(map(len, captions)) / max(len(captions), 1),
           "captions": len(captions)}
    if training is not None:
        out["novel"] = novel(captions, training)
    return out
