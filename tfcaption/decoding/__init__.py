"""Captions from a decoder, searched inside the graph: greedy, beam (with a pool of
finished captions), sampling and diverse beam.

Every search runs on a `step(token, state) -> (logits, state, alpha)` function
(Model Garden's `symbols_to_logits_fn` idea): `decoder_step` makes one from the
decoder, whose per-image attention values and keys are bound once and never
copied inside the loop; tests can pass a hand-made probability table instead.
All of them draw the next word from `masks.next_log_probs`, so the banned
specials and `no_repeat_ngram` hold everywhere.

Loops are tf.while_loop with maximum_iterations over preallocated buffers, so
the searches compile with XLA and export to a SavedModel, and stop early once
every caption has ended.
"""

from __future__ import annotations

import tensorflow as tf

from tfcaption.decoding.beams import beam_search, length_normalised
from tfcaption.decoding.masks import NEVER_EMITTED
from tfcaption.decoding.sampling import greedy_search, sampler
from tfcaption.decoding.settings import decode_settings, sampled_settings

__all__ = ["NEVER_EMITTED", "beam", "beam_search", "decode_settings", "decoder_step",
           "diverse_beam", "greedy", "greedy_search", "length_normalised", "sample",
           "sampled_settings", "sampler"]


def decoder_step(decoder, features, repeat=1, max_len=None):
    """-> (step, initial_state) for `decoder` on features (batch, locations, channels),
    each image repeated `repeat` times in a row (the beams or samples of one image).
    `repeat` may be a scalar tensor (outside XLA). max_len: the most steps the
    search takes, for a decoder whose state holds a buffer per step (the
    transformer's cache of the words so far); None where the caller does not know."""
    values, keys, state = decoder.encode(features, training=False, max_len=max_len)
    if not (isinstance(repeat, int) and repeat == 1):
        # The repeats are made once, before the loop: the step reads them in place.
        values, keys, state = tf.nest.map_structure(
            lambda x: tf.repeat(x, repeat, axis=0), (values, keys, state))

    def step(token, state):
        return decoder.step(token, state, values, keys, training=False)

    return step, state


def greedy(decoder, features, max_len: int, no_repeat_ngram: int = 0):
    """Greedy captions of features (batch, locations, channels) -> tokens (batch,
    max_len), lengths (batch,), scores (batch,), attention (batch, max_len,
    locations); see greedy_search."""
    step, state = decoder_step(decoder, features, max_len=max_len)
    return greedy_search(step, state, tf.shape(features)[0], max_len, decoder.vocab_size,
                         tf.shape(features)[1], no_repeat_ngram=no_repeat_ngram)


def beam(decoder, features, beam_size: int, max_len: int, length_penalty: float = 0.0,
         no_repeat_ngram: int = 0):
    """The best beam-search caption of each of features (batch, locations, channels),
    by length-normalised score -> tokens (batch, max_len), lengths (batch,), scores
    (batch,) its summed log-probability, attention (batch, max_len, locations).
    beam_size 1 is greedy search."""
    if beam_size == 1:
        return greedy(decoder, features, max_len, no_repeat_ngram)
    found = _beams(decoder, features, beam_size, max_len, length_penalty,
                   no_repeat_ngram=no_repeat_ngram)
    return tuple(x[:, 0] for x in found)


def diverse_beam(decoder, features, beam_size: int, groups: int, diversity_penalty: float,
                 max_len: int, length_penalty: float = 0.0, no_repeat_ngram: int = 0):
    """beam_size captions per image from diverse beam search (see beam_search) ->
    tokens (batch, beam_size, max_len), lengths (batch, beam_size), scores (batch,
    beam_size), attention (batch, beam_size, max_len, locations), each image's best
    length-normalised score first."""
    return _beams(decoder, features, beam_size, max_len, length_penalty, groups,
                  diversity_penalty, no_repeat_ngram)


def _beams(decoder, features, beam_size, max_len, length_penalty, groups=1,
           diversity_penalty=0.0, no_repeat_ngram=0):
    step, state = decoder_step(decoder, features, repeat=beam_size, max_len=max_len)
    return beam_search(step, state, tf.shape(features)[0], beam_size, max_len,
                       decoder.vocab_size, tf.shape(features)[1], length_penalty, groups,
                       diversity_penalty, no_repeat_ngram)


def sample(decoder, features, num_captions, max_len: int, temperature, top_k=0, top_p=1.0,
           seed=0, no_repeat_ngram: int = 0):
    """num_captions sampled captions per image of features (batch, locations,
    channels) -> tokens (batch, num_captions, max_len), lengths (batch,
    num_captions), scores (batch, num_captions) summed log-probabilities under the
    model (not the sharpened or cut distribution, so captions drawn at any
    temperature compare), attention (batch, num_captions, max_len, locations).

    temperature <= 0 is greedy; see `sampler` for top_k, top_p and seed (an int or
    an int64 pair). A row's noise depends on its place in the batch.
    """
    batch, locations = tf.shape(features)[0], tf.shape(features)[1]
    step, state = decoder_step(decoder, features, repeat=num_captions, max_len=max_len)
    found = greedy_search(step, state, batch * num_captions, max_len, decoder.vocab_size,
                          locations, sampler(temperature, top_k, top_p, seed), no_repeat_ngram)
    return tuple(tf.reshape(x, tf.concat([[batch, num_captions], tf.shape(x)[1:]], 0))
                 for x in found)
