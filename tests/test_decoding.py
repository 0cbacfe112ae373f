import itertools

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import decoding
from tfcaption.data.text import END_ID, PAD_ID, START_ID, UNK_ID
from tests.models.test_decoder import batch, tiny_decoder


def python_greedy(decoder, features, max_len):
    """A reference loop in plain Python over decoder.step."""
    values, keys, state = decoder.encode(features, max_len=max_len)
    token = tf.fill([features.shape[0]], START_ID)
    rows = []
    for _ in range(max_len):
        logits, state, _ = decoder.step(token, state, values, keys)
        logits = logits.numpy()
        logits[:, [PAD_ID, START_ID, UNK_ID]] = -np.inf
        token = tf.constant(logits.argmax(-1).astype(np.int32))
        rows.append(token.numpy())
    out = np.stack(rows, 1)
    for row in out:
        ends = np.flatnonzero(row == END_ID)
        if len(ends):
            row[ends[0] + 1:] = PAD_ID
    return out


def test_greedy_in_graph_matches_python_loop_and_is_static():
    decoder = tiny_decoder()
    features, _ = batch(size=4)
    fn = tf.function(lambda f: decoding.greedy(decoder, f, 9))
    tokens, lengths, scores, attention = fn(features)
    np.testing.assert_array_equal(tokens.numpy(), python_greedy(decoder, features, 9))
    assert tokens.shape == (4, 9) and attention.shape == (4, 9, 9)
    assert (scores.numpy() <= 0).all()
    for row, n, att in zip(tokens.numpy(), lengths.numpy(), attention.numpy()):
        assert (row[n:] == PAD_ID).all() and (row[:n] != PAD_ID).all()
        np.testing.assert_allclose(att[:n].sum(-1), 1.0, rtol=1e-5)
        assert not att[n:].any()
        assert not set(row[:n]) & {START_ID, UNK_ID}


def test_greedy_compiles_with_xla_and_exits_early():
    decoder = tiny_decoder()
    features, _ = batch(size=3)
    eager = decoding.greedy(decoder, features, 12)[0]
    xla = tf.function(lambda f: decoding.greedy(decoder, f, 12), jit_compile=True)(features)[0]
    np.testing.assert_array_equal(eager.numpy(), xla.numpy())
    # Bias the output layer towards <end>: the loop must stop after one step.
    bias = decoder.logits_layer.bias
    bias.assign(tf.tensor_scatter_nd_update(tf.zeros_like(bias), [[END_ID]], [100.0]))
    tokens, lengths, _, _ = decoding.greedy(decoder, features, 12)
    assert lengths.numpy().tolist() == [1, 1, 1] and tokens.shape == (3, 12)


# Hand-made next-word tables over <pad> <start> <end> <unk> A .. H: row = the
# previous word, so a caption's probability is a product of table entries.
A, B, C, D, E, F, G, H = range(4, 12)
WORDS = "<pad> <start> <end> <unk> A B C D E F G H".split()


def table(rows, vocab=12):
    """{previous: {next: probability}} -> (vocab, vocab); unlisted words ~impossible."""
    out = np.full((vocab, vocab), 1e-9)
    for previous, nexts in {END_ID: {END_ID: 1.0}, PAD_ID: {PAD_ID: 1.0}, **rows}.items():
        for word, p in nexts.items():
            out[previous, word] = p
    return out


class TableDecoder:
    """The decoder interface decoding uses (encode, step, vocab_size) over a table:
    the state is the previous word, attention one dummy location."""

    def __init__(self, probabilities):
        self.table = tf.constant(np.log(probabilities), tf.float32)
        self.vocab_size = probabilities.shape[0]

    def encode(self, features, training=False, max_len=None):
        return features, features, tf.fill([tf.shape(features)[0]], START_ID)

    def step(self, token, state, values, keys, training=False):
        return tf.gather(self.table, token), token, tf.ones([tf.shape(token)[0], 1])


def words(tokens):
    """One caption's token ids -> "A B <end>"."""
    return " ".join(WORDS[t] for t in np.asarray(tokens).tolist() if t != PAD_ID)


def captions(decoder, search, *args, images=1, **kwargs):
    """The captions `search` finds for each image, as strings."""
    found = search(decoder, tf.zeros([images, 1, 1]), *args, **kwargs)
    return [words(row) for row in np.reshape(found[0], [-1, found[0].shape[-1]])], found


