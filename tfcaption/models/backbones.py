"""InceptionV3 / VGG16 / ResNet-50/101 / SqueezeNet: preprocessing and the feature grid.

A backbone maps a batch of preprocessed images (batch, size, size, 3) to a grid
of feature vectors (batch, h, w, channels); the decoder attends over its h*w
locations. `build_backbone` returns a `Backbone` holding the Keras model, the
preprocessing that belongs to it, and a `weights_id` for cache fingerprints.

Preprocessing squashes every image to size x size (bilinear, antialiased, aspect
ratio NOT preserved), so the grid always spans the whole image, whatever its
shape, and a cell's place in the input is its place in the original image in
relative coordinates. Where each cell looks (its receptive field's centre) is
`Backbone.cell_centres()`: heatmaps and the pointing game put each cell's
attention there (see grid_geometry).

`weights`:
  "random"    seeded He-uniform conv kernels (same seed, same features); He rather
              than Keras' Glorot default keeps the activation scale roughly
              constant through the ReLU stacks, so random grids are not ~0
              (ResNets: see _randomize for their residual branches).
  "imagenet"  InceptionV3 / VGG16 / ResNets: Keras' own loading (reads
              ~/.keras/models/ first, else downloads). SqueezeNet (not in
              keras.applications): $TFCAPTION_SQUEEZENET_WEIGHTS, then
              ~/.keras/models/<standard name>.
  a path      an .h5 weights file (Keras' layout for the keras.applications
              backbones; the old Keras per-layer-group layout for SqueezeNet,
              loaded by layer name).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Callable

import h5py
import keras
import numpy as np
import tensorflow as tf
from keras import layers

from tfcaption.models import grid_geometry

CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)
SQUEEZENET_ENV = "TFCAPTION_SQUEEZENET_WEIGHTS"
# SqueezeNet v1.1 fire2..fire9: (squeeze filters, expand filters per branch).
FIRE_MODULES = ((16, 64), (16, 64), (32, 128), (32, 128),
                (48, 192), (48, 192), (64, 256), (64, 256))


def _inception_v3(size: int, weights) -> keras.Model:
    return keras.applications.InceptionV3(include_top=False, weights=weights,
                                          input_shape=(size, size, 3))


def _vgg16(size: int, weights) -> keras.Model:
    # Show, Attend and Tell attends over conv5_3 (14x14 at 224 px), before the last pool.
    base = keras.applications.VGG16(include_top=False, weights=weights,
                                    input_shape=(size, size, 3))
    return keras.Model(base.input, base.get_layer("block5_conv3").output, name="vgg16_conv5_3")


def _resnet(depth: int, size: int, weights) -> keras.Model:
    """ResNet v1 (Keras' ResNet50 / ResNet101) up to conv5's last block: the
    res5c grid later attention captioners use in place of VGG's conv5, 7x7x2048
    at 224 px. Keras puts the stride-2 of conv3..conv5 on block 1's 1x1 convs
    (Caffe's layout), so cell (0, 0) is centred on pixel 0, not 16 (see
    grid_geometry); `layer` can pick conv4_block6_out (ResNet-50) or
    conv4_block23_out (ResNet-101) for a 14x14x1024 grid."""
    application = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101}[depth]
    return application(include_top=False, weights=weights, input_shape=(size, size, 3))


def _squeezenet(size: int, weights) -> keras.Model:
    """SqueezeNet v1.1 without classifier; `weights` is None or an .h5 path.

    Layer names are the .h5 file's with "/" -> "_" (Keras 3 forbids "/"):
    conv1, pool1, fire2_squeeze1x1, fire2_expand1x1, fire2_expand3x3, ...
    """
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Conv2D(64, 3, strides=2, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for index, (squeeze, expand) in enumerate(FIRE_MODULES, start=2):
        fire = f"fire{index}"
        s = layers.Conv2D(squeeze, 1, activation="relu", name=f"{fire}_squeeze1x1")(x)
        e1 = layers.Conv2D(expand, 1, activation="relu", name=f"{fire}_expand1x1")(s)
        e3 = layers.Conv2D(expand, 3, padding="same", activation="relu",
                           name=f"{fire}_expand3x3")(s)
        x = layers.Concatenate(name=f"{fire}_concat")([e1, e3])
        if index in (3, 5):
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{index}")(x)
    model = keras.Model(inputs, x, name="squeezenet_v1_1")
    if weights is not None:
        load_h5_by_layer_name(model, weights)
    return model


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """name; native input_size; grid (h, w, channels) at that size; preprocessing
    ("inception": [0, 255] -> [-1, 1]; "caffe": RGB -> BGR minus ImageNet means);
    min_size: smallest input giving a >= 1x1 grid; keras_file: the weights file's
    standard name in ~/.keras/models; architecture(size, weights) -> keras.Model."""

    name: str
    input_size: int
    grid: tuple[int, int, int]
    preprocessing: str
    min_size: int
    keras_file: str
    architecture: Callable[[int, object], keras.Model]


BACKBONES = {
    "inception_v3": BackboneSpec(
        "inception_v3", 299, (8, 8, 2048), "inception", 75,
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", _inception_v3),
    "vgg16": BackboneSpec(
        "vgg16", 224, (14, 14, 512), "caffe", 32,
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", _vgg16),
    # Keras' ResNet preprocess_input is caffe mode: BGR minus the same means.
    "resnet50": BackboneSpec(
        "resnet50", 224, (7, 7, 2048), "caffe", 32,
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", functools.partial(_resnet, 50)),
    "resnet101": BackboneSpec(
        "resnet101", 224, (7, 7, 2048), "caffe", 32,
        "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        functools.partial(_resnet, 101)),
    "squeezenet": BackboneSpec(
        "squeezenet", 224, (13, 13, 512), "caffe", 32,
        "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5", _squeezenet),
}


def resize(images, input_size: int) -> tf.Tensor:
    """RGB values in [0, 255] (uint8 or float), (h, w, 3|1) or (batch, h, w, 3|1),
    any h, w -> uint8 (…, input_size, input_size, 3): the image as the backbone sees it.

    Squashes rather than crops (see the module docstring for why heatmaps depend
    on it); bilinear with antialiasing, rounded back to 8 bits like any stored
    image, so that feature extraction can batch uint8 images (a quarter of the
    bytes of float32) and normalise whole batches in the backbone's graph.
    Pure TensorFlow (fine in tf.data.map and in a SavedModel).
    """
    x = tf.convert_to_tensor(images)
    if x.shape[-1] == 1:
        x = tf.image.grayscale_to_rgb(x)
    shape = x.shape
    # At scale 1 the antialiased filter is the identity: an image already at the
    # input size (pre-resized datasets, such as the Flickr8k copy in ../shared)
    # skips a full-image filter pass that costs a third of SqueezeNet's forward.
    same = tf.reduce_all(tf.equal(tf.shape(x)[-3:-1], input_size))

    def to_uint8(v):
        return v if v.dtype == tf.uint8 else tf.saturate_cast(tf.round(v), tf.uint8)

    x = tf.cond(same, lambda: to_uint8(x),
                lambda: to_uint8(tf.image.resize(tf.cast(x, tf.float32), (input_size, input_size),
                                                 method="bilinear", antialias=True)))
    x.set_shape(shape[:-3].concatenate([input_size, input_size, 3]))
    return x


def normalize(images, spec: BackboneSpec) -> tf.Tensor:
    """resize()'s uint8 images (any batch shape) -> float32 in the backbone's input
    range ("inception": [-1, 1]; "caffe": BGR minus the ImageNet means)."""
    x = tf.cast(images, tf.float32)
    if spec.preprocessing == "inception":
        return x / 127.5 - 1.0
    return tf.reverse(x, axis=[-1]) - tf.constant(CAFFE_BGR_MEANS, tf.float32)


def preprocess(images, spec: BackboneSpec, input_size: int) -> tf.Tensor:
    """resize, then normalize: any RGB image(s) -> float32 (…, input_size,
    input_size, 3) ready for the backbone."""
    return normalize(resize(images, input_size), spec)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A built backbone. `model` maps preprocessed (batch, s, s, 3) float32 images
    to (batch, h, w, c) features; an exporter must track `model` for its variables.

    With trainable_from (see split_at), `model` is the frozen bottom, whose
    output the cache holds (grid_shape is its shape), and `top` the rest, cut
    grid (batch, h, w, c) -> the attended grid (batch, h, w, top_channels),
    which the decoder runs and trains (models/projection.py)."""

    spec: BackboneSpec
    input_size: int
    grid_shape: tuple[int, int, int]
    model: keras.Model
    weights_id: str
    layer: str = ""
    trainable_from: str = ""
    top: keras.Model | None = None
    whole: keras.Model | None = None  # bottom + top, for where the cells look

    def preprocess(self, images) -> tf.Tensor:
        return preprocess(images, self.spec, self.input_size)

    def resize(self, images) -> tf.Tensor:
        return resize(images, self.input_size)

    def normalize(self, images) -> tf.Tensor:
        return normalize(images, self.spec)

    def cell_centres(self) -> dict:
        """{"rows": [...], "cols": [...]}: where each grid cell's receptive field is
        centred, as fractions of the image (see grid_geometry)."""
        rows, cols = grid_geometry.cell_centres(self.whole or self.model)
        return {"rows": [round(float(v), 6) for v in rows],
                "cols": [round(float(v), 6) for v in cols]}

    def __call__(self, preprocessed: tf.Tensor) -> tf.Tensor:
        """(batch, s, s, 3) preprocessed -> (batch, h, w, c) float32 features."""
        return tf.cast(self.model(preprocessed, training=False), tf.float32)


def build_backbone(name: str, weights: str = "random", input_size: int = 0,
                   seed: int = 0, layer: str = "", trainable_from: str = "") -> Backbone:
    """weights: "random" (seeded), "imagenet" or a path to an .h5 file;
    input_size: 0 = the backbone's native size; layer: the layer whose output is
    the grid ("" = the backbone's usual one). An earlier layer has a smaller
    receptive field: random SqueezeNet's last fire module sees ~207 px, more than
    a small image, so nothing there is local; its fire5 sees ~63 px, pool3 ~31 px.
    trainable_from: where to cut the backbone into a frozen bottom and a
    trainable top (split_at); "" = not cut."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    size = input_size or spec.input_size
    if size < spec.min_size:
        raise ValueError(f"{name} needs input_size >= {spec.min_size}, got {size}")
    if weights == "random":
        model = spec.architecture(size, None)
        _randomize(model, seed)
        weights_id = f"random:{seed}"
    elif weights == "imagenet" and name == "squeezenet":
        path = _find_squeezenet_weights(spec)
        model = spec.architecture(size, path)
        weights_id = f"imagenet:{file_md5(path)}"
    elif weights == "imagenet":
        try:
            model = spec.architecture(size, "imagenet")
        except Exception as err:  # Keras raises a bare Exception when a download fails
            raise RuntimeError(
                f"could not load Keras' ImageNet weights for {name}: put {spec.keras_file} "
                f"in {_keras_models_dir()} or pass its path as weights") from err
        cached = os.path.join(_keras_models_dir(), spec.keras_file)
        weights_id = f"imagenet:{file_md5(cached)}" if os.path.exists(cached) else "imagenet"
    else:
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"weights must be 'random', 'imagenet' or an .h5 file; no file {weights!r}")
        model = spec.architecture(size, weights)
        weights_id = file_md5(weights)
    if layer:
        try:
            output = model.get_layer(layer).output
        except ValueError:
            raise ValueError(f"{name} has no layer {layer!r}; its layers: "
                             f"{', '.join(l.name for l in model.layers)}") from None
        model = keras.Model(model.input, output, name=f"{model.name}_{layer}")
    if trainable_from:
        bottom, top = split_at(model, trainable_from)
        return Backbone(spec, size, _shape(bottom.output), bottom, weights_id, layer,
                        trainable_from, top, model)
    return Backbone(spec, size, _shape(model.output), model, weights_id, layer)


def _shape(tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape[1:])


def split_at(model: keras.Model, name: str) -> tuple[keras.Model, keras.Model]:
    """model -> (bottom, top), bottom(x) -> the grid where the block `name`
    starts, top(that grid) -> model(x); the two share model's layers (and weights).

    `name` is a layer (VGG16's block5_conv1, InceptionV3's mixed9) or a block of
    layers named name_* (SqueezeNet's fire6, ResNet's conv5_block1). The cut is
    the latest tensor every path from the image to the block passes through:
    the block's input where it has one (fire6: pool5; conv5_block1:
    conv4_block6_out), and for a block whose first layers are not named after
    it (InceptionV3's mixed9 names its last concatenation) the tensor its
    branches start from (mixed8).

    Refused: a name that is no layer or block, a cut past the model's output,
    and a top that changes the grid's height or width (ResNet's conv5_block1
    halves it): the cached grid and the attended grid are then different cells,
    which the heatmaps and the features signature could not tell apart; the
    error names the next block that would keep them.
    """
    names = [layer.name for layer in model.layers]
    block = [i for i, n in enumerate(names) if n == name] or \
        [i for i, n in enumerate(names) if n.startswith(name + "_")]
    if not block:
        raise ValueError(f"{model.name} has no layer or block {name!r} to train from; "
                         f"its layers: {', '.join(names[1:])}")
    first = block[0]
    for candidate in reversed(model.layers[1:first]):
        try:
            top = keras.Model(candidate.output, model.output, name=f"{model.name}_top")
        except ValueError:  # some path to the block goes around this tensor
            continue
        break
    else:
        candidate, top = None, None
    if top is None or model.layers[first] not in top.layers:
        raise ValueError(f"{model.name}: {name!r} has no single input grid to cut at")
    bottom = keras.Model(model.input, candidate.output, name=f"{model.name}_bottom")
    (h, w, _), (h2, w2, _) = _shape(candidate.output), _shape(model.output)
    if (h, w) != (h2, w2):
        # The first later block (named as ResNet's and SqueezeNet's layers are)
        # whose first layer already reads the output's grid size.
        starts = {}
        for layer in model.layers[first:]:
            starts.setdefault(layer.name.rsplit("_", 2)[0], layer)
        later = [block for block, layer in starts.items() if block != name
                 and not isinstance(layer.input, list) and _shape(layer.input)[:2] == (h2, w2)]
        hint = f"; train from a later block, such as {later[0]!r}" if later else ""
        raise ValueError(f"{model.name}: the top from {name!r} turns the {h}x{w} grid into "
                         f"{h2}x{w2}; the cached and the attended grid must have the same "
                         f"cells{hint}")
    return bottom, top


def cell_centres(name: str, input_size: int = 0, layer: str = "") -> dict:
    """Backbone.cell_centres() from the architecture alone (no weights loaded): for
    caches and SavedModels made before the centres were recorded."""
    return build_backbone(name, "random", input_size, layer=layer).cell_centres()


def load_h5_by_layer_name(model: keras.Model, path: str) -> None:
    """Sets every Conv2D of `model` from the old-Keras .h5 group of the same name
    ("_" -> "/" once: fire2_squeeze1x1 -> fire2/squeeze1x1). Inside a group the
    4-D array is the kernel and the 1-D array the bias, whatever their names.
    Raises ValueError naming the layer if any conv layer is missing or mismatched."""
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for layer in model.layers:
            if not isinstance(layer, layers.Conv2D):
                continue
            group_name = layer.name.replace("_", "/", 1)
            group = root.get(group_name)
            if not isinstance(group, h5py.Group):
                raise ValueError(f"{path}: no weights for layer {group_name!r}")
            arrays = []
            group.visititems(
                lambda _, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
            kernels = [a for a in arrays if a.ndim == 4]
            biases = [a for a in arrays if a.ndim == 1]
            if len(kernels) != 1 or len(biases) != 1:
                raise ValueError(f"{path}: layer {group_name!r} should hold one 4-D kernel "
                                 f"and one 1-D bias, found shapes {[a.shape for a in arrays]}")
            wanted = [tuple(w.shape) for w in layer.weights]
            found = [kernels[0].shape, biases[0].shape]
            if wanted != found:
                raise ValueError(f"{path}: layer {group_name!r} has shapes {found}, "
                                 f"the model needs {wanted}")
            layer.set_weights([kernels[0], biases[0]])


def _randomize(model: keras.Model, seed: int) -> None:
    """He-uniform conv kernels from one numpy generator: deterministic per seed and
    independent of Keras' global random state. Biases and batch-norm stay at their
    constant initial values.

    Residual nets: the conv ending each residual branch is then scaled by
    1 / sqrt(L), L the number of residual additions. Unscaled, every x + f(x)
    doubles the variance: random ResNet-50's conv5 grid reached ~3e5 on a
    224 px photo and ResNet-101's ~5e8, beyond float16's 65504: the feature
    cache would hold inf. Scaled, L additions multiply the variance by at most
    (1 + 1/L)^L < e (conv5 stays below ~1e3). Backbones without additions
    (InceptionV3, VGG16, SqueezeNet) are untouched by this.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            shape = tuple(layer.kernel.shape)
            limit = np.sqrt(6.0 / np.prod(shape[:-1]))
            layer.kernel.assign(rng.uniform(-limit, limit, shape).astype(np.float32))
    ends = _residual_branch_ends(model)
    for layer in ends:
        layer.kernel.assign(layer.kernel.numpy() / np.sqrt(len(ends)))


