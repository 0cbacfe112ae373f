"""metrics.score gives pycocoevalcap's own numbers, on the same PTB-tokenized text."""

import contextlib
import io
import warnings

import pytest

from tfcaption import metrics

needs_java = pytest.mark.skipif(not metrics.java_available(), reason="java not installed")

REFERENCES = {
    "1": ["A man is riding a red bicycle down the street.",
          "a person rides a bike on a city road",
          "A cyclist in a helmet pedals along the road."],
    "2": ["Two dogs are playing with a ball in the grass.",
          "two brown dogs chase a ball on a lawn",
          "Dogs running after a tennis ball in a park."],
    "3": ["A plate of food with broccoli and rice.",
          "a white plate holds rice, broccoli and chicken",
          "Dinner: chicken with rice and green vegetables."],
}
CANDIDATES = {
    "1": "a man riding a bike down the road",
    "2": "two dogs playing with a ball",
    "3": "a plate of rice and broccoli on a table",
}


@pytest.fixture
def one_meteor(monkeypatch):
    """One METEOR process for the whole test: its Java start (loading paraphrase
    tables) takes 10-20 s on a busy two-core machine. METEOR's -stdio
    mode keeps no state between EVAL requests, so sharing it changes no number."""
    import pycocoevalcap.meteor.meteor as meteor_module
    shared = meteor_module.Meteor()
    monkeypatch.setattr(meteor_module, "Meteor", lambda: shared)
    return shared


def direct(candidates, references):
    """coco-caption's evaluation, as its own eval.py runs it."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    with contextlib.redirect_stdout(io.StringIO()):
        gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
        res = tokenizer.tokenize({k: [{"caption": c}] for k, c in candidates.items()})
        bleu, _ = Bleu(4).compute_score(gts, res)
        out = {f"BLEU-{n + 1}": b for n, b in enumerate(bleu)}
        out["METEOR"], _ = Meteor().compute_score(gts, res)
        out["ROUGE_L"], _ = Rouge().compute_score(gts, res)
        out["CIDEr-D"], _ = Cider().compute_score(gts, res)
    return out


@needs_java
def test_scores_equal_pycocoevalcap_called_directly(one_meteor):
    ours = metrics.score(CANDIDATES, REFERENCES)
    theirs = direct(CANDIDATES, REFERENCES)
    assert set(ours) == set(theirs) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR",
                                        "ROUGE_L", "CIDEr-D"}
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=1e-9), name
    assert 0.0 < ours["BLEU-4"] < 1.0 and ours["CIDEr-D"] > 0.0  # a case that tells apart


@needs_java
def test_a_candidate_equal_to_a_reference_scores_bleu_4_of_one():
    # Long enough for 4-grams, and the closest reference length is its own: no brevity penalty.
    perfect = {k: refs[1] for k, refs in REFERENCES.items()}
    scores = metrics.score(perfect, REFERENCES, metrics=("BLEU", "ROUGE_L"))
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE_L"] == pytest.approx(1.0, abs=1e-6)


@needs_java
def test_a_candidate_with_no_word_in_common_scores_about_zero():
    unrelated = {k: "seven purple umbrellas fly over mountains" for k in REFERENCES}
    scores = metrics.score(unrelated, REFERENCES, metrics=("BLEU", "ROUGE_L", "CIDEr-D"))
    for name, value in scores.items():
        assert value == pytest.approx(0.0, abs=1e-6), name


def test_without_java_warns_naming_meteor_and_ptb_and_scores_the_rest(monkeypatch):
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = metrics.score(CANDIDATES, REFERENCES)
    messages = " ".join(str(w.message) for w in caught)
    assert "METEOR" in messages and "PTB" in messages
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE_L", "CIDEr-D"}
    assert all(0.0 <= v for v in scores.values()) and scores["BLEU-1"] > 0.3


def test_candidates_without_references_are_refused():
    with pytest.raises(ValueError, match="no references"):
        metrics.score({"9": "a cat"}, REFERENCES, metrics=("BLEU",), tokenize="simple")
