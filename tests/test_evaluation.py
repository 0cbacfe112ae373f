"""Evaluation, attention correctness and the report, on a tiny synthetic run."""

import html
import json
import os
import pathlib
import re

import numpy as np
import pytest

from tfcaption import attention_correctness as ac
from tfcaption import checkpoints, evaluation, export, report, training
from tfcaption.cli import main
from tfcaption.config import (DataConfig, EvalConfig, FeatureConfig, ModelConfig,
                              PipelineConfig, RunConfig, TrainConfig)
from tfcaption.data import features, sources, synthetic, text
from tfcaption.data.example import Box

METRICS = {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr-D"}
CORRECTNESS = {"pointing_accuracy", "mass_in_box", "chance", "words"}


# -- pointing game and mass in box on hand-made maps -------------------------------

def test_pointing_game_peak_inside_box_hits_outside_misses():
    att = np.full((4, 4), 0.01)
    att[1, 2] = 0.5  # cell centre at x = 2.5 / 4, y = 1.5 / 4
    assert ac.pointing(att, [Box("circle", 0.5, 0.25, 0.75, 0.5)]) == 1.0
    assert ac.pointing(att, [Box("circle", 0.0, 0.0, 0.5, 0.5)]) == 0.0
    # The peak cell overlaps this box, but its centre is outside it: a miss.
    assert ac.pointing(att, [Box("circle", 0.5, 0.25, 0.6, 0.5)]) == 0.0
    # Any of several boxes of the word will do.
    assert ac.pointing(att, [Box("circle", 0.0, 0.0, 0.2, 0.2),
                             Box("circle", 0.6, 0.3, 0.7, 0.4)]) == 1.0


def test_pointing_game_flat_map_scores_the_share_of_tied_cells_inside():
    flat = np.full((2, 2), 0.25)
    assert ac.pointing(flat, [Box("star", 0.0, 0.0, 0.5, 1.0)]) == 0.5


def test_mass_in_box_counts_each_cell_by_its_covered_part():
    att = np.array([[0.1, 0.2], [0.3, 0.4]])
    # Covers the right half of cell (0, 0) and the left half of cell (0, 1).
    half = Box("square", 0.25, 0.0, 0.75, 0.5)
    assert ac.mass_in_boxes(att, [half]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.2)
    # Two overlapping boxes: their union counts once (all of (0, 0), half of (0, 1)).
    left = Box("square", 0.0, 0.0, 0.5, 0.5)
    assert ac.mass_in_boxes(att, [left, half]) == pytest.approx(0.1 + 0.5 * 0.2)
    np.testing.assert_allclose(ac.coverage([left, half], 2, 2), [[1.0, 0.5], [0.0, 0.0]])
    # Unnormalised maps are taken as shares of their total.
    assert ac.mass_in_boxes(att * 3, [half]) == pytest.approx(0.15)
    # A box inside one cell of a 3 x 3 grid: 0.1 x 0.1 of a 1/3 x 1/3 cell.
    np.testing.assert_allclose(ac.coverage([Box("x", 0.4, 0.4, 0.5, 0.5)], 3, 3),
                               [[0, 0, 0], [0, 0.09, 0], [0, 0, 0]], atol=1e-12)


def test_cells_sit_at_their_receptive_field_centres():
    """SqueezeNet pool3 at 128 px: 15 cells centred at 7.5, 15.5, ... 119.5 px, not
    at the centres of 15 equal slices (4.3 ... 123.7)."""
    centres = {"rows": (7.5 + 8 * np.arange(15)) / 128, "cols": (7.5 + 8 * np.arange(15)) / 128}
    att = np.full((15, 15), 0.001)
    att[7, 0] = 1.0  # field centred at x = 7.5 px; the first slice's centre is 4.3 px
    box = [Box("square", 6 / 128, 0.3, 40 / 128, 0.7)]
    assert ac.pointing(att, box, centres) == 1.0
    assert ac.pointing(att, box) == 0.0
    # Cells reach halfway to their neighbours (the border ones out to the edge),
    # so they tile the image: coverage times cell area adds up to the box's area.
    edges = ac._edges(centres["rows"])
    assert edges[0] == 0.0 and edges[-1] == 1.0 and edges[1] * 128 == pytest.approx(11.5)
    area = np.diff(edges)[:, None] * np.diff(edges)[None, :]
    cover = ac.coverage(box, 15, 15, centres)
    assert (cover * area).sum() == pytest.approx((34 / 128) * 0.4)
    assert cover[7, 0] == pytest.approx(1 - 6 / 11.5)  # the first column is 0..11.5 px
    with pytest.raises(ValueError, match="centres"):
        ac.pointing(np.ones((3, 3)), box, centres)


def test_caption_rows_score_only_words_that_name_a_box():
    att = np.zeros((4, 2, 2))
    att[:, 0, 0] = 1.0  # every word looks at the top left cell
    boxes = [Box("circle", 0.0, 0.0, 0.5, 0.5), Box("square", 0.5, 0.5, 1.0, 1.0),
             Box("circle", 0.5, 0.0, 1.0, 0.5)]
    rows = ac.caption_rows(["a", "circle", "and", "square"], att, boxes)
    assert rows == [(1.0, 1.0, 0.5), (0.0, 0.0, 0.25)]  # both circles' area is the chance
    summary = ac.summarise(rows)
    assert summary == {"pointing_accuracy": 0.5, "mass_in_box": 0.5, "chance": 0.375,
                       "words": 2}
    assert ac.summarise([])["words"] == 0


def test_coco_results_ids_are_integers_when_all_digits():
    assert evaluation.coco_image_id("391895") == 391895
    assert evaluation.coco_image_id("1000268201_693b08cb0e.jpg") == "1000268201_693b08cb0e.jpg"


# -- a tiny synthetic run ----------------------------------------------------------

def tiny_synthetic(root: pathlib.Path) -> RunConfig:
    return RunConfig(
        name="tiny",
        data=DataConfig(source="synthetic", root=str(root / "world"), max_caption_words=12),
        features=FeatureConfig(backbone="squeezenet", weights="random", input_size=96,
                               cache_dir=str(root / "cache"), batch_size=8, shard_size=8),
        pipeline=PipelineConfig(batch_size=8, shuffle_window=16, bucket_boundaries=(6,)),
        # The demo's decoder (pipelines/synthetic.py): a separable 3x3 projection
        # and a learned embedding per location, through evaluation, export and report.
        model=ModelConfig(embedding_dim=8, units=8, attention_units=8, feature_dim=8,
                          dropout=0.0, feature_kernel=3, feature_separable=True,
                          position_embedding=True),
        train=TrainConfig(train_dir=str(root / "train"), epochs=1, warmup_steps=1,
                          log_every=1, val_batch_size=8, checkpoint_every=100),
        eval=EvalConfig(split="test", beam_size=2, batch_size=4, out_dir=str(root / "eval"),
                        export_dir=str(root / "saved_models"),
                        report_dir=str(root / "report"), report_images=2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    config = tiny_synthetic(root)
    synthetic.generate(config.data.root, seed=0, counts=(24, 8, 8), image_size=64)
    extractor = features.Extractor(config)
    for split in ("train", "val", "test"):
        features.extract(config, split, extractor=extractor)
    training.train(config, progress=False)
    return root


def test_evaluate_writes_coco_results_and_metrics_then_skips(trained, monkeypatch):
    config = tiny_synthetic(trained)
    scored = evaluation.evaluate(config, progress=False)
    out = trained / "eval" / "test"
    results = json.loads((out / "results.json").read_text())
    ids = [ex.image_id for ex in sources.load_examples(config.data, "test")]
    assert [r["image_id"] for r in results] == ids  # cache order; names stay strings
    assert all(set(r) == {"image_id", "caption"} and isinstance(r["caption"], str)
               for r in results)
    stored = json.loads((out / "metrics.json").read_text())
    assert stored == scored
    assert set(stored["metrics"]) >= METRICS
    assert all(0.0 <= v <= 10.0 for v in stored["metrics"].values())
    assert stored["split"] == "test" and stored["beam"] == 2 and stored["count"] == 8
    assert stored["checkpoint"] == checkpoints.chosen_checkpoint(config.train.train_dir)
    assert set(stored["attention_correctness"]) == CORRECTNESS
    if "SPICE" not in stored["metrics"]:
        assert any("SPICE" in note for note in stored["notes"])

    # Same checkpoint, split and beam: nothing is decoded again.
    monkeypatch.setattr(evaluation, "decode_split", lambda *a, **k: pytest.fail("decoded"))
    mtime = os.path.getmtime(out / "metrics.json")
    assert evaluation.evaluate(config, progress=False) == scored
    assert os.path.getmtime(out / "metrics.json") == mtime


def test_attention_correctness_sees_every_generated_word_with_its_own_map(trained):
    """Greedy decoding, and a box over the whole image labelled with every word of
    the vocabulary: each generated word (not <end>) is scored, and hits."""
    config = tiny_synthetic(trained)
    config.eval.beam_size = 1
    decoder, tokenizer, manifest, _ = checkpoints.restore_decoder(config)
    vocab = text.load_vocabulary(evaluation.pipeline.vocabulary_path(manifest))
    everywhere = tuple(Box(word, 0.0, 0.0, 1.0, 1.0) for word in vocab)
    ids = [ex.image_id for ex in sources.load_examples(config.data, "test")]
    captions, rows = evaluation.decode_split(config, "test", decoder, tokenizer, manifest,
                                             {i: everywhere for i in ids}, progress=False)
    assert list(captions) == ids
    assert len(rows) == sum(len(c.split()) for c in captions.values()) > 0
    assert all(r == pytest.approx((1.0, 1.0, 1.0)) for r in rows)


def test_cli_evaluate_prints_metrics(trained, capsys):
    pipeline_file = trained / "tiny_pipeline.py"
    pipeline_file.write_text("import pathlib\nfrom tests.test_evaluation import tiny_synthetic\n"
                             f"CONFIG = tiny_synthetic(pathlib.Path({str(trained)!r}))\n")
    assert main(["evaluate", str(pipeline_file), "--split", "test", "--beam", "2"]) == 0
    printed = capsys.readouterr().out
    assert "metrics.json" in printed and "CIDEr-D" in printed  # where, and what


def test_report_is_one_self_contained_page(trained):
    config = tiny_synthetic(trained)
    evaluation.evaluate(config, progress=False)  # metrics for the table (or already there)
    model_dir = export.export(config, out_root=config.eval.export_dir, beam_size=2)
    path = report.write_report(config)
    assert path == str(trained / "report" / "index.html")
    assert os.listdir(trained / "report") == ["index.html"]
    page = pathlib.Path(path).read_text()
    sources_ = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources_ and all(s.startswith("data:image/") for s in sources_)
    assert "url(" not in page
    # a thumbnail and a heatmap figure per image, both JPEG
    assert len(re.findall(r'src="data:image/jpeg;base64,', page)) == 4
    for ex in sources.load_examples(config.data, "test")[:2]:
        assert html.escape(ex.image_id) in page
        for ref in ex.captions:
            assert html.escape(ref) in page
    captions = re.findall(r'<p class="caption">([^<]*)</p>', page)
    assert len(captions) == 2 and all(c.strip() for c in captions)
    assert "CIDEr-D" in page and "METEOR" in page  # the metrics table
    assert report.latest_model_dir(config) == model_dir
    # Same SavedModel, images and metrics: the page is kept as it is.
    mtime = os.path.getmtime(path)
    assert report.write_report(config) == path and os.path.getmtime(path) == mtime


# -- diversity: metrics.json and the report ---------------------------------------

def test_metrics_hold_diversity_of_the_captions_against_the_training_captions(trained):
    config = tiny_synthetic(trained)
    stored = evaluation.evaluate(config, progress=False)
    found = stored["diversity"]
    assert "samples" not in found and "sampled" not in stored  # num_captions is 1
    results = json.loads((trained / "eval" / "test" / "results.json").read_text())
    captions = [r["caption"].split() for r in results]
    assert found["captions"]["vocabulary"] == len({w for c in captions for w in c})
    assert found["captions"]["captions"] == len(captions) == 8
    # Novel counts against the train split's references (normalised), no other.
    refs = evaluation.pipeline.references(config.features.cache_dir, "train")
    train = {tuple(text.normalize(c).numpy().decode().split())
             for cs in refs.values() for c in cs}
    assert found["captions"]["novel"] == pytest.approx(
        sum(tuple(c) not in train for c in captions) / len(captions))
    # A tiny model rarely writes a training caption word for word, so check the
    # set itself as well.
    from tfcaption import diversity_eval
    assert diversity_eval.training_captions(config.features.cache_dir) == train


def test_temperature_zero_samples_are_the_greedy_caption_n_times(trained):
    from tfcaption import diversity_eval
    config = tiny_synthetic(trained)
    config.eval.beam_size = 1
    config.decode.num_captions, config.decode.temperature = 3, 0.0
    decoder, tokenizer, manifest, _ = checkpoints.restore_decoder(config)
    greedy, _ = evaluation.decode_split(config, "test", decoder, tokenizer, manifest, {},
                                        progress=False)
    samples = diversity_eval.sample_split(config, "test", decoder, tokenizer,
                                          evaluation.max_len(config), progress=False)
    assert samples == {i: [c] * 3 for i, c in greedy.items()}
    # Three copies: each caption is its neighbours' caption (self-BLEU 1 where the
    # caption has a 4-gram) and the samples add no new n-gram.
    summary = diversity_eval.summarise(greedy, samples, None)
    assert summary["samples"]["distinct_2"] == pytest.approx(
        summary["captions"]["distinct_2"] / 3)
    if all(len(c.split()) >= 4 for c in greedy.values()):
        assert summary["samples"]["self_bleu_4"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.integration  # a SavedModel export and the report page: ~10 s
def test_sampled_diversity_goes_into_metrics_and_the_report(trained, tmp_path):
    config = tiny_synthetic(trained)
    config.eval.out_dir, config.eval.report_dir = str(tmp_path / "eval"), str(tmp_path / "rep")
    config.decode.num_captions, config.decode.temperature = 3, 1.0
    stored = evaluation.evaluate(config, progress=False)
    samples = stored["diversity"]["samples"]
    assert stored["sampled"] == {"num_captions": 3, "temperature": 1.0, "top_k": 0,
                                 "top_p": 1.0, "seed": 0, "no_repeat_ngram": 3}
    assert samples["num_captions"] == 3 and samples["captions"] == 3 * 8
    assert 0.0 <= samples["self_bleu_4"] <= 1.0 and 0.0 <= samples["novel"] <= 1.0
    assert all(len(v) == 3 for v in samples["examples"].values())
    # Another temperature is another measurement: evaluated again, not reused.
    config.decode.temperature = 0.5
    assert evaluation.evaluate(config, progress=False)["sampled"]["temperature"] == 0.5

    model_dir = export.export(config, out_root=str(tmp_path / "saved_models"), beam_size=2)
    page = pathlib.Path(report.write_report(config, model_dir=model_dir)).read_text()
    assert "self-BLEU-4" in page and "distinct-2" in page  # the diversity table
    lists = re.findall(r"<ol class='samples'>(.*?)</ol>", page)
    assert len(lists) == 2 and all(item.count("<li>") == 3 for item in lists)


def test_search_sample_scores_one_drawn_caption_per_image(trained, tmp_path):
    """eval.search = "sample": the scored captions are drawn at decode.temperature
    (0 is the greedy caption, 1.0 is not), and another temperature is scored again."""
    config = tiny_synthetic(trained)
    config.eval.beam_size, config.eval.out_dir = 1, str(tmp_path / "eval")
    decoder, tokenizer, manifest, _ = checkpoints.restore_decoder(config)
    greedy, _ = evaluation.decode_split(config, "test", decoder, tokenizer, manifest, {},
                                        progress=False)
    config.eval.beam_size = 3  # ignored when sampling
    config.eval.search, config.decode.temperature = "sample", 0.0

    def scored():
        stored = evaluation.evaluate(config, progress=False)
        results = json.loads((tmp_path / "eval" / "test" / "results.json").read_text())
        return stored, {r["image_id"]: r["caption"] for r in results}

    stored, captions = scored()
    assert captions == greedy
    assert stored["search"] == {"method": "sample", "temperature": 0.0, "top_k": 0,
                                "top_p": 1.0, "seed": 0}
    assert stored["diversity"]["captions"]["captions"] == 8  # of the sampled captions
    assert {"repeated_bigrams", "distinct_2"} <= set(stored["diversity"]["captions"])
    config.decode.temperature = 1.0
    stored, captions = scored()
    assert stored["search"]["temperature"] == 1.0 and captions != greedy
    page = report._metrics_html(str(tmp_path / "eval" / "test" / "metrics.json"))
    assert "one sample per image at temperature 1.0" in page
    # The same seed draws the same captions; the batches do not share their noise.
    again, _ = evaluation.decode_split(config, "test", decoder, tokenizer, manifest, {},
                                       progress=False)
    assert again == captions
    config.eval.search = "beams"
    with pytest.raises(ValueError, match="eval.search"):
        evaluation.evaluate(config, progress=False)


def test_settings_added_only_when_set_still_count_when_turned_off():
    """no_repeat_ngram and sampled are stored only when on (older metrics.json stay
    valid); metrics made with one on are not reused once it is turned off."""
    base = {"split": "test", "checkpoint": "a", "checkpoint_digest": "d", "beam": 3}
    assert evaluation._same({**base, "checkpoint": "b"}, base)  # the path is not compared
    assert not evaluation._same({**base, "no_repeat_ngram": 2}, base)
    assert not evaluation._same({**base, "sampled": {"num_captions": 3}}, base)
    assert not evaluation._same({**base, "search": {"method": "sample"}}, base)
    assert evaluation._same({**base, "no_repeat_ngram": 2}, {**base, "no_repeat_ngram": 2})
