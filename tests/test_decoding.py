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
