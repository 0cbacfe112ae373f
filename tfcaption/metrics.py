"""coco-caption metrics through pycocoevalcap, the implementation published tables use.

Candidates and references get the same normalisation: coco-caption's PTB
tokenizer (Java) for reported scores, or tfcaption's own PTB-like normalisation
(`tokenize="simple"`, no Java, no subprocess) for the quick validation that
runs every epoch during training.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings

import tensorflow as tf

from tfcaption.data import text

ALL_METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr-D")
JAVA_METRICS = ("METEOR",)


def java_available() -> bool:
    return shutil.which("java") is not None


def _normalised(captions: dict[str, list[str]], tokenize: str) -> dict[str, list[str]]:
    if tokenize == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return PTBTokenizer().tokenize(
                {k: [{"caption": c} for c in v] for k, v in captions.items()})
    keys = list(captions)
    flat = [c for k in keys for c in captions[k]]
    normed = [s.decode("utf-8") for s in text.normalize(tf.constant(flat)).numpy()] if flat else []
    out, i = {}, 0
    for k in keys:
        out[k] = normed[i:i + len(captions[k])]
        i += len(captions[k])
    return out


def _scorers(metrics):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    made = {"BLEU": Bleu(4), "ROUGE_L": Rouge(), "CIDEr-D": Cider()}
    if "METEOR" in metrics:
        made["METEOR"] = Meteor()
    return [(name, made[name]) for name in metrics]


def score(candidates: dict[str, str], references: dict[str, list[str]],
          metrics=ALL_METRICS, tokenize: str = "ptb", announce=None) -> dict[str, float]:
    """candidates: image_id -> generated caption; references: image_id -> captions.

    Returns {"BLEU-1".."BLEU-4", "METEOR", "ROUGE_L", "CIDEr-D"} (those asked for),
    corpus-level, as coco-caption computes them. Without Java, METEOR and the PTB
    tokenizer are skipped with a warning naming them, and the rest still runs.
    announce(name), if given, is called as each scorer starts (METEOR is slow).
    """
    missing = sorted(set(candidates) - set(references))
    if missing:
        raise ValueError(f"{len(missing)} candidates have no references, e.g. {missing[:3]}")
    if not candidates:
        raise ValueError("no candidates to score")
    metrics = tuple(metrics)
    if not java_available():
        skipped = [m for m in metrics if m in JAVA_METRICS]
        if tokenize == "ptb":
            skipped.append("PTB tokenizer (using tfcaption's normalisation instead)")
            tokenize = "simple"
        if skipped:
            warnings.warn(f"java not found: skipped {', '.join(skipped)}")
        metrics = tuple(m for m in metrics if m not in JAVA_METRICS)
    ids = sorted(candidates)
    refs = _normalised({i: references[i] for i in ids}, tokenize)
    cands = _normalised({i: [candidates[i]] for i in ids}, tokenize)
    results: dict[str, float] = {}
    for name, scorer in _scorers(metrics):
        if announce:
            announce(name)
        with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its n-gram counts
            value, _ = scorer.compute_score(refs, cands)
        if name == "BLEU":
            results.update({f"BLEU-{n + 1}": float(v) for n, v in enumerate(value)})
        else:
            results[name] = float(value)
    return results