def normalised(tokens, probabilities, alpha):
    """A caption's GNMT score, straight from the table."""
    ids = [t for t in tokens if t != PAD_ID]
    logp = sum(np.log(probabilities[p, w]) for p, w in zip([START_ID] + ids, ids))
    return logp / ((5 + len(ids)) / 6) ** alpha


# A short caption is likelier; a long one wins once length is rewarded. The
# short one finishes first and kept a slot in the old search, whose other slot
# went to A E, so C D (the long one's prefix) was pruned.
SHORT_OR_LONG = table({START_ID: {A: .55, C: .45}, A: {END_ID: .55, E: .45},
                       E: {END_ID: 1.0}, C: {END_ID: .5, D: .5}, D: {F: 1.0}, F: {G: 1.0},
                       G: {END_ID: 1.0}})


def test_length_penalty_changes_the_answer():
    decoder = TableDecoder(SHORT_OR_LONG)
    assert captions(decoder, decoding.beam, 2, 8, 0.0)[0] == ["A <end>"]
    assert captions(decoder, decoding.beam, 2, 8, 1.0)[0] == ["C D F G <end>"]


# Two short captions end at step 2, likelier than any prefix that goes on. The
# old search held both in its two slots and stopped; the long C D F G B <end>
# (once its prefix is past the short ones' raw score) wins with alpha = 1.
TWO_END_EARLY = table({START_ID: {A: .55, C: .45}, A: {END_ID: .6, E: .4}, E: {END_ID: 1.0},
                       C: {END_ID: .55, D: .45}, D: {F: 1.0}, F: {G: 1.0}, G: {B: 1.0},
                       B: {END_ID: 1.0}})


def test_finished_captions_leave_the_live_beam_full():
    decoder = TableDecoder(TWO_END_EARLY)
    found, (tokens, lengths, scores, _) = captions(decoder, decoding.beam, 2, 8, 1.0)
    assert found == ["C D F G B <end>"] and lengths.numpy().tolist() == [6]
    np.testing.assert_allclose(scores.numpy(), [np.log(.45 * .45)], rtol=1e-5)
    # Both pools: the two short ones without a penalty, the long one first with it.
    pools = [decoding.diverse_beam(decoder, tf.zeros([1, 1, 1]), 2, 1, 0.0, 8, alpha)[0][0]
             for alpha in (0.0, 1.0)]
    assert [words(row) for row in pools[0]] == ["A <end>", "C <end>"]
    assert [words(row) for row in pools[1]] == ["C D F G B <end>", "A <end>"]


# Greedy follows C D F G B <end>; C D H G B <end> is likelier and longer, but its
# prefix C D H ranked below the finished A <end> and C D F in the old search.
BEATS_GREEDY = table({START_ID: {C: .55, A: .45}, C: {D: 1.0}, D: {F: .52, H: .48},
                      F: {G: .8, END_ID: .2}, H: {G: 1.0}, G: {B: 1.0}, B: {END_ID: 1.0},
                      A: {END_ID: .7, E: .3}, E: {END_ID: 1.0}})


def test_beam_finds_a_better_caption_than_greedy():
    decoder = TableDecoder(BEATS_GREEDY)
    greedy, _ = captions(decoder, decoding.greedy, 8)
    assert greedy == ["C D F G B <end>"]
    found, (tokens, *_) = captions(decoder, decoding.beam, 2, 8, 1.0)
    assert found == ["C D H G B <end>"]
    assert normalised(tokens[0].numpy(), BEATS_GREEDY, 1.0) > \
        normalised([C, D, F, G, B, END_ID], BEATS_GREEDY, 1.0)


def best_by_enumeration(probabilities, max_len, alpha, vocab=(A, B, C)):
    """The best caption of at most max_len tokens, trying every one."""
    options = (list(seq) + [END_ID] for n in range(max_len)
               for seq in itertools.product(vocab, repeat=n))
    return max(options, key=lambda seq: normalised(seq, probabilities, alpha))


def test_beam_as_wide_as_the_tree_finds_the_best_caption():
    rng = np.random.default_rng(0)
    for trial in range(4):
        probabilities = np.full((7, 7), 1e-9)
        probabilities[:, [END_ID, A, B, C]] = rng.dirichlet(np.ones(4) * 0.5, size=7)
        decoder = TableDecoder(probabilities)
        for alpha in (0.0, 1.5):
            # 27 beams hold every 3-word prefix: nothing is ever pruned.
            tokens = decoding.beam(decoder, tf.zeros([1, 1, 1]), 27, 4, alpha)[0][0].numpy()
            expected = best_by_enumeration(probabilities, 4, alpha)
            assert words(tokens) == words(expected), (trial, alpha)