def _residual_branch_ends(model: keras.Model) -> list:
    """The Conv2D feeding (through batch-norm) the last input of each Add: Keras'
    ResNets add [shortcut, branch], so this is the branch, and a block 1's
    projection shortcut (also a conv) keeps its He scale."""
    producer = {id(layer.output): layer for layer in model.layers}
    ends = []
    for layer in model.layers:
        if isinstance(layer, layers.Add):
            source = producer.get(id(layer.input[-1]))
            while isinstance(source, layers.BatchNormalization):
                source = producer.get(id(source.input))
            if isinstance(source, layers.Conv2D):
                ends.append(source)
    return ends


def _keras_models_dir() -> str:
    return os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "models")


def _find_squeezenet_weights(spec: BackboneSpec) -> str:
    candidates = []
    if os.environ.get(SQUEEZENET_ENV):
        candidates.append(os.environ[SQUEEZENET_ENV])
    candidates.append(os.path.join(_keras_models_dir(), spec.keras_file))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"SqueezeNet ImageNet weights not found; looked in {candidates} "
        f"(set ${SQUEEZENET_ENV} or pass the .h5 path as weights)")


def file_md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def features_per_image_flops(name: str, input_size: int = 0) -> int:
    """Convolution FLOPs (2 x multiply-adds) of one image; pools, batch-norm and
    activations are left out (a few percent). Builds the architecture to count."""
    spec = BACKBONES[name]
    model = spec.architecture(input_size or spec.input_size, None)
    flops = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, _ = layer.output.shape
            flops += 2 * h * w * int(np.prod(layer.kernel.shape))
    return int(flops)
