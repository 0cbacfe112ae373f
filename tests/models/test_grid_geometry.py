"""Cell centres from receptive-field arithmetic, checked against the gradient's support."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcaption.models import grid_geometry
from tfcaption.models.backbones import build_backbone


def ones_model(size):
    """A linear net of every layer kind the walk handles ("valid" and "same" convs,
    dilation, both poolings, padding, a concatenation), all weights 1: the
    gradient of one output cell is non-zero exactly on its receptive field."""
    inputs = keras.Input((size, size, 1))
    conv = lambda *a, **k: keras.layers.Conv2D(*a, use_bias=False, kernel_initializer="ones", **k)  # noqa: E731
    x = conv(1, 3, strides=2)(inputs)
    x = keras.layers.ZeroPadding2D(((2, 0), (1, 1)))(x)
    x = keras.layers.AveragePooling2D(3, strides=2, padding="same")(x)
    a = conv(1, 3, padding="same", dilation_rate=2)(x)
    b = conv(1, 1)(x)
    x = keras.layers.Concatenate()([a, b])
    # Average, not max: a max pool passes the gradient to one input only.
    x = keras.layers.AveragePooling2D(2)(keras.layers.BatchNormalization()(x))
    return keras.Model(inputs, conv(1, 5, strides=2, padding="same")(x))


@pytest.mark.parametrize("size", [160, 161])
def test_centres_are_the_middle_of_each_cells_receptive_field(size):
    model = ones_model(size)
    rows, cols = grid_geometry.cell_centres(model)
    h, w = model.output.shape[1:3]
    image = tf.ones([1, size, size, 1])
    # Middle cells: their fields lie inside the image and read no padding (a
    # border cell's field is cut by the zeros, which moves its support).
    for i, j in [(h // 2, w // 2), (h // 2 - 1, w // 2 + 1)]:
        with tf.GradientTape() as tape:
            tape.watch(image)
            out = model(image, training=False)[0, i, j, 0]
        ys, xs = np.nonzero(tape.gradient(out, image)[0, :, :, 0].numpy())
        assert 0 < ys.min() and ys.max() < size - 1 and 0 < xs.min() and xs.max() < size - 1
        assert rows[i] * size == pytest.approx((ys.min() + ys.max() + 1) / 2)
        assert cols[j] * size == pytest.approx((xs.min() + xs.max() + 1) / 2)


def test_backbone_grids():
    """Valid layers shift the grid in from the border; VGG16's "same" layers do not;
    ResNet's strided 1x1 convs shift it up and left."""
    squeeze = build_backbone("squeezenet", "random", 128, layer="pool3").cell_centres()
    np.testing.assert_allclose(np.array(squeeze["rows"]) * 128, 7.5 + 8 * np.arange(15), atol=1e-3)
    assert squeeze["rows"] == squeeze["cols"]
    inception = build_backbone("inception_v3", "random").cell_centres()
    np.testing.assert_allclose(np.array(inception["cols"]) * 299, 37.5 + 32 * np.arange(8), atol=1e-3)
    vgg = build_backbone("vgg16", "random").cell_centres()
    np.testing.assert_allclose(vgg["rows"], (np.arange(14) + 0.5) / 14, atol=1e-6)
    # ResNet: conv1_pad 3 + 7x7/2 valid and pool1_pad 1 + 3x3/2 valid keep the
    # first centre on pixel 0 (0.5 px), and the stride-2 1x1 convs opening
    # conv3..conv5 sample pixels 0, 2, 4, ...: stride 32, offset 0.5 px, the grid
    # 15.5 px up and left of equal slices. ResNet-101's extra conv4 blocks are
    # stride-1 "same" 3x3s, which move nothing.
    for name in ("resnet50", "resnet101"):
        resnet = build_backbone(name, "random").cell_centres()
        np.testing.assert_allclose(np.array(resnet["rows"]) * 224, 0.5 + 32 * np.arange(7),
                                   atol=1e-3)
        assert resnet["rows"] == resnet["cols"]


def test_resnet50_centres_are_the_middle_of_each_cells_receptive_field():
    """Keras' own ResNet-50 made linear and positive (kernels 1 / fan-in, its max
    pool an average pool of the same size, stride and padding): the gradient of
    one conv5 cell is non-zero exactly on its 483 px receptive field. At 544 px
    the fields of cells 8 and 9 lie inside the image."""
    size = 544
    backbone = build_backbone("resnet50", "random", size)

    def averaging(layer):
        if isinstance(layer, keras.layers.MaxPooling2D):
            return keras.layers.AveragePooling2D(layer.pool_size, layer.strides,
                                                 layer.padding, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    model = keras.models.clone_model(backbone.model, clone_function=averaging)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            shape = tuple(layer.kernel.shape)
            layer.kernel.assign(np.full(shape, 1 / np.prod(shape[:-1]), np.float32))
    centres = backbone.cell_centres()  # what the cache and the SavedModel record
    rows, cols = np.array(centres["rows"]), np.array(centres["cols"])
    image = tf.ones([1, size, size, 3])
    for i, j in [(8, 9), (9, 8)]:
        with tf.GradientTape() as tape:
            tape.watch(image)
            out = model(image, training=False)[0, i, j, 0]
        ys, xs = np.nonzero(tape.gradient(out, image)[0, :, :, 0].numpy())
        assert 0 < ys.min() and ys.max() < size - 1 and 0 < xs.min() and xs.max() < size - 1
        assert ys.max() - ys.min() + 1 == xs.max() - xs.min() + 1 == 483
        assert rows[i] * size == pytest.approx((ys.min() + ys.max() + 1) / 2, abs=1e-3)
        assert cols[j] * size == pytest.approx((xs.min() + xs.max() + 1) / 2, abs=1e-3)


def test_unknown_layer_kind_is_refused():
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.UpSampling2D()(inputs))
    with pytest.raises(ValueError, match="no receptive-field rule"):
        grid_geometry.cell_centres(model)