# With alpha = 1, A B <end> and A <end> fill the pool after step 3. The live
# C D E, scored at its own length (or the next), looks worse than both, but at
# max_len it would not, and C D E F G H <end> beats them: a search that bounds a
# live caption by its present length stops too early and misses it.
LONG_LATE = table({START_ID: {A: .6, C: .4}, A: {END_ID: .52, B: .48}, B: {END_ID: 1.0},
                   C: {D: .5, END_ID: .5}, D: {E: 1.0}, E: {F: 1.0}, F: {G: 1.0},
                   G: {H: 1.0}, H: {END_ID: 1.0}})


def test_search_stops_only_when_no_live_caption_can_win():
    found, _ = captions(TableDecoder(LONG_LATE), decoding.beam, 2, 10, 1.0)
    assert found == ["C D E F G H <end>"]


def test_beam_of_one_follows_greedy_and_keeps_the_best_ending_on_the_way():
    decoder = tiny_decoder()
    features, _ = batch(size=4)
    step, state = decoding.decoder_step(decoder, features)
    tokens, lengths, scores, _ = (x.numpy()[:, 0] for x in decoding.beam_search(
        step, state, 4, 1, 10, decoder.vocab_size, 9))
    g_tokens, g_lengths, g_scores, _ = (x.numpy() for x in decoding.greedy(decoder, features, 10))
    # The live hypothesis is greedy's path; its pool holds the best caption that
    # ended along it (greedy's own, or an earlier <end> greedy passed over).
    assert (scores >= g_scores - 1e-5).all()
    for row, n, g_row in zip(tokens, lengths, g_tokens):
        assert row[:n - 1].tolist() == g_row[:n - 1].tolist()
        assert row[n - 1] == END_ID or n == 10


def test_length_penalty_prefers_longer_captions():
    short = decoding.length_normalised(tf.constant([-2.0]), tf.constant([2]), 1.0)
    long = decoding.length_normalised(tf.constant([-2.2]), tf.constant([8]), 1.0)
    assert float(long[0]) > float(short[0])


def counting(step):
    """`step` that counts its calls in a variable (it runs inside the graph loop)."""
    calls = tf.Variable(0)

    def counted(token, state):
        calls.assign_add(1)
        return step(token, state)

    return counted, calls


def table_step(probabilities):
    """A `step` over a table, for the search loops themselves."""
    decoder = TableDecoder(probabilities)
    return lambda token, state: decoder.step(token, state, None, None)


# Every caption ends at its second word: <start> -> A or B (or, for a third beam,
# the unlikely <end>), then A -> <end>, B -> <end>.
ENDS_SOON = table({START_ID: {A: .6, B: .4}, A: {END_ID: 1.0}, B: {END_ID: 1.0},
                   C: {END_ID: 1.0}}, vocab=7)


def test_loops_exit_as_soon_as_every_caption_and_every_beam_has_ended():
    counted, calls = counting(table_step(ENDS_SOON))
    greedy = tf.function(lambda: decoding.greedy_search(
        counted, tf.fill([2], START_ID), 2, 20, 7, 1))
    tokens = greedy()[0].numpy()
    assert tokens.tolist() == [[A, END_ID] + [PAD_ID] * 18] * 2
    assert int(calls.numpy()) == 2  # not 20

    counted, calls = counting(table_step(ENDS_SOON))
    beam = tf.function(lambda: decoding.beam_search(
        counted, tf.fill([2 * 3], START_ID), 2, 3, 20, 7, 1))
    tokens, lengths, _, _ = beam()
    assert lengths.numpy()[:, 0].tolist() == [2, 2] and tokens.shape == (2, 3, 20)
    assert int(calls.numpy()) == 2


# The specials are the likeliest next words everywhere; none may appear in a caption.
SPECIALS_FIRST = np.full((7, 7), 1e-6)
SPECIALS_FIRST[:, [UNK_ID, PAD_ID, START_ID]] = [0.5, 0.2, 0.2]
SPECIALS_FIRST[START_ID, [A, B]] = [0.06, 0.04]
SPECIALS_FIRST[A, [C, END_ID]] = [0.05, 0.04]
SPECIALS_FIRST[B, END_ID] = 0.09
SPECIALS_FIRST[C, END_ID] = 0.09


