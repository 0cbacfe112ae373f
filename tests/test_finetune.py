"""Fine-tuning the backbone's top (features.trainable_from, train.finetune_epochs):
the cut cache, the phase between cross-entropy and SCST, its resume, the
checkpoint record, and the SavedModel that serves the fine-tuned top."""

import json
import types

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import checkpoints, decoding, export, serving, tflite_export, training
from tfcaption.data import features
from tfcaption.models.backbones import build_backbone
from tfcaption.models.build import head_variables, top_variables
from tests.test_export import assert_same_outputs, eager_outputs, fresh_report
from tests.test_scst import Killed, decoder_weights, kill_after_checkpoint
from tests.test_training import tiny_run

# Validation faked by step: cross-entropy's first epoch (8) is its best, the
# fine-tune epoch (24) the best of all, SCST's (36) worse.
SCORES = {8: 0.9, 16: 0.5, 24: 1.0, 36: 0.7}


def finetuned(root, name, **train):
    config = tiny_run(root, **{"epochs": 2, "finetune_epochs": 1, "rl_epochs": 1,
                               "backbone_learning_rate": 1e-2, "rl_backbone_learning_rate": 1e-3,
                               "deterministic": True, **train})
    config.features.trainable_from = "fire6"
    config.train.train_dir = str(root / name)
    return config


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    config = finetuned(root, "unused")
    for split in ("train", "val"):
        features.extract(config, split)
    return root


def top_weights(config, path) -> list:
    """The top's weights in the checkpoint at path, read through the decoder:
    a checkpoint names a variable by its shortest path, and the top's are
    reached by the top optimizer's first (top_optimizer/_trainable_variables)."""
    return [v.numpy() for v in checkpoints.restore_decoder(config, path)[0].top.weights]


def initial_top(config) -> list:
    fc = config.features
    return [v.numpy() for v in build_backbone(
        fc.backbone, fc.weights, fc.input_size, fc.seed, trainable_from="fire6").top.weights]


def test_the_cache_holds_the_grid_below_the_top(cut):
    config = finetuned(cut, "unused")
    manifest = features.load_manifest(config.features.cache_dir, "train")
    assert manifest["grid_shape"] == [3, 3, 256]  # pool5, fire6's input; fire9 has 512
    assert manifest["fingerprint"]["trainable_from"] == "fire6"


@pytest.fixture(scope="module")
def reference(cut):
    """One run of all three phases with validation faked by SCORES; what the
    decoder held when each later phase began."""
    config = finetuned(cut, "reference")
    seen = {}
    original = training._start_phase

    def spy(trainer, phase, step, first):
        original(trainer, phase, step, first)
        best = trainer.best.latest_checkpoint  # kept one at a time: read it now
        stored = checkpoints.restore_decoder(trainer.config, best)[0]
        seen[phase] = (best, [v.numpy() for v in head_variables(trainer.decoder)],
                       [v.numpy() for v in top_variables(trainer.decoder)],
                       [v.numpy() for v in head_variables(stored)])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "validate", lambda trainer: {
            "CIDEr-D": SCORES[int(trainer.state["step"].numpy())], "BLEU-4": 0.0,
            "samples": [("id", "a caption")]})
        mp.setattr(training, "_start_phase", spy)
        summary = training.train(config, progress=False)
    return types.SimpleNamespace(config=config, summary=summary, seen=seen)


@pytest.mark.integration  # a whole run of three phases (the `reference` fixture), ~23 s
def test_phases_start_from_the_best_checkpoint_and_only_later_ones_train_the_top(reference):
    summary, seen, config = reference.summary, reference.seen, reference.config
    assert (summary["steps_per_epoch"], summary["finetune_steps"], summary["scst_steps"],
            summary["total_steps"]) == (8, 8, 12, 36)
    start = initial_top(config)
    # Fine-tuning starts from cross-entropy's best (step 8), whose top is the
    # backbone's own: cross-entropy left it alone.
    best, head, top, stored = seen["ft"]
    assert best.endswith("-8") and len(head) == len(stored)
    for w, v in zip(head, stored):
        np.testing.assert_array_equal(w, v)
    for w, v in zip(top, start):
        np.testing.assert_array_equal(w, v)
    # SCST starts from the fine-tuned best (step 24), whose top has moved.
    best, _, top, _ = seen["rl"]
    assert best.endswith("-24")
    assert max(float(np.abs(w - v).max()) for w, v in zip(top, start)) > 1e-4
    with open(f"{config.train.train_dir}/best.json") as f:
        chosen = json.load(f)
    assert (chosen["phase"], chosen["step"]) == ("fine-tune", 24)
    # SCST trained the top too (rl_backbone_learning_rate): the last weights
    # differ from the best's.
    last = top_weights(config, summary["latest_checkpoint"])
    tuned = top_weights(config, summary["best_checkpoint"])
    assert max(float(np.abs(a - b).max()) for a, b in zip(last, tuned)) > 0


