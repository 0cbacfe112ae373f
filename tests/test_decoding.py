import numpy as np
import tensorflow as tf

from tfcaption import decoding
from tfcaption.data.text import END_ID, PAD_ID, START_ID, UNK_ID
from tests.models.test_decoder import batch, tiny_decoder


def python_greedy(decoder, features, max_len):
    """A reference loop in plain Python over decoder.step."""
    values, keys, state = decoder.encode(features)
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


# A hand-made next-word table: vocabulary <pad> <start> <end> <unk> A B C.
A, B, C = 4, 5, 6
TABLE = np.full((7, 7), 1e-9)
TABLE[START_ID, [A, B]] = [0.6, 0.4]
TABLE[A, [C, END_ID, B]] = [0.34, 0.33, 0.33]
TABLE[B, [END_ID, C]] = [0.9, 0.1]
TABLE[C, END_ID] = 1.0
TABLE[END_ID, END_ID] = 1.0
TABLE[PAD_ID, PAD_ID] = 1.0


def table_step(token, state):
    """State is the previous token; attention is a dummy single location."""
    logits = tf.math.log(tf.gather(tf.constant(TABLE, tf.float32), token))
    return logits, token, tf.ones([tf.shape(token)[0], 1])


def test_beam_finds_the_best_sequence_that_greedy_misses():
    start = tf.fill([2], START_ID)
    g_tokens, g_lengths, g_scores, _ = decoding.greedy_search(table_step, start, 2, 5, 7, 1)
    assert g_tokens.numpy()[0].tolist() == [A, C, END_ID, 0, 0]
    np.testing.assert_allclose(g_scores.numpy(), np.log(0.6 * 0.34), rtol=1e-5)
    beam_start = tf.fill([2 * 3], START_ID)
    tokens, lengths, scores, attention = decoding.beam_search(
        table_step, beam_start, 2, 3, 5, 7, 1)
    assert tokens.numpy().tolist() == [[B, END_ID, 0, 0, 0]] * 2
    assert lengths.numpy().tolist() == [2, 2]
    np.testing.assert_allclose(scores.numpy(), np.log(0.4 * 0.9), rtol=1e-5)
    assert attention.numpy()[:, :2].sum() == 4 and not attention.numpy()[:, 2:].any()


def test_beam_of_one_is_greedy():
    decoder = tiny_decoder()
    features, _ = batch(size=4)
    step, state = decoding.decoder_step(decoder, features)
    found = decoding.beam_search(step, state, 4, 1, 10, decoder.vocab_size, 9)
    expected = decoding.greedy(decoder, features, 10)
    for a, b in zip(found, expected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_beam_never_scores_below_greedy_and_compiles_with_xla():
    for seed in range(3):
        decoder = tiny_decoder()
        features, _ = batch(seed=seed, size=4)
        g = decoding.greedy(decoder, features, 10)
        b = decoding.beam(decoder, features, 3, 10)
        assert (b[2].numpy() >= g[2].numpy() - 1e-5).all()
        for row, n in zip(b[0].numpy(), b[1].numpy()):
            assert (row[n:] == PAD_ID).all() and not set(row[:n]) & {START_ID, UNK_ID}
    xla = tf.function(lambda f: decoding.beam(decoder, f, 3, 10), jit_compile=True)(features)
    np.testing.assert_array_equal(xla[0].numpy(), b[0].numpy())
    assert xla[3].shape == (4, 10, 9)


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


# Every caption ends at its second word: <start> -> A or B (or, for a third beam,
# the unlikely <end>), then A -> <end>, B -> <end>.
ENDS_SOON = np.full((7, 7), 1e-9)
ENDS_SOON[START_ID, [A, B]] = [0.6, 0.4]
ENDS_SOON[[A, B, C], END_ID] = 1.0
ENDS_SOON[[END_ID, PAD_ID], [END_ID, PAD_ID]] = 1.0


def test_loops_exit_as_soon_as_every_caption_and_every_beam_has_ended():
    def step(token, state):
        logits = tf.math.log(tf.gather(tf.constant(ENDS_SOON, tf.float32), token))
        return logits, token, tf.ones([tf.shape(token)[0], 1])

    counted, calls = counting(step)
    greedy = tf.function(lambda: decoding.greedy_search(
        counted, tf.fill([2], START_ID), 2, 20, 7, 1))
    tokens = greedy()[0].numpy()
    assert tokens.tolist() == [[A, END_ID] + [PAD_ID] * 18] * 2
    assert int(calls.numpy()) == 2  # not 20

    counted, calls = counting(step)
    beam = tf.function(lambda: decoding.beam_search(
        counted, tf.fill([2 * 3], START_ID), 2, 3, 20, 7, 1))
    tokens, lengths, _, _ = beam()
    assert lengths.numpy().tolist() == [2, 2] and tokens.shape == (2, 20)
    assert int(calls.numpy()) == 2


# The specials are the likeliest next words everywhere; none may appear in a caption.
SPECIALS_FIRST = np.full((7, 7), 1e-6)
SPECIALS_FIRST[:, [UNK_ID, PAD_ID, START_ID]] = [0.5, 0.2, 0.2]
SPECIALS_FIRST[START_ID, [A, B]] = [0.06, 0.04]
SPECIALS_FIRST[A, [C, END_ID]] = [0.05, 0.04]
SPECIALS_FIRST[B, END_ID] = 0.09
SPECIALS_FIRST[C, END_ID] = 0.09


def test_unk_pad_and_start_are_never_emitted_even_when_likeliest():
    def step(token, state):
        logits = tf.math.log(tf.gather(tf.constant(SPECIALS_FIRST, tf.float32), token))
        return logits, token, tf.ones([tf.shape(token)[0], 1])

    g_tokens, g_lengths, _, _ = decoding.greedy_search(step, tf.fill([1], START_ID), 1, 6, 7, 1)
    assert g_tokens.numpy().tolist() == [[A, C, END_ID, PAD_ID, PAD_ID, PAD_ID]]
    b_tokens, b_lengths, _, _ = decoding.beam_search(step, tf.fill([3], START_ID), 1, 3, 6, 7, 1)
    assert b_tokens.numpy().tolist() == [[B, END_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]]

    # The same with a real decoder whose output layer prefers the specials by far.
    decoder = tiny_decoder()
    bias = decoder.logits_layer.bias
    bias.assign(tf.tensor_scatter_nd_update(tf.zeros_like(bias), [[UNK_ID], [PAD_ID], [START_ID]],
                                            [50.0, 40.0, 30.0]))
    features, _ = batch(size=4)
    for tokens, lengths, _, _ in (decoding.greedy(decoder, features, 8),
                                  decoding.beam(decoder, features, 3, 8)):
        for row, n in zip(tokens.numpy(), lengths.numpy()):
            assert n >= 1 and not set(row[:n]) & {UNK_ID, PAD_ID, START_ID}
            assert (row[n:] == PAD_ID).all()