def test_unk_pad_and_start_are_never_emitted_even_when_likeliest():
    decoder = TableDecoder(SPECIALS_FIRST)
    assert captions(decoder, decoding.greedy, 6)[0] == ["A C <end>"]
    assert captions(decoder, decoding.beam, 3, 6)[0] == ["B <end>"]
    assert set(captions(decoder, decoding.sample, 20, 6, 1.0)[0]) <= {"A C <end>", "B <end>",
                                                                      "A <end>"}

    # The same with a real decoder whose output layer prefers the specials by far.
    decoder = tiny_decoder()
    bias = decoder.logits_layer.bias
    bias.assign(tf.tensor_scatter_nd_update(tf.zeros_like(bias), [[UNK_ID], [PAD_ID], [START_ID]],
                                            [50.0, 40.0, 30.0]))
    features, _ = batch(size=4)
    for tokens, lengths, _, _ in (decoding.greedy(decoder, features, 8),
                                  decoding.beam(decoder, features, 3, 8),
                                  decoding.sample(decoder, features, 3, 8, 1.0)):
        for row, n in zip(np.reshape(tokens, [-1, 8]), np.reshape(lengths, [-1])):
            assert n >= 1 and not set(row[:n]) & {UNK_ID, PAD_ID, START_ID}
            assert (row[n:] == PAD_ID).all()


def repeats(tokens, n):
    """Whether a caption (token ids) holds some n-gram twice."""
    ids = [t for t in np.asarray(tokens).tolist() if t != PAD_ID]
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


def test_repeated_ngram_mask():
    row = tf.constant([[A, B, A, B, 0, 0]])
    banned = lambda t, n: set(  # noqa: E731
        np.flatnonzero(decoding.masks.repeated_ngrams(row, t, n, 12)[0].numpy()).tolist())
    assert banned(3, 2) == {B} and banned(3, 1) == {A, B} and banned(1, 2) == set()
    assert banned(3, 3) == set() and banned(4, 3) == {A} and banned(2, 3) == set()
    assert banned(4, 5) == set()


# Every word's likeliest successor alternates A B A B ... and never ends.
REPEATS = table({START_ID: {A: .9, B: .1}, A: {B: .9, END_ID: .1}, B: {A: .9, END_ID: .1}})


def test_no_repeat_ngram_in_greedy_beam_and_sampling():
    decoder = TableDecoder(REPEATS)
    assert captions(decoder, decoding.greedy, 8)[0] == ["A B A B A B A B"]
    assert captions(decoder, decoding.greedy, 8, no_repeat_ngram=1)[0] == ["A B <end>"]
    assert captions(decoder, decoding.greedy, 8, no_repeat_ngram=2)[0] == ["A B A <end>"]
    assert captions(decoder, decoding.greedy, 8, no_repeat_ngram=3)[0] == ["A B A B <end>"]
    assert captions(decoder, decoding.beam, 2, 8)[0] == ["A B A B A B A B"]
    # The mask does not renormalise: A B A <end> keeps its 0.1 and A <end> wins.
    found, (_, _, scores, _) = captions(decoder, decoding.beam, 2, 8, no_repeat_ngram=2)
    assert found == ["A <end>"]
    np.testing.assert_allclose(scores.numpy(), [np.log(.09)], rtol=1e-5)
    drawn = captions(decoder, decoding.sample, 40, 8, 1.0)[0]
    assert any(repeats(c.split(), 2) for c in drawn)
    for n in (1, 2, 3):
        for search, args in ((decoding.sample, (40, 8, 1.0)),
                             (decoding.diverse_beam, (4, 2, 1.0, 8))):
            drawn = captions(decoder, search, *args, no_repeat_ngram=n)[0]
            assert not any(repeats(c.split(), n) for c in drawn), (search, n, drawn)

    decoder, (features, _) = tiny_decoder(), batch(size=3)
    for tokens in (decoding.greedy(decoder, features, 12, no_repeat_ngram=2)[0],
                   decoding.beam(decoder, features, 3, 12, no_repeat_ngram=2)[0],
                   decoding.sample(decoder, features, 4, 12, 1.5, no_repeat_ngram=2)[0]):
        assert not any(repeats(row, 2) for row in np.reshape(tokens, [-1, 12]))


