"""features.trainable_from: a backbone cut into the frozen bottom the cache holds
and the top the decoder runs (backbones.split_at, projection.run_top)."""

import numpy as np
import pytest
import tensorflow as tf

from tfcaption.config import ModelConfig, RunConfig
from tfcaption.models.backbones import build_backbone
from tfcaption.models.build import build_decoder, head_variables, top_variables
from tfcaption.tokens import END_ID, START_ID


@pytest.mark.parametrize("name, size, cut, below, grid", [
    ("squeezenet", 64, "fire6", "pool5", (3, 3, 256)),  # a block of layers named fire6_*
    # A block whose branches start at mixed8, named only by its last concatenation.
    ("inception_v3", 75, "mixed9", "mixed8", (1, 1, 1280)),
    ("resnet50", 64, "conv5_block2", "conv5_block1_out", (2, 2, 2048)),  # batch-norm inside
])
def test_bottom_then_top_is_the_whole_backbone(name, size, cut, below, grid):
    whole = build_backbone(name, "random", size)
    split = build_backbone(name, "random", size, trainable_from=cut)
    assert split.model.layers[-1].name == below and split.grid_shape == grid
    assert split.top.layers[1].name.startswith(cut) or cut == "mixed9"
    images = tf.random.uniform([2, size, size, 3], 0, 255)
    x = split.preprocess(images)
    np.testing.assert_allclose(split.top(split.model(x)), whole(x), rtol=1e-4, atol=1e-4)
    # The top's own weights, not a copy shared with the bottom.
    assert not {id(v) for v in split.top.weights} & {id(v) for v in split.model.weights}
    assert split.cell_centres() == whole.cell_centres()  # where the attended cells look


def test_cuts_that_cannot_work_are_refused_with_what_would():
    with pytest.raises(ValueError, match="conv5_block1.*4x4 grid into 2x2.*'conv5_block2'"):
        build_backbone("resnet50", "random", 64, trainable_from="conv5_block1")
    with pytest.raises(ValueError, match="no layer or block 'fire10'.*fire9_concat"):
        build_backbone("squeezenet", "random", 64, trainable_from="fire10")


def tiny(top_from: str, backbone="squeezenet", size=64):
    config = RunConfig()
    config.model = ModelConfig(decoder="lstm", embedding_dim=8, units=8, attention_units=8,
                               feature_dim=8, dropout=0.0)
    split = build_backbone(backbone, "random", size, trainable_from=top_from)
    config.features.trainable_from = top_from
    return build_decoder(config, 30, split.grid_shape, split.top), split


def test_the_decoder_attends_over_the_top_of_the_cached_grid():
    """Encoding the cut grid equals encoding the top's output with a decoder
    that has the same weights and no top; the top's weights are apart from the
    rest, and the loss reaches them."""
    decoder, split = tiny("fire6")
    config = RunConfig()
    config.model = ModelConfig(decoder="lstm", embedding_dim=8, units=8, attention_units=8,
                               feature_dim=8, dropout=0.0)
    plain = build_decoder(config, 30, (3, 3, 512))
    head = head_variables(decoder)
    assert len(head) == len(plain.trainable_variables)
    assert len(top_variables(decoder)) == len(split.top.trainable_weights) == 24  # fire6..9: 3 convs each
    for v, w in zip(plain.trainable_variables, head):
        v.assign(w)
    cut = tf.nn.relu(tf.random.normal([2, 9, 256]))
    over = tf.reshape(split.top(tf.reshape(cut, [2, 3, 3, 256])), [2, 9, 512])
    for a, b in zip(tf.nest.flatten(decoder.encode(cut)), tf.nest.flatten(plain.encode(over))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    tokens = tf.constant([[START_ID, 5, 6, END_ID], [START_ID, 7, END_ID, 0]])
    with tf.GradientTape() as tape:
        logits, _ = decoder.teacher_forced(cut, tokens, training=True)
        loss = tf.reduce_sum(logits ** 2)
    grads = tape.gradient(loss, top_variables(decoder))
    assert all(g is not None for g in grads) and any(float(tf.norm(g)) > 0 for g in grads)


def test_batch_norm_in_the_top_keeps_its_moving_statistics_when_training():
    """A caption's logits do not depend on the other images of its batch, even
    in a training step: ResNet's batch-norm runs in inference mode."""
    decoder, split = tiny("conv5_block2", "resnet50")
    h, w, c = split.grid_shape
    images = tf.nn.relu(tf.random.normal([3, h * w, c]))
    tokens = tf.constant([[START_ID, 5, 6, END_ID]] * 3)
    alone, _ = decoder.teacher_forced(images[:1], tokens[:1], training=True)
    together, _ = decoder.teacher_forced(images, tokens, training=True)
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-4, atol=1e-4)
