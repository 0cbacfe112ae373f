"""Sentence-level rewards for self-critical sequence training (SCST), in-graph.

`CiderD` is coco-caption's CIDEr-D (pycocoevalcap's CiderScorer: tf-idf n-gram
vectors for n = 1..4, clipped cosine similarity, Gaussian length penalty with
sigma 6, mean over n and over the references, x10) and `bleu4` is the
per-sentence BLEU-4 of pycocoevalcap's BleuScorer ("closest" reference length).
Both take int32 ids, candidates (B, T) and references (B, R, Tr), and return
(B,) float32.

They are TensorFlow ops rather than a Python scorer called through
py_function so that the reward runs inside the replicated, XLA-compiled train
step: under tf.distribute each replica scores its own samples, and on TPU a
py_function cannot run at all. Hence static shapes, no hash tables: n-grams
are int64 keys, counted by pairwise equality, and their document frequency is
found by binary search in a sorted constant array.

The document frequencies come from the training split's references and are
computed once, on the host (`document_frequencies`, then `save`/`load`): the
idf is part of the reward's definition, so it must not drift with the batch.
coco-caption computes it over the set being scored; over a training batch of
50 images that would be a noisy estimate, and the same caption of the same
image would earn a different reward in every batch.

Token conventions (tfcaption.tokens): words are the ids other than PAD, START
and END (UNK is a word); a caption ends at its first END; a reference row
without words is an absent reference.
"""

from __future__ import annotations

import dataclasses
import io as _io

import numpy as np
import tensorflow as tf

from tfcaption import io
from tfcaption.tokens import END_ID, PAD_ID, START_ID

MAX_N = 4
SIGMA = 6.0
REWARDS = ("cider", "bleu4", "cider+bleu4")
_INT64_MAX = np.iinfo(np.int64).max


def _check_vocab(vocab_size: int, max_n: int) -> None:
    # Keys are a leading 1 then n base-vocab_size digits, so the largest is
    # 2 * vocab_size**max_n - 1.
    if vocab_size < 2 or 2 * vocab_size ** max_n - 1 > _INT64_MAX:
        raise ValueError(f"vocab_size {vocab_size} with n-grams up to {max_n}: n-gram keys "
                         f"would overflow int64 (need 2 * vocab_size**{max_n} <= 2**63)")


def caption_words(ids) -> list[int]:
    """The words of one caption: up to its first END, without PAD and START."""
    words = []
    for t in ids:
        t = int(t)
        if t == END_ID:
            break
        if t not in (PAD_ID, START_ID):
            words.append(t)
    return words


def _ngram_keys_np(words: list[int], n: int, vocab_size: int) -> np.ndarray:
    w = np.asarray(words, np.int64)
    keys = np.ones(max(len(w) - n + 1, 0), np.int64)
    for k in range(n):
        keys = keys * vocab_size + w[k:len(w) - n + 1 + k]
    return keys


@dataclasses.dataclass
class DocumentFrequencies:
    keys: np.ndarray        # sorted int64 n-gram keys
    counts: np.ndarray      # df of each key: images whose references hold it
    num_images: int         # N, CIDEr's ref_len is log(N)
    vocab_size: int
    max_n: int = MAX_N

    def __post_init__(self):
        _check_vocab(self.vocab_size, self.max_n)
        self.keys = np.asarray(self.keys, np.int64)
        self.counts = np.asarray(self.counts, np.float64)
        if self.keys.shape != self.counts.shape or np.any(np.diff(self.keys) <= 0):
            raise ValueError("keys must be strictly increasing and match counts")

    def save(self, path: str) -> None:
        buffer = _io.BytesIO()
        np.savez(buffer, keys=self.keys, counts=self.counts, num_images=self.num_images,
                 vocab_size=self.vocab_size, max_n=self.max_n)
        io.write_bytes(path, buffer.getvalue())  # a temporary name, then renamed

    @classmethod
    def load(cls, path: str) -> "DocumentFrequencies":
        with np.load(_io.BytesIO(io.read_bytes(path))) as z:
            return cls(z["keys"], z["counts"], int(z["num_images"]), int(z["vocab_size"]),
                       int(z["max_n"]))


def document_frequencies(references, vocab_size: int, max_n: int = MAX_N) -> DocumentFrequencies:
    """df(g) = number of images whose references (together) hold n-gram g, as
    coco-caption's CiderScorer.compute_doc_freq counts; `references[i]` is the
    list of id rows of training image i."""
    _check_vocab(vocab_size, max_n)
    per_image = []
    for refs in references:
        words = [caption_words(r) for r in refs]
        if any(w and max(w) >= vocab_size for w in words):
            raise ValueError(f"a reference holds an id >= vocab_size {vocab_size}")
        keys = [_ngram_keys_np(w, n, vocab_size) for w in words for n in range(1, max_n + 1)]
        per_image.append(np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64))
    keys, counts = np.unique(np.concatenate(per_image or [np.zeros(0, np.int64)]),
                             return_counts=True)
    return DocumentFrequencies(keys, counts.astype(np.float64), len(references), vocab_size, max_n)


