"""Caption text: normalisation, tokenization (tensorflow-text) and the vocabulary.

Normalisation follows what coco-caption's PTB tokenizer does to references, so
that training targets and evaluation text agree: lower case, Unicode NFKC,
clitics split off ("dog's" -> "dog 's"), punctuation dropped, hyphenated words
kept whole.

The vocabulary is a plain text asset, one token per line, line number = id. The
lookup tables are built from that file with `TextFileInitializer`, so a
SavedModel carries the file as an asset and needs no Python to map ids back to
words. Only training uses tensorflow-text ops; decoding (`detokenize`) uses
core TensorFlow alone, because TF Serving has no tensorflow-text kernels.
"""

from __future__ import annotations

import collections
import uuid

import tensorflow as tf
import tensorflow_text as tf_text

from tfcaption import io
from tfcaption.tokens import (END, END_ID, PAD, PAD_ID, SPECIALS, START,  # noqa: F401
                              START_ID, UNK, UNK_ID)

_CLITICS = r"('s|'re|'ve|'ll|'d|'m|n't)\b"


def normalize(captions: tf.Tensor) -> tf.Tensor:
    """captions: string tensor of any shape -> normalised strings, same shape."""
    text = tf_text.normalize_utf8(captions, "NFKC")
    text = tf.strings.lower(text, encoding="utf-8")
    # Quotes made of apostrophes go; the clitic forms stay as PTB tokens.
    text = tf.strings.regex_replace(text, r"(^|\s)'+", " ")
    text = tf.strings.regex_replace(text, r"'+(\s|$)", " ")
    text = tf.strings.regex_replace(text, r"(\pL|\pN)" + _CLITICS, r"\1 \2")
    # Everything but letters, digits, apostrophes and hyphens is punctuation.
    text = tf.strings.regex_replace(text, r"[^\pL\pN'\-]+", " ")
    # Lone hyphens (" - ", "--") are dropped, as PTB's punctuation list does.
    text = tf.strings.regex_replace(text, r"(^|\s)[-']+(\s|$)", " ")
    text = tf.strings.regex_replace(text, r"(^|\s)[-']+(\s|$)", " ")
    return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


_WHITESPACE = tf_text.WhitespaceTokenizer()


def words(captions: tf.Tensor) -> tf.RaggedTensor:
    """captions: (n,) strings -> (n, None) normalised words."""
    return _WHITESPACE.tokenize(normalize(captions))


def build_vocabulary(captions, min_count: int = 1, max_size: int = 0) -> list[str]:
    """The specials, then words by descending count (ties alphabetical).

    max_size caps the whole vocabulary, specials included (0 = no cap).
    """
    counts: collections.Counter = collections.Counter()
    captions = list(captions)
    for start in range(0, len(captions), 8192):
        batch = words(tf.constant(captions[start : start + 8192]))
        counts.update(w.decode("utf-8") for w in batch.flat_values.numpy())
    kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                  key=lambda w: (-counts[w], w))
    vocab = list(SPECIALS) + kept
    return vocab[:max_size] if max_size else vocab


def save_vocabulary(vocab: list[str], path: str) -> None:
    """Writes one token per line, atomically (a half-written vocabulary would
    silently shift every id)."""
    io.write_text(path, "\n".join(vocab) + "\n")


def load_vocabulary(path: str) -> list[str]:
    with io.open_text(path) as f:
        vocab = [line.rstrip("\n") for line in f if line.strip()]
    if tuple(vocab[:4]) != SPECIALS:
        raise ValueError(f"{path}: a vocabulary must start with {' '.join(SPECIALS)}")
    return vocab


class _VocabularyFile(tf.lookup.TextFileInitializer):
    """A TextFileInitializer whose table has a name of its own.

    A named table is shared with every live table of that name in the
    process. TextFileInitializer names it after str(filename), here the
    Asset, which holds the Asset's memory address: a new Tokenizer whose
    Asset reused a freed one's address, while a dataset or a graph still held
    the old table, looked words up in the old vocabulary (seen in the test
    suite as a loss curve on other words, and as ids beyond vocab_size).
    Anonymous tables would not be shared, but a SavedModel loaded as TF
    Serving loads it (a session) leaves them uninitialised."""

    def __init__(self, *args, **kwargs):
        self._unique_name = f"vocabulary_{uuid.uuid4().hex}"
        super().__init__(*args, **kwargs)

    @property
    def _shared_name(self):
        return self._unique_name


class Tokenizer(tf.Module):
    """Maps captions to token ids and back, from a vocabulary file (an asset).

    tokenize: (n,) strings -> (n, None) int32 ids, <start> w1 .. wk <end>, with
        at most `max_words` words kept.
    detokenize: (n, T) ids -> (n,) strings; stops at the first <end>, skips
        <pad>/<start>. Core TensorFlow only (servable).
    """

    def __init__(self, vocab_path: str, max_words: int = 30, name: str = "tokenizer"):
        super().__init__(name=name)
        self.vocab_path = vocab_path
        self.max_words = max_words
        self.vocab_file = tf.saved_model.Asset(vocab_path)
        self.vocab_size = len(load_vocabulary(vocab_path))
        line = tf.lookup.TextFileIndex
        self._word_to_id = tf.lookup.StaticHashTable(
            _VocabularyFile(self.vocab_file, tf.string, line.WHOLE_LINE,
                            tf.int64, line.LINE_NUMBER),
            default_value=UNK_ID)
        self._id_to_word = tf.lookup.StaticHashTable(
            _VocabularyFile(self.vocab_file, tf.int64, line.LINE_NUMBER,
                            tf.string, line.WHOLE_LINE),
            default_value=UNK)

    def tokenize(self, captions: tf.Tensor) -> tf.RaggedTensor:
        tokens = words(captions)[:, : self.max_words]
        ids = tf.cast(tf.ragged.map_flat_values(self._word_to_id.lookup, tokens), tf.int32)
        n = tf.shape(captions, out_type=tf.int64)[:1]
        start = tf.fill(tf.concat([n, [1]], 0), START_ID)
        end = tf.fill(tf.concat([n, [1]], 0), END_ID)
        return tf.concat([start, ids, end], axis=1)

    def detokenize(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.cast(ids, tf.int64)
        # Everything from the first <end> on is masked out.
        ended = tf.cumsum(tf.cast(tf.equal(ids, END_ID), tf.int32), axis=1) > 0
        keep = ~ended & (ids != PAD_ID) & (ids != START_ID)
        tokens = self._id_to_word.lookup(ids)
        tokens = tf.where(keep, tokens, "")
        text = tf.strings.reduce_join(tokens, axis=1, separator=" ")
        return tf.strings.strip(tf.strings.regex_replace(text, " +", " "))
