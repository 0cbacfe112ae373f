"""ResNet-50/101 with random weights: the conv5 grid, seeded weights whose grid
fits the float16 cache, Keras' caffe preprocessing, FLOPs. Elsewhere: cell
centres (test_grid_geometry), weights from a file (test_backbones), the cache
fingerprint (test_features)."""

import keras
import numpy as np
import pytest

from tfcaption.models.backbones import (BACKBONES, build_backbone, features_per_image_flops,
                                        preprocess)
from tests.models.test_backbones import _scene

NAMES = ("resnet50", "resnet101")
# Keras' applications table (25.6 M, 44.7 M) less the 2048x1000 classifier.
PARAMS = {"resnet50": 25_636_712 - 2_049_000, "resnet101": 44_707_176 - 2_049_000}


@pytest.mark.parametrize("name", NAMES)
def test_conv5_grid_at_224_fits_the_float16_cache(name):
    backbone = build_backbone(name)
    assert backbone.input_size == 224 and backbone.grid_shape == (7, 7, 2048)
    assert backbone.grid_shape == BACKBONES[name].grid
    assert backbone.model.layers[-1].name == "conv5_block3_out"
    assert backbone.model.count_params() == PARAMS[name]
    features = backbone(backbone.preprocess(_scene()[None])).numpy()
    assert features.shape == (1, 7, 7, 2048) and (features >= 0).all()  # post-ReLU
    # The cache stores float16: He init with unscaled residual branches gave
    # ResNet-50 ~3e5 here (ResNet-101 ~5e8), which becomes inf.
    assert np.isfinite(features.astype(np.float16)).all()
    assert 1.0 < features.mean() and features.max() < 1e4
    assert (features > 0).mean() > 0.3


@pytest.mark.parametrize("name, size, grid", [("resnet50", 64, (2, 2, 2048)),
                                              ("resnet101", 32, (1, 1, 2048))])
def test_any_input_size_from_32(name, size, grid):
    backbone = build_backbone(name, input_size=size)
    assert backbone.grid_shape == grid
    assert tuple(backbone(backbone.preprocess(_scene(50, 70)[None])).shape) == (1, *grid)
    with pytest.raises(ValueError, match="input_size >= 32"):
        build_backbone(name, input_size=31)


def test_random_weights_depend_only_on_the_seed():
    images = preprocess(_scene(64, 64)[None], BACKBONES["resnet50"], 64)

    def features(seed):
        backbone = build_backbone("resnet50", "random", input_size=64, seed=seed)
        assert backbone.weights_id == f"random:{seed}"
        return backbone(images).numpy()

    first, again, other = features(0), features(0), features(1)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


@pytest.mark.parametrize("name, keras_preprocess", [
    ("resnet50", keras.applications.resnet50.preprocess_input),
    ("resnet101", keras.applications.resnet.preprocess_input)])
def test_preprocessing_is_keras_resnet_preprocess_input(name, keras_preprocess):
    image = _scene(224, 224)  # at the input size resize() leaves the pixels alone
    ours = preprocess(image[None], BACKBONES[name], 224).numpy()
    theirs = keras_preprocess(image[None].astype(np.float32))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_an_earlier_stage_gives_a_14x14_grid():
    backbone = build_backbone("resnet50", input_size=224, layer="conv4_block6_out")
    assert backbone.grid_shape == (14, 14, 1024) and backbone.layer == "conv4_block6_out"
    np.testing.assert_allclose(np.array(backbone.cell_centres()["rows"]) * 224,
                               0.5 + 16 * np.arange(14), atol=1e-3)


def test_flops():
    # 2 x multiply-adds of the conv layers. He et al. 2016 count 3.8 and 7.6
    # GFLOPs (multiply-adds, with the classifier's 2 M) for ResNet-50 and -101.
    resnet50 = features_per_image_flops("resnet50")
    assert 7.5e9 < resnet50 < 7.9e9 and 14.9e9 < features_per_image_flops("resnet101") < 15.4e9
    assert features_per_image_flops("resnet50", 112) < resnet50 / 3.5
