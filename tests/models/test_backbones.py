"""Backbones: SqueezeNet's weight loading by layer name, grid shapes, seeded random
weights, and preprocessing (eagerly and inside tf.data)."""

import os
import shutil

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcaption.models.backbones import (BACKBONES, CAFFE_BGR_MEANS, SQUEEZENET_ENV,
                                        build_backbone, features_per_image_flops,
                                        file_md5, preprocess)

SQUEEZENET_MD5 = "80b66c92d79d4310e07fb60a297bf0d1"  # /work/shared/weights/README.md


def _h5_arrays(path, group_name):
    """(kernel, bias) of one layer group of the old Keras layout."""
    arrays = []
    with h5py.File(path, "r") as f:
        f[group_name].visititems(
            lambda _, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    (kernel,) = [a for a in arrays if a.ndim == 4]
    (bias,) = [a for a in arrays if a.ndim == 1]
    return kernel, bias


def _scene(height=240, width=320):
    """A real-looking RGB uint8 picture: sky gradient, grass, a red ball, a dark box."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    sky = y < height * 0.6
    image[sky] = np.stack([90 + 60 * y / height, 150 + 60 * y / height,
                           230 + 0 * y], -1)[sky]
    image[~sky] = [60, 140, 50]
    image += np.random.default_rng(0).normal(0, 8, image.shape)  # texture
    ball = (y - height * 0.65) ** 2 + (x - width * 0.3) ** 2 < (height * 0.15) ** 2
    image[ball] = [200, 30, 30]
    image[int(height * .4):int(height * .8), int(width * .6):int(width * .85)] = [40, 35, 30]
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def squeezenet(squeezenet_h5):
    return build_backbone("squeezenet", weights=str(squeezenet_h5))


def test_squeezenet_loads_every_conv_layer_from_the_file(squeezenet, squeezenet_h5):
    convs = [layer for layer in squeezenet.model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 1 + 3 * 8
    for layer in convs:
        kernel, bias = _h5_arrays(squeezenet_h5, layer.name.replace("_", "/", 1))
        np.testing.assert_array_equal(layer.kernel.numpy(), kernel, err_msg=layer.name)
        np.testing.assert_array_equal(layer.bias.numpy(), bias, err_msg=layer.name)
    assert squeezenet.model.count_params() == 722_496
    assert squeezenet.grid_shape == (13, 13, 512) == BACKBONES["squeezenet"].grid
    assert squeezenet.input_size == 224
    assert squeezenet.weights_id == SQUEEZENET_MD5


def test_squeezenet_features_of_a_picture_are_post_relu_and_finite(squeezenet):
    features = squeezenet(squeezenet.preprocess(_scene()[None])).numpy()
    assert features.shape == (1, 13, 13, 512) and features.dtype == np.float32
    assert np.isfinite(features).all() and (features >= 0).all()
    assert (features > 0).mean() > 0.05  # trained filters respond, not all dead


@pytest.mark.parametrize("size, grid", [(224, (13, 13, 512)), (160, (9, 9, 512)),
                                        (64, (3, 3, 512))])
def test_squeezenet_is_fully_convolutional(size, grid):
    backbone = build_backbone("squeezenet", input_size=size)
    assert backbone.input_size == size and backbone.grid_shape == grid
    features = backbone(backbone.preprocess(np.zeros((2, 50, 70, 3), np.uint8)))
    assert tuple(features.shape) == (2, *grid)


@pytest.mark.parametrize("damage", ["rename", "reshape"])
def test_squeezenet_file_with_a_bad_layer_names_it(squeezenet_h5, tmp_path, damage):
    broken = tmp_path / "broken.h5"
    shutil.copy(squeezenet_h5, broken)
    with h5py.File(broken, "r+") as f:
        if damage == "rename":
            f.move("fire7/expand3x3", "fire7/expand3x3_old")
        else:
            group = f["fire7/expand3x3"]
            (name,) = [n for n, obj in group.items() if isinstance(obj, h5py.Dataset)]
            del group[name]
            group[name] = np.zeros((1, 1, 48, 192), np.float32)
    with pytest.raises(ValueError, match="fire7/expand3x3"):
        build_backbone("squeezenet", weights=str(broken))


def test_random_weights_depend_only_on_the_seed():
    images = preprocess(_scene(64, 64)[None], BACKBONES["squeezenet"], 64)

    def features(seed):
        backbone = build_backbone("squeezenet", weights="random", input_size=64, seed=seed)
        assert backbone.weights_id == f"random:{seed}"
        return backbone(images).numpy()

    first, again, other = features(0), features(0), features(1)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    assert np.abs(first).mean() > 1e-2  # He init: the random grid is not ~0


@pytest.mark.parametrize("name, grid", [("inception_v3", (8, 8, 2048)), ("vgg16", (14, 14, 512))])
def test_keras_backbones_with_random_weights_give_their_grid(name, grid):
    backbone = build_backbone(name, weights="random")
    assert backbone.grid_shape == grid == BACKBONES[name].grid
    assert backbone.input_size == BACKBONES[name].input_size
    features = backbone(backbone.preprocess(_scene(120, 90)[None]))
    assert tuple(features.shape) == (1, *grid)
    assert np.isfinite(features.numpy()).all()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_preprocess_is_the_same_eagerly_and_in_tf_data(name):
    spec = BACKBONES[name]
    images = [_scene(), _scene(1000, 700), np.zeros((40, 60, 3), np.uint8),
              tf.image.grayscale_to_rgb(tf.constant(_scene(80, 50)[..., :1])).numpy()]
    eager = [preprocess(image, spec, 96).numpy() for image in images]
    for image, out in zip(images, eager):
        assert out.shape == (96, 96, 3) and out.dtype == np.float32
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec((None, None, 3), tf.uint8))
    mapped = list(ds.map(lambda image: preprocess(image, spec, 96)).as_numpy_iterator())
    for a, b in zip(eager, mapped):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_an_image_at_the_input_size_skips_the_resize_and_gets_the_same_pixels():
    spec = BACKBONES["squeezenet"]
    image = _scene(96, 96)
    resized = tf.image.resize(tf.cast(image, tf.float32), (96, 96), method="bilinear",
                              antialias=True)
    expected = tf.reverse(resized, axis=[-1]) - tf.constant(CAFFE_BGR_MEANS, tf.float32)
    np.testing.assert_allclose(preprocess(image, spec, 96).numpy(), expected.numpy(), atol=1e-3)
    batch = preprocess(np.stack([image, image]), spec, 96)
    assert batch.shape == (2, 96, 96, 3)


def test_preprocess_graph_has_no_python_ops():
    spec = BACKBONES["squeezenet"]
    fn = tf.function(lambda x: preprocess(x, spec, 64))
    graph = fn.get_concrete_function(tf.TensorSpec((None, None, None, 3), tf.uint8)).graph
    assert not {op.type for op in graph.get_operations()} & {"PyFunc", "EagerPyFunc"}


def test_preprocess_batches_floats_and_grayscale():
    spec = BACKBONES["inception_v3"]
    batch = preprocess(np.full((2, 30, 40, 3), 255.0, np.float32), spec, 75)
    assert batch.shape == (2, 75, 75, 3)
    np.testing.assert_allclose(batch.numpy(), 1.0, atol=1e-5)
    gray = preprocess(np.zeros((30, 40, 1), np.uint8), spec, 75)
    assert gray.shape == (75, 75, 3)
    np.testing.assert_allclose(gray.numpy(), -1.0, atol=1e-5)


def test_caffe_preprocessing_is_bgr_minus_means_and_inception_is_minus1_to_1():
    red = np.zeros((50, 40, 3), np.uint8)
    red[..., 0] = 255
    caffe = preprocess(red, BACKBONES["squeezenet"], 32).numpy()
    b, g, r = CAFFE_BGR_MEANS
    np.testing.assert_allclose(caffe[5, 5], [0 - b, 0 - g, 255 - r], atol=1e-3)
    inception = preprocess(red, BACKBONES["inception_v3"], 32).numpy()
    np.testing.assert_allclose(inception[5, 5], [1, -1, -1], atol=1e-5)


def test_squeezenet_imagenet_is_found_through_the_environment(squeezenet_h5, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(SQUEEZENET_ENV, str(squeezenet_h5))
    backbone = build_backbone("squeezenet", weights="imagenet", input_size=64)
    assert backbone.weights_id == f"imagenet:{SQUEEZENET_MD5}"
    assert backbone.grid_shape == (3, 3, 512)


def test_squeezenet_imagenet_missing_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(SQUEEZENET_ENV, str(tmp_path / "nowhere.h5"))
    with pytest.raises(FileNotFoundError) as err:
        build_backbone("squeezenet", weights="imagenet")
    message = str(err.value)
    assert "nowhere.h5" in message and os.path.join("keras", "models") in message
    assert SQUEEZENET_ENV in message and "path" in message


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="squeezenet"):
        build_backbone("resnet")
    with pytest.raises(ValueError, match="input_size"):
        build_backbone("squeezenet", input_size=16)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        build_backbone("squeezenet", weights=str(tmp_path / "missing.h5"))


def test_an_earlier_layer_gives_a_local_grid():
    backbone = build_backbone("squeezenet", input_size=160, layer="pool5")
    assert backbone.grid_shape == (9, 9, 256) and backbone.layer == "pool5"
    image = np.zeros((1, 160, 160, 3), np.float32)
    assert backbone(image).shape == (1, 9, 9, 256)
    with pytest.raises(ValueError, match="no layer 'conv10'.*fire9_concat"):
        build_backbone("squeezenet", layer="conv10")


def test_flops_of_squeezenet():
    # 2 x multiply-adds of the conv layers; v1.1 without conv10 is ~0.26 GMAC.
    assert 0.50e9 < features_per_image_flops("squeezenet") < 0.55e9
    assert features_per_image_flops("squeezenet", 112) < features_per_image_flops("squeezenet") / 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception_v3", "vgg16", "resnet50", "resnet101"])
def test_keras_imagenet_weights_when_cached(name):
    cached = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")),
                          "models", BACKBONES[name].keras_file)
    if not os.path.exists(cached):
        pytest.skip(f"{cached} absent (no internet to download it)")
    backbone = build_backbone(name, weights="imagenet")
    features = backbone(backbone.preprocess(_scene()[None])).numpy()
    assert features.shape == (1, *BACKBONES[name].grid) and np.isfinite(features).all()
    assert (features >= 0).all()  # every grid is post-ReLU
    assert backbone.weights_id == "imagenet:" + file_md5(cached)
    from_path = build_backbone(name, weights=cached)  # the path form loads the same weights
    np.testing.assert_array_equal(from_path.model.weights[0].numpy(),
                                  backbone.model.weights[0].numpy())


# Not ResNet-101: it loads through the same Keras call, and its file is 170 MB.
@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_keras_backbone_weights_from_a_path(tmp_path, name):
    random = build_backbone(name, weights="random", input_size=32, seed=3)
    path = str(tmp_path / f"{name}.weights.h5")
    random.model.save_weights(path)
    loaded = build_backbone(name, weights=path, input_size=32)
    assert loaded.weights_id == file_md5(path)
    images = loaded.preprocess(_scene(40, 40)[None])
    np.testing.assert_array_equal(loaded(images).numpy(), random(images).numpy())
