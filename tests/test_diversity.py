"""Diversity measures on hand-made captions whose answers can be counted by eye."""

import pytest

from tfcaption import diversity as dv

W = dv.words


def test_distinct_n_counts_n_grams_of_that_order_over_the_whole_set():
    captions = [W("a dog runs"), W("a dog sits")]
    # unigrams: a dog runs a dog sits -> {a, dog, runs, sits}: 4 of 6
    assert dv.distinct_n(captions, 1) == pytest.approx(4 / 6)
    # bigrams: (a dog) (dog runs) (a dog) (dog sits) -> 3 distinct of 4; over
    # unigrams this would be 4/6, so a distinct-2 made of words fails here.
    assert dv.distinct_n(captions, 2) == pytest.approx(3 / 4)
    # The set, not each caption: two identical captions are half new.
    assert dv.distinct_n([W("red circle"), W("red circle")], 2) == pytest.approx(1 / 2)
    assert dv.distinct_n([W("one")], 2) == 0.0  # no bigram at all


def test_vocabulary_and_repeated_bigrams():
    captions = [W("a dog and a dog"), W("a cat and a dog"), W("a a")]
    assert dv.vocabulary(captions) == 4  # a dog and cat
    # "a dog" twice in the first; the second has a dog / a cat once each; "a a"
    # has one bigram. A word repeated ("a" in the second) is not a bigram repeated.
    assert dv.repeated_ngrams(captions, 2) == pytest.approx(1 / 3)
    assert dv.repeated_ngrams([W("a a a")], 2) == 1.0  # (a a) at 0 and 1
    assert dv.repeated_ngrams([], 2) == 0.0


def test_novel_needs_the_whole_caption_verbatim():
    training = [W("a red circle"), W("a blue square left of a star")]
    captions = [W("a red circle"), W("a red circle above"), W("a blue square")]
    # Only the first is a training caption; a prefix or an extension is new.
    assert dv.novel(captions, training) == pytest.approx(2 / 3)
    assert dv.novel([W("a red circle")], iter(training)) == 0.0  # any iterable


def test_self_bleu_scores_each_caption_against_the_others_only():
    same = [W("a red circle on the left")] * 3
    assert dv.self_bleu([same]) == pytest.approx(1.0, abs=1e-6)
    # Two captions sharing no word: 0. Scored against itself too, each would
    # match perfectly and the mean would be far above 0.
    apart = [W("a red circle on the left"), W("two blue squares near three stars")]
    assert dv.self_bleu([apart]) == pytest.approx(0.0, abs=1e-6)
    # Groups are separate: an image's captions are not compared with another's.
    assert dv.self_bleu([same[:2], [W("a b c d e"), W("f g h i j")]]) == \
        pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        dv.self_bleu([[W("alone here")]])


def test_self_bleu_between_identical_and_disjoint():
    group = [W("a red circle left of a blue star"), W("a red circle left of a green square")]
    # 4-grams of each: 5, of which "a red circle left", "red circle left of" and
    # "circle left of a" are shared: precisions 6/8, 5/7, 4/6, 3/5 (equal lengths).
    expected = (6 / 8 * 5 / 7 * 4 / 6 * 3 / 5) ** 0.25
    assert dv.self_bleu([group]) == pytest.approx(expected, rel=1e-4)


def test_summary_holds_every_measure():
    out = dv.summary([W("a dog"), W("a big cat")], training=[W("a dog")])
    assert out == {"distinct_1": 4 / 5, "distinct_2": 1.0, "vocabulary": 4,
                   "repeated_bigrams": 0.0, "mean_length": 2.5, "captions": 2, "novel": 0.5}
    assert "novel" not in dv.summary([W("a dog")])