@pytest.mark.integration
def test_a_run_killed_in_fine_tuning_resumes_to_the_same_weights(reference, cut, monkeypatch):
    monkeypatch.setattr(training, "validate", lambda trainer: {
        "CIDEr-D": SCORES[int(trainer.state["step"].numpy())], "BLEU-4": 0.0,
        "samples": [("id", "a caption")]})
    killed = finetuned(cut, "killed")
    # Killed inside fine-tuning; the resumed run finishes it and trains SCST
    # (the top too) from the restored top optimizer. (A kill inside SCST is
    # test_scst's; once here keeps the suite's time.)
    kill_after_checkpoint(monkeypatch, steps := [18])
    with pytest.raises(Killed):
        training.train(killed, progress=False)
    assert not steps
    again = training.train(killed, progress=False)
    assert again["step"] == reference.summary["step"]
    a = decoder_weights(cut / "killed" / "latest")
    b = decoder_weights(cut / "reference" / "latest")
    assert a.keys() == b.keys()
    assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a) <= 1e-5
    a = top_weights(killed, again["latest_checkpoint"])
    b = top_weights(reference.config, reference.summary["latest_checkpoint"])
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)) <= 1e-5


def test_a_checkpoint_with_a_top_is_refused_by_a_config_without_one(cut):
    # A checkpoint with a top: an untrained run's, saved at step 0.
    config = finetuned(cut, "with-top", finetune_epochs=0, rl_epochs=0)
    training.make_trainer(config).latest.save(checkpoint_number=0)
    config.features.trainable_from = ""
    with pytest.raises(ValueError, match="features.trainable_from=fire6.*this config says "
                                         "no features.trainable_from"):
        checkpoints.restore_decoder(config)
    # And the other way: a checkpoint without a top, read by a config with one.
    plain = finetuned(cut, "plain", finetune_epochs=0, rl_epochs=0)
    plain.features.trainable_from = ""
    trainer = training.make_trainer(plain)
    trainer.latest.save(checkpoint_number=0)
    plain.features.trainable_from = "fire6"
    with pytest.raises(ValueError, match="no features.trainable_from.*this config says "
                                         "features.trainable_from=fire6"):
        checkpoints.restore_decoder(plain)


def test_settings_that_cannot_fine_tune_are_refused(cut):
    config = finetuned(cut, "refused")
    config.features.trainable_from = ""
    with pytest.raises(ValueError, match="set features.trainable_from"):
        training.check_config(config)
    config = finetuned(cut, "refused", mixed_precision="mixed_float16")
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        training.check_config(config)


@pytest.mark.integration
def test_the_saved_model_serves_the_fine_tuned_top(reference, cut, tmp_path):
    """JPEG bytes in a process without tfcaption give the captions, scores and
    attention of the bottom + the fine-tuned decoder in this one; the backbone's
    untuned top would score them differently."""
    config = reference.config
    path = export.export(config, out_root=str(tmp_path / "models"), beam_size=3)
    info = serving.model_info(path)
    assert info["trainable_from"] == "fire6" and info["grid"] == [3, 3, 256]
    images = [cut / "img" / f"{i:04d}.{'png' if i % 4 == 1 else 'jpg'}" for i in range(4)]
    blobs = [p.read_bytes() for p in images]
    eager = eager_outputs(config, blobs, info)
    served = fresh_report({"tuned": path}, blobs, eager.grid, {}, tmp_path)["tuned"]
    assert_same_outputs(served["serving_default"], eager.beam)
    assert_same_outputs(served["greedy"], eager.greedy)
    decoder = checkpoints.restore_decoder(config)[0]
    for v, w in zip(decoder.top.weights, initial_top(config)):
        v.assign(w)
    untuned = eager_outputs(config, blobs, info, decoder=decoder)
    assert np.abs(untuned.beam["scores"] - eager.beam["scores"]).max() > 1e-3