def references_tensor(references, max_refs: int, max_len: int) -> np.ndarray:
    """One image's reference id lists as (max_refs, max_len) int32, PAD-filled,
    extra references and tokens cut (a row cut before its END keeps its words)."""
    out = np.full((max_refs, max_len), PAD_ID, np.int32)
    for i, ref in enumerate(list(references)[:max_refs]):
        ref = list(ref)[:max_len]
        out[i, :len(ref)] = ref
    return out


# --- in-graph -------------------------------------------------------------

def _words(tokens):
    """Words moved to the front (PAD after them), and their number."""
    tokens = tf.convert_to_tensor(tokens, tf.int32)
    before_end = tf.equal(tf.cumsum(tf.cast(tf.equal(tokens, END_ID), tf.int32), axis=-1), 0)
    is_word = before_end & tf.not_equal(tokens, PAD_ID) & tf.not_equal(tokens, START_ID)
    # A PAD or START between words must not split an n-gram: compact, by a
    # one-hot over target positions (a static-shape scatter).
    target = tf.where(is_word, tf.cumsum(tf.cast(is_word, tf.int32), axis=-1) - 1, -1)
    onehot = tf.equal(target[..., :, None], tf.range(tokens.shape[-1]))
    words = tf.reduce_sum(tf.where(onehot, tokens[..., :, None], 0), axis=-2)
    return tf.cast(words, tf.int64), tf.reduce_sum(tf.cast(is_word, tf.int32), axis=-1)


def _ngrams(tokens, vocab_size: int, max_n: int = MAX_N):
    """Per n: keys (..., T-n+1) int64, valid mask, count of each position's
    n-gram in its own sequence, mask of first occurrences; and word count.
    Ids must be < vocab_size, the base of the keys."""
    words, length = _words(tokens)
    t = words.shape[-1]
    keys, out = tf.ones_like(words), []
    for n in range(1, max_n + 1):
        p = max(t - n + 1, 0)
        keys = keys[..., :p] * vocab_size + words[..., n - 1:n - 1 + p]
        valid = tf.range(p) + n <= length[..., None]
        eq = (tf.equal(keys[..., :, None], keys[..., None, :])
              & valid[..., :, None] & valid[..., None, :])
        count = tf.reduce_sum(tf.cast(eq, tf.float32), axis=-1)
        # Sums over distinct n-grams run over first occurrences.
        earlier = tf.reduce_any(eq & (tf.range(p)[:, None] > tf.range(p)[None, :]), axis=-1)
        out.append((keys, valid, count, valid & ~earlier))
    return out, length


def _count_in_refs(c_keys, c_valid, r_keys, r_valid):
    """(B, R, P): occurrences of each candidate n-gram in each reference."""
    eq = (tf.equal(c_keys[:, None, :, None], r_keys[:, :, None, :])
          & c_valid[:, None, :, None] & r_valid[:, :, None, :])
    return tf.reduce_sum(tf.cast(eq, tf.float32), axis=-1)


