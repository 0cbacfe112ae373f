"""In-graph SCST rewards against pycocoevalcap, the scorer published numbers use."""

import random

import numpy as np
import pytest
import tensorflow as tf
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_refs, cook_test

from tfcaption import io, rewards
from tfcaption.tokens import END_ID, PAD_ID, START_ID


def words_of(row):
    """The test's own reading of the token conventions, for pycocoevalcap."""
    out = []
    for t in row:
        if t == END_ID:
            break
        if t not in (PAD_ID, START_ID):
            out.append(str(t))
    return " ".join(out)


def present(ref_rows):
    return [words_of(r) for r in ref_rows if words_of(r)]


def coco_cider(df_refs, cands, cand_refs):
    """pycocoevalcap's CIDEr-D of `cands`, with the df of the images `df_refs`."""
    train = CiderScorer(n=4, sigma=6.0)
    train.crefs = [cook_refs(present(refs)) for refs in df_refs]
    train.compute_doc_freq()
    scorer = CiderScorer(n=4, sigma=6.0)
    scorer.crefs = [cook_refs(present(refs)) for refs in cand_refs]
    scorer.ctest = [cook_test(words_of(c)) for c in cands]
    scorer.document_frequency = train.document_frequency
    # compute_cider sets ref_len = log(len(crefs)) and scores zip(ctest, crefs):
    # entries past the candidates make that log(N) of the df images, unscored.
    assert len(cands) <= len(df_refs)
    scorer.crefs += [[]] * (len(df_refs) - len(cands))
    return np.array(scorer.compute_cider())


def coco_bleu4(cands, cand_refs):
    gts = {i: present(refs) for i, refs in enumerate(cand_refs)}
    res = {i: [words_of(c)] for i, c in enumerate(cands)}
    return np.array(Bleu(4).compute_score(gts, res, verbose=0)[1][3])


def pad(rows, width):
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r[:width]
    return out


def random_data():
    """Captions over 6 words (repeated n-grams everywhere), 1-5 references per
    image, and candidates of 0, 1, 2 and many words, with and without START
    and END, with PAD or START between words and words after END."""
    rng = random.Random(0)

    def caption(lo, hi):
        return [rng.randint(4, 9) for _ in range(rng.randint(lo, hi))]

    images = [[[START_ID] + caption(1, 11) + [END_ID] + ([7, 7] if rng.random() < 0.2 else [])
               for _ in range(rng.randint(1, 5))] for _ in range(80)]
    cands = []
    for i in range(60):
        kind = i % 6
        own = rng.choice(images[20 + i])[1:]
        own = own[:own.index(END_ID)]
        if kind == 0:      # a reference of its own image, as the model may sample it
            words = own
        elif kind == 4:    # one of them with a word changed, cut or lengthened
            words = own[:rng.randint(1, len(own))] + caption(0, 4)
            words[rng.randrange(len(words))] = rng.randint(4, 9)
        else:
            words = caption(*[(0, 0), (1, 1), (2, 2), None, (3, 14)][kind - 1])
        row = ([START_ID] if i % 2 else []) + words
        if kind == 5 and len(row) > 3:
            row.insert(2, rng.choice([PAD_ID, START_ID]))
        if i % 3:          # else no END: all its words count
            row = row + [END_ID] + caption(0, 3)
        cands.append(row)
    # The df images are 0..59, the candidates belong to 20..79: some candidates'
    # references hold n-grams the df table lacks.
    df_refs = images[:60]
    cand_refs = images[20:80]
    references = np.stack([rewards.references_tensor(r, 5, 14) for r in cand_refs])
    return df_refs, pad(cands, 18), references