@pytest.mark.integration  # a TFLite export of the `reference` run
def test_the_tflite_model_runs_the_fine_tuned_top(reference, cut, tmp_path):
    """The TFLite export (uint8 pixels in) holds the bottom and the fine-tuned
    top: its greedy captions, scores and attention are this process's over
    the bottom's grid with the fine-tuned decoder (the top inside it)."""
    config, max_len = reference.config, 8
    out = tflite_export.export_tflite(config, str(tmp_path / "tflite"), max_len=max_len)
    fc = config.features
    backbone = build_backbone(fc.backbone, fc.weights, fc.input_size, fc.seed,
                              trainable_from="fire6")
    blobs = [(cut / "img" / f"{i:04d}.{'png' if i % 4 == 1 else 'jpg'}").read_bytes()
             for i in range(4)]
    images = tf.stack([backbone.resize(features.decode_image(tf.constant(b))) for b in blobs])
    h, w, c = backbone.grid_shape
    assert (h, w, c) == (3, 3, 256)  # the bottom's grid: the top runs in the decoder
    grid = tf.reshape(backbone(backbone.normalize(images)), [-1, h * w, c])
    decoder = checkpoints.restore_decoder(config)[0]
    eager = dict(zip(tflite_export.OUTPUTS, [x.numpy() for x in decoding.greedy(
        decoder, grid, max_len, config.decode.no_repeat_ngram)]))
    found = tflite_export.run(f"{out}/model.tflite", images.numpy())
    np.testing.assert_array_equal(found["tokens"], eager["tokens"])
    np.testing.assert_allclose(found["scores"], eager["scores"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(found["attention"], eager["attention"].reshape(-1, max_len, h, w),
                               atol=1e-5)
    for v, w0 in zip(decoder.top.weights, initial_top(config)):  # the untuned top differs
        v.assign(w0)
    untuned = decoding.greedy(decoder, grid, max_len, config.decode.no_repeat_ngram)
    assert np.abs(untuned[2].numpy() - found["scores"]).max() > 1e-3


def test_scst_leaves_the_top_alone_without_a_rate_and_the_top_rate_switches(cut):
    config = finetuned(cut, "rates", rl_backbone_learning_rate=0.0)
    trainer = training.make_trainer(config)
    assert trainer.variables("rl")[1] == [] and trainer.variables("xe")[1] == []
    assert len(trainer.variables("ft")[1]) == len(trainer.decoder.top.trainable_variables) > 0
    rate = trainer.top_optimizer.learning_rate_schedule if hasattr(
        trainer.top_optimizer, "learning_rate_schedule") else trainer.top_optimizer._learning_rate
    np.testing.assert_allclose([float(rate(s)) for s in (0, 7, 8, 20)], [1e-2, 1e-2, 0, 0])


def test_the_average_moves_only_what_the_phase_trains(cut):
    """A frozen top's shadows are left as the phase started them (here: a
    sentinel) by a cross-entropy step, and follow the top in fine-tuning."""
    config = finetuned(cut, "averaged", ema_decay=0.5)
    trainer = training.make_trainer(config)
    average = trainer.average
    top = {id(v) for v in top_variables(trainer.decoder)}
    shadows = {"top": [s for s, w in zip(average.shadows, average.weights) if id(w) in top],
               "head": [s for s, w in zip(average.shadows, average.weights) if id(w) not in top]}
    assert shadows["top"] and shadows["head"]
    batch = next(iter(trainer.data.dataset(0, 1)))
    for phase, top_moves in (("xe", False), ("ft", True)):
        for shadow in average.shadows:
            shadow.assign(tf.zeros_like(shadow))
        training.make_step(trainer, phase)(*batch)
        moved = {part: [bool(np.any(s.numpy() != 0)) for s in group]
                 for part, group in shadows.items()}
        assert all(moved["head"]), phase
        assert all(moved["top"]) if top_moves else not any(moved["top"]), phase