class CiderD(tf.Module):
    """CIDEr-D of each candidate against its own references, with the idf of
    a fixed DocumentFrequencies (pycocoevalcap CiderScorer, sigma 6)."""

    def __init__(self, df: DocumentFrequencies, sigma: float = SIGMA, name=None):
        super().__init__(name=name)
        if df.max_n < MAX_N:
            raise ValueError(f"CIDEr-D needs document frequencies up to {MAX_N}-grams")
        self.vocab_size, self.sigma = df.vocab_size, float(sigma)
        self.log_n = float(np.log(float(df.num_images)))
        # Padded to 2**k with keys no query reaches, so the branchless search
        # below needs no bounds checks and always ends on a real slot.
        self._steps = int(np.ceil(np.log2(len(df.keys) + 1)))
        size = 2 ** self._steps
        keys = np.full(size, _INT64_MAX, np.int64)
        keys[:len(df.keys)] = df.keys
        log_df = np.zeros(size, np.float32)
        log_df[:len(df.keys)] = np.log(np.maximum(1.0, df.counts))
        # Constants, not variables: nothing to checkpoint or to place per replica.
        self.keys, self.log_df = tf.constant(keys), tf.constant(log_df)

    def _idf(self, keys):
        pos = tf.zeros(tf.shape(keys), tf.int32)
        for step in (2 ** i for i in reversed(range(self._steps))):
            pos += tf.where(tf.gather(self.keys, pos + step - 1) < keys, step, 0)
        found = tf.equal(tf.gather(self.keys, pos), keys)
        # An n-gram no training image holds has df 0: log(max(1, 0)) = 0.
        return self.log_n - tf.where(found, tf.gather(self.log_df, pos), 0.0)

    def __call__(self, candidates, references):
        cands, c_len = _ngrams(candidates, self.vocab_size)
        refs, r_len = _ngrams(references, self.vocab_size)
        present = tf.cast(r_len > 0, tf.float32)                        # (B, R)
        # The scorer's "length" is its count of bigrams: words - 1, 0 for 0 or 1 word.
        delta = tf.cast(tf.maximum(c_len - 1, 0)[:, None] - tf.maximum(r_len - 1, 0), tf.float32)
        penalty = tf.exp(-tf.square(delta) / (2.0 * self.sigma ** 2))
        total = 0.0
        for (ck, cv, c_count, c_first), (rk, rv, r_count, r_first) in zip(cands, refs):
            c_idf, r_idf = self._idf(ck), self._idf(rk)
            c_vec = c_count * c_idf
            c_norm = tf.sqrt(tf.reduce_sum(tf.where(c_first, tf.square(c_vec), 0.0), -1))
            r_norm = tf.sqrt(tf.reduce_sum(tf.where(r_first, tf.square(r_count * r_idf), 0.0), -1))
            r_vec = _count_in_refs(ck, cv, rk, rv) * c_idf[:, None, :]  # ref's weight of g
            dot = tf.reduce_sum(tf.where(c_first[:, None, :],
                                         tf.minimum(c_vec[:, None, :], r_vec) * r_vec, 0.0), -1)
            both = (c_norm[:, None] != 0) & (r_norm != 0)
            total += tf.where(both, dot / tf.where(both, c_norm[:, None] * r_norm, 1.0), dot)
        per_ref = total / MAX_N * penalty * present
        return 10.0 * tf.reduce_sum(per_ref, -1) / tf.maximum(tf.reduce_sum(present, -1), 1.0)


def bleu4(candidates, references, vocab_size: int = 2 ** 15):
    """Per-sentence BLEU-4 as pycocoevalcap's Bleu(4) reports it (its second
    output), closest reference length and its tiny/small smoothing. vocab_size
    only needs to exceed every id (it is the base of the n-gram keys)."""
    _check_vocab(vocab_size, MAX_N)
    references = tf.convert_to_tensor(references, tf.int32)
    cands, c_len = _ngrams(candidates, vocab_size)
    refs, r_len = _ngrams(references, vocab_size)
    tiny, small = 1e-15, 1e-9
    log_bleu = 0.0
    for n, ((ck, cv, c_count, c_first), (rk, rv, _, _)) in enumerate(zip(cands, refs), 1):
        max_ref = tf.reduce_max(_count_in_refs(ck, cv, rk, rv), axis=1)
        correct = tf.reduce_sum(tf.where(c_first, tf.minimum(c_count, max_ref), 0.0), -1)
        guess = tf.cast(tf.maximum(c_len - n + 1, 0), tf.float32)
        log_bleu += tf.math.log(correct + tiny) - tf.math.log(guess + small)
    # Closest reference length, ties to the shorter; absent references never win.
    base = int(references.shape[-1]) + 1  # above any reference length
    far = tf.where(r_len > 0, tf.abs(r_len - c_len[:, None]) * base + r_len, tf.int32.max)
    ref_len = tf.cast(tf.reduce_min(far, -1) % base, tf.float32)
    ratio = (tf.cast(c_len, tf.float32) + tiny) / (ref_len + small)
    brevity = tf.where(ratio < 1.0, tf.exp(1.0 - 1.0 / ratio), 1.0)
    # An image without references scores 0, as in CiderD (coco-caption refuses it).
    return tf.where(tf.reduce_any(r_len > 0, -1), tf.exp(log_bleu / MAX_N) * brevity, 0.0)


def make_reward(name: str, df: DocumentFrequencies | None = None, weights=(1.0, 1.0)):
    """(candidates, references) -> (B,) reward. "cider+bleu4" is
    weights[0] * CIDEr-D + weights[1] * BLEU-4; with the default equal weights
    CIDEr-D (x10, typically 0-3 per sentence) dominates and BLEU-4 (0-1) nudges."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choices: {', '.join(REWARDS)}")
    if name == "bleu4":
        vocab = df.vocab_size if df is not None else 2 ** 15
        return lambda c, r: bleu4(c, r, vocab)
    if df is None:
        raise ValueError(f"reward {name!r} needs document frequencies")
    cider = CiderD(df)
    if name == "cider":
        return cider
    w_cider, w_bleu = (float(w) for w in weights)
    return lambda c, r: w_cider * cider(c, r) + w_bleu * bleu4(c, r, df.vocab_size)