def flickr_data(root):
    """300 training images' captions as ids; candidates are other images'
    references, or their own image's (whole, or its first words without END),
    scored against 50 images."""
    train = (root / "Flickr8k_text" / "Flickr_8k.trainImages.txt").read_text().split()[:300]
    caps = {name: [] for name in train}
    for line in (root / "Flickr8k_text" / "Flickr8k.token.txt").read_text().splitlines():
        name, _, caption = line.partition("\t")
        name = name.split("#")[0]
        if name in caps:
            caps[name].append(caption.lower().split())
    words = sorted({w for c in caps.values() for s in c for w in s})
    vocab = {w: i + 4 for i, w in enumerate(words)}
    images = [[[START_ID] + [vocab[w] for w in s] + [END_ID] for s in caps[name]] for name in train]
    cands = [images[i if i % 5 < 2 else (i * 7 + 3) % 300][i % 5] for i in range(50)]
    cands = [c[:(len(c) * 3) // 5] if i % 5 == 1 else c for i, c in enumerate(cands)]
    width = max(len(r) for refs in images for r in refs)
    references = np.stack([rewards.references_tensor(r, 5, width) for r in images[:50]])
    return images, pad(cands, width), references, len(vocab) + 4


@pytest.fixture(scope="module")
def data():
    df_refs, cands, refs = random_data()
    df = rewards.document_frequencies(df_refs, vocab_size=10)
    return df_refs, cands, refs, df


def test_document_frequencies_count_as_coco_caption(data):
    df_refs, _, _, df = data
    train = CiderScorer(n=4)
    train.crefs = [cook_refs(present(refs)) for refs in df_refs]
    train.compute_doc_freq()
    expected = {sum(int(w) * 10 ** (len(g) - 1 - k) for k, w in enumerate(g)) + 10 ** len(g): c
                for g, c in train.document_frequency.items()}
    assert dict(zip(df.keys.tolist(), df.counts.tolist())) == expected
    assert df.num_images == 60


def test_cider_matches_pycocoevalcap_on_random_captions(data):
    df_refs, cands, refs, df = data
    got = rewards.CiderD(df)(cands, refs).numpy()
    expected = coco_cider(df_refs, cands, [r.tolist() for r in refs])
    assert expected.max() > 3 and (expected == 0).any()  # the data spans the range
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_bleu4_matches_pycocoevalcap_on_random_captions(data):
    _, cands, refs, _ = data
    got = rewards.bleu4(cands, refs).numpy()
    expected = coco_bleu4(cands, [r.tolist() for r in refs])
    assert ((expected > 0.1) & (expected < 0.9)).sum() >= 3
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # Most random candidates score ~1e-5 from the smoothing alone: those match too.
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=0)


def test_rewards_match_pycocoevalcap_on_flickr8k(flickr8k_root):
    images, cands, refs, vocab_size = flickr_data(flickr8k_root)
    df = rewards.document_frequencies(images, vocab_size)
    ref_lists = [r.tolist() for r in refs]
    np.testing.assert_allclose(rewards.CiderD(df)(cands, refs).numpy(),
                               coco_cider(images, cands, ref_lists), atol=1e-4, rtol=0)
    bleu, expected = rewards.bleu4(cands, refs, vocab_size).numpy(), coco_bleu4(cands, ref_lists)
    np.testing.assert_allclose(bleu, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(bleu, expected, rtol=1e-3, atol=0)


def test_xla_compiled_equals_eager(data):
    _, cands, refs, df = data
    cider = rewards.CiderD(df)
    both = tf.function(lambda c, r: (cider(c, r), rewards.bleu4(c, r)), jit_compile=True)
    jit_cider, jit_bleu = both(tf.constant(cands), tf.constant(refs))
    np.testing.assert_allclose(jit_cider.numpy(), cider(cands, refs).numpy(), atol=1e-5)
    np.testing.assert_allclose(jit_bleu.numpy(), rewards.bleu4(cands, refs).numpy(), atol=1e-5)
    ops = both.get_concrete_function(tf.constant(cands), tf.constant(refs)).graph.get_operations()
    assert not {"EagerPyFunc", "PyFunc", "LookupTableFindV2"} & {op.type for op in ops}


@pytest.mark.parametrize("folder", ["local", "ram://tfcaption-rewards-test"])
def test_document_frequencies_save_load(data, tmp_path, folder):
    df = data[3]
    folder = str(tmp_path) if folder == "local" else folder
    path = io.join(folder, "df.npz")
    df.save(path)
    df.save(path)  # overwrites (ram:// would append to a reused temporary file)
    assert io.listdir(folder) == ["df.npz"]
    back = rewards.DocumentFrequencies.load(path)
    np.testing.assert_array_equal(back.keys, df.keys)
    np.testing.assert_array_equal(back.counts, df.counts)
    assert (back.num_images, back.vocab_size, back.max_n) == (60, 10, 4)


def test_save_never_leaves_a_half_written_file(data, tmp_path, monkeypatch):
    path = str(tmp_path / "df.npz")
    data[3].save(path)
    real_write = tf.io.gfile.GFile.write

    def write_half(self, content):
        real_write(self, content[:len(content) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(tf.io.gfile.GFile, "write", write_half)
    with pytest.raises(OSError):
        rewards.DocumentFrequencies(data[3].keys[:5], data[3].counts[:5], 7, 10).save(path)
    monkeypatch.undo()
    assert rewards.DocumentFrequencies.load(path).num_images == 60  # the old file, whole


def test_ngram_keys_must_fit_int64():
    rewards.document_frequencies([[[4, 5, 6, 7]]], vocab_size=46340)  # 2 * 46340**4 < 2**63
    with pytest.raises(ValueError, match="overflow int64"):
        rewards.document_frequencies([[[4, 5, 6, 7]]], vocab_size=46341)
    with pytest.raises(ValueError, match="overflow int64"):
        rewards.DocumentFrequencies(np.zeros(0), np.zeros(0), 1, vocab_size=10 ** 5)
    with pytest.raises(ValueError, match="id >= vocab_size"):
        rewards.document_frequencies([[[4, 5, 10]]], vocab_size=10)
    with pytest.raises(ValueError, match="overflow int64"):
        rewards.bleu4(np.full((1, 4), 5), np.full((1, 1, 4), 5), vocab_size=10 ** 5)


def test_make_reward(data):
    _, cands, refs, df = data
    cider, bleu = rewards.CiderD(df)(cands, refs).numpy(), rewards.bleu4(cands, refs).numpy()
    np.testing.assert_allclose(rewards.make_reward("cider", df)(cands, refs), cider)
    np.testing.assert_allclose(rewards.make_reward("bleu4", df)(cands, refs), bleu)
    mix = rewards.make_reward("cider+bleu4", df, weights=(1.0, 2.0))(cands, refs)
    np.testing.assert_allclose(mix, cider + 2.0 * bleu, rtol=1e-6)
    with pytest.raises(ValueError, match="cider, bleu4, cider\\+bleu4"):
        rewards.make_reward("rouge", df)


def test_references_tensor_pads_and_cuts():
    refs = [[1, 4, 5, 2], [1, 6, 7, 8, 9, 2], [1, 4, 2]]
    np.testing.assert_array_equal(rewards.references_tensor(refs, 2, 5),
                                  [[1, 4, 5, 2, 0], [1, 6, 7, 8, 9]])
    out = rewards.references_tensor(refs[:1], 3, 6)
    assert out.dtype == np.int32 and out.tolist() == [[1, 4, 5, 2, 0, 0], [0] * 6, [0] * 6]