# The first word is A, B or C (0.5, 0.3, 0.2); the caption ends after it.
FIRSTS = table({START_ID: {A: .5, B: .3, C: .2}, A: {END_ID: 1.0}, B: {END_ID: 1.0},
                C: {END_ID: 1.0}})


def first_words(*args, **kwargs):
    """How often A, B and C come first among sampled captions of FIRSTS."""
    tokens = decoding.sample(TableDecoder(FIRSTS), tf.zeros([1, 1, 1]), *args, **kwargs)[0]
    firsts = tokens.numpy()[0, :, 0]
    return np.array([np.mean(firsts == w) for w in (A, B, C)])


def test_sampling_draws_from_the_model_at_its_temperature():
    np.testing.assert_allclose(first_words(3000, 4, 1.0), [.5, .3, .2], atol=0.03)
    sharpened = np.array([.5, .3, .2]) ** 2
    np.testing.assert_allclose(first_words(3000, 4, 0.5, seed=1), sharpened / sharpened.sum(),
                               atol=0.03)
    tokens, lengths, scores, attention = decoding.sample(
        TableDecoder(FIRSTS), tf.zeros([2, 1, 1]), 5, 4, 1.0)
    assert tokens.shape == (2, 5, 4) and attention.shape == (2, 5, 4, 1)
    assert lengths.numpy().tolist() == [[2] * 5] * 2
    # Scores are the model's log-probabilities, whatever the temperature.
    np.testing.assert_allclose(scores.numpy(), np.log(FIRSTS[START_ID, tokens.numpy()[..., 0]]),
                               rtol=1e-5)


def test_top_k_and_top_p_cut_the_support():
    assert (first_words(300, 4, 1.0) > 0).all()
    assert first_words(300, 4, 5.0, top_k=1).tolist() == [1, 0, 0]
    assert first_words(300, 4, 5.0, top_p=0.01).tolist() == [1, 0, 0]
    assert first_words(300, 4, 1.0, top_p=0.45).tolist() == [1, 0, 0]
    for kept in (first_words(300, 4, 1.0, top_k=2), first_words(300, 4, 1.0, top_p=0.7)):
        assert (kept[:2] > 0.2).all() and kept[2] == 0


def graph_ops(concrete) -> set:
    """Every op type of a concrete function, its loops' bodies included."""
    graph = concrete.graph.as_graph_def()
    return ({n.op for n in graph.node}
            | {n.op for f in graph.library.function for n in f.node_def})


def test_an_uncut_draw_sorts_nothing_and_a_requested_cut_decides_at_run_time():
    """top_k=0, top_p=1 draw without sorting the vocabulary (SCST samples this
    way at every step); the same draw as a cut that keeps every word. Cuts given
    as tensors (a request's) are decided when the graph runs."""
    decoder, (features, _) = tiny_decoder(), batch(size=3)

    def draw(top_k, top_p):
        return decoding.sample(decoder, features, 5, 10, 1.0, top_k=top_k, top_p=top_p,
                               seed=4)[0]

    uncut = tf.function(lambda: draw(0, 1.0)).get_concrete_function()
    assert not graph_ops(uncut) & {"Sort", "TopKV2"}
    assert "TopKV2" in graph_ops(tf.function(lambda: draw(3, 1.0)).get_concrete_function())
    np.testing.assert_array_equal(draw(0, 1.0), draw(decoder.vocab_size, 1.0))
    as_tensors = tf.function(lambda k, p: draw(k, p))
    for k, p in ((0, 1.0), (2, 1.0), (0, 0.6)):
        np.testing.assert_array_equal(as_tensors(tf.constant(k), tf.constant(p)), draw(k, p))
    assert (draw(2, 1.0).numpy() != draw(0, 1.0).numpy()).any()


