import pytest
import tensorflow as tf

from tfcaption.data import text

CAPTIONS = [
    "A child in a pink dress is climbing up a set of stairs in an entry way .",
    'The dog\'s ball -- "it\'s" a T-shirt, (red)!',
    "  Ｆｕｌｌwidth 'quoted' dogs' bowls  ",
    "Two dogs don't play.",
]


def test_normalisation_matches_ptb_conventions():
    got = [s.decode() for s in text.normalize(tf.constant(CAPTIONS)).numpy()]
    assert got == [
        "a child in a pink dress is climbing up a set of stairs in an entry way",
        "the dog 's ball it 's a t-shirt red",
        "fullwidth quoted dogs bowls",
        "two dogs do n't play",
    ]


def test_vocabulary_order_caps_and_min_count():
    vocab = text.build_vocabulary(CAPTIONS)
    assert tuple(vocab[:4]) == text.SPECIALS
    assert vocab[4] == "a"  # the most frequent word comes first
    assert "a" not in text.build_vocabulary(CAPTIONS, max_size=4)
    rare = text.build_vocabulary(CAPTIONS, min_count=2)
    assert set(rare[4:]) == {"a", "'s", "in", "dogs"}


@pytest.fixture
def tokenizer(tmp_path):
    path = str(tmp_path / "vocab.txt")
    text.save_vocabulary(text.build_vocabulary(CAPTIONS, min_count=2), path)
    return text.Tokenizer(path, max_words=5)


def test_tokenize_adds_markers_truncates_and_maps_unknowns(tokenizer):
    ids = tokenizer.tokenize(tf.constant(CAPTIONS)).to_list()
    assert all(row[0] == text.START_ID and row[-1] == text.END_ID for row in ids)
    assert max(len(row) for row in ids) == 5 + 2
    assert text.UNK_ID in ids[0]  # "child" is below min_count
    assert tokenizer.vocab_size == 8


def test_detokenize_stops_at_end_and_skips_padding(tokenizer):
    vocab = text.load_vocabulary(tokenizer.vocab_path)
    a, s = vocab.index("a"), vocab.index("'s")
    ids = tf.constant([[text.START_ID, a, s, text.END_ID, a, a], [a, text.PAD_ID, a, 0, 0, 0]])
    assert tokenizer.detokenize(ids).numpy().tolist() == [b"a 's", b"a a"]


def test_same_results_eagerly_and_inside_dataset_map(tokenizer):
    eager = tokenizer.tokenize(tf.constant(CAPTIONS)).to_list()
    ds = tf.data.Dataset.from_tensor_slices(CAPTIONS).batch(2).map(tokenizer.tokenize)
    mapped = [row for batch in ds for row in batch.to_list()]
    assert mapped == eager
    ds_norm = tf.data.Dataset.from_tensor_slices(CAPTIONS).map(text.normalize)
    assert [s.numpy() for s in ds_norm] == list(text.normalize(tf.constant(CAPTIONS)).numpy())


def test_vocabulary_file_must_start_with_specials(tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(ValueError, match="must start with"):
        text.load_vocabulary(str(bad))


def test_each_tokenizer_keeps_its_own_vocabulary_table(tmp_path, monkeypatch):
    """A table named after str(the vocabulary Asset), i.e. its memory address,
    was shared with any live table of that name: a new Tokenizer whose Asset
    reused a freed one's address got the old vocabulary (seen in the suite,
    allocation-dependent). Every Asset printing alike stands in for that
    collision, deterministically; each tokenizer must still map with its own
    file, while the older ones live."""
    monkeypatch.setattr(tf.saved_model.Asset, "__repr__", lambda self: "<one address>")
    held = []
    for i in range(3):
        path = tmp_path / f"vocab{i}.txt"
        path.write_text("\n".join(list(text.SPECIALS) + [f"x{j}" for j in range(i)] + ["w"])
                        + "\n")
        held.append(text.Tokenizer(str(path)))
        ids = held[-1].tokenize(tf.constant(["w x0"])).to_list()[0]
        assert ids[1] == len(text.SPECIALS) + i, f"tokenizer {i}: another vocabulary's ids"
        assert held[-1].detokenize(tf.constant([ids])).numpy()[0].decode() == (
            "w x0" if i else "w <unk>")