def test_near_zero_temperature_is_greedy():
    decoder = TableDecoder(BEATS_GREEDY)
    for temperature in (0.0, 1e-3, 1e-6):
        assert captions(decoder, decoding.sample, 20, 8, temperature)[0] == \
            ["C D F G B <end>"] * 20
    # A random decoder's words can tie within float32's resolution (one did, on
    # another CPU, at temperature 1e-6), so it is held to greedy only at 0, the
    # argmax path; the table above, whose margins are wide, covers 1e-6.
    decoder, (features, _) = tiny_decoder(), batch(size=3)
    greedy = decoding.greedy(decoder, features, 10)
    found = decoding.sample(decoder, features, 4, 10, 0.0)
    for g, s in zip(greedy, found):
        np.testing.assert_allclose(np.repeat(g.numpy()[:, None], 4, 1), s.numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_sampling_is_reproducible_from_its_seed():
    decoder, (features, _) = tiny_decoder(), batch(size=2)
    draw = lambda seed: decoding.sample(decoder, features, 6, 10, 2.0, seed=seed)[0]  # noqa: E731
    np.testing.assert_array_equal(draw(7), draw(7))
    np.testing.assert_array_equal(draw(7), tf.function(draw)(tf.constant(7)))
    assert (draw(7).numpy() != draw(8).numpy()).any()


def test_diverse_groups_start_from_different_words():
    decoder = TableDecoder(FIRSTS)
    same = captions(decoder, decoding.diverse_beam, 2, 2, 0.0, 4)[0]
    assert same == ["A <end>", "A <end>"]
    found, (_, _, scores, _) = captions(decoder, decoding.diverse_beam, 2, 2, 1.0, 4)
    assert found == ["A <end>", "B <end>"]
    np.testing.assert_allclose(scores.numpy(), [np.log([.5, .3])], rtol=1e-5)
    found = captions(decoder, decoding.diverse_beam, 3, 3, 1.0, 4)[0]
    assert found == ["A <end>", "B <end>", "C <end>"]
    with pytest.raises(ValueError):
        decoding.diverse_beam(decoder, tf.zeros([1, 1, 1]), 3, 2, 1.0, 4)


def test_searches_compile_with_xla_on_a_real_decoder():
    decoder, (features, _) = tiny_decoder(), batch(size=3)

    def searches(f, top_k):
        # diverse_beam runs the same beam_search as beam, with groups: not compiled
        # again here, for time.
        return (decoding.beam(decoder, f, 3, 10, 0.7, no_repeat_ngram=2),
                decoding.sample(decoder, f, 4, 10, 1.0, top_k=top_k, top_p=0.9, seed=3))

    xla = tf.function(searches, jit_compile=True)
    compiled = xla(features, tf.constant(0))
    for x, y in zip(searches(features, 0)[0], compiled[0]):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-4, atol=1e-5)
    # XLA draws its own noise: check what a sample must be, not which it is.
    tokens, lengths, scores, attention = (x.numpy() for x in compiled[1])
    assert tokens.shape == (3, 4, 10) and attention.shape == (3, 4, 10, 9)
    for row, n, att in zip(tokens.reshape(-1, 10), lengths.reshape(-1),
                           attention.reshape(-1, 10, 9)):
        assert (row[n:] == PAD_ID).all() and not set(row[:n]) & {PAD_ID, START_ID, UNK_ID}
        np.testing.assert_allclose(att[:n].sum(-1), 1.0, rtol=1e-5)
    assert (scores < 0).all()
    greedy = decoding.greedy(decoder, features, 10)[0].numpy()
    argmax = xla(features, tf.constant(1))[1][0].numpy()  # the same compiled graph
    np.testing.assert_array_equal(argmax, np.repeat(greedy[:, None], 4, 1))


def test_decode_config_is_overridable_from_the_command_line():
    from tfcaption.config import RunConfig, override

    config = RunConfig()
    assert config.decode.no_repeat_ngram == 3 and config.decode.top_p == 1.0
    for assignment in ("decode.no_repeat_ngram=0", "decode.temperature=0.7", "decode.top_k=5"):
        override(config, assignment)
    assert (config.decode.no_repeat_ngram, config.decode.temperature, config.decode.top_k) == \
        (0, 0.7, 5)


def test_decode_settings_name_what_an_export_fixes_and_nothing_per_request():
    import dataclasses

    from tfcaption.config import RunConfig
    base = decoding.decode_settings(RunConfig())
    for field, value in (("no_repeat_ngram", 2), ("top_k", 5), ("top_p", 0.9), ("seed", 7)):
        changed = RunConfig()
        setattr(changed.decode, field, value)
        assert decoding.decode_settings(changed) != base, field
    # Temperature and the number of captions come with each request of the
    # "sample" signature: changing them must not force a new export.
    per_request = RunConfig()
    per_request.decode = dataclasses.replace(per_request.decode, temperature=0.3,
                                             num_captions=5)
    assert decoding.decode_settings(per_request) == base
    assert decoding.sampled_settings(per_request) == {**base, "temperature": 0.3,
                                                      "num_captions": 5}
