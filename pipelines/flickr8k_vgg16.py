"""Flickr8k with ImageNet VGG16 conv5_3 features: the default recipe on the
features Show, Attend and Tell used.

flickr8k_squeezenet.py with the backbone changed and nothing else: the same
LSTM decoder, cross-entropy with scheduled sampling, 3 SCST epochs, beam 3 with
length penalty 0.7. VGG16's conv5_3 grid is 14x14x512 at 224 px (196 cells of
SqueezeNet's 512 channels, against its 169), so the decoder's sizes carry over
unchanged and the two runs compare features, not recipes. Published soft
attention with these features is where issue 16's target comes from (Flickr8k
test: BLEU-4 0.195-0.205, CIDEr 0.49-0.52); SqueezeNet's features stop at dev
CIDEr-D 0.48 under every setting tried (pipelines/README.md).

Command:   tfcaption run pipelines/flickr8k_vgg16.py
Needs:     the Flickr8k folder (official layout) at data.root, and Keras' VGG16
           ImageNet weights (downloaded to ~/.keras/models/ on first use; offline,
           put vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 there or
           --set features.weights=/path/to/it.h5).
Runtime:   not run: this machine has no internet, so Keras cannot download the
           weights. Estimate for the 2-core CPU: VGG16's forward pass costs ~260
           core-ms an image (measured with random weights, the same compute, on
           a loaded machine where SqueezeNet measured 7.8), so ~15 min for the
           feature cache (7000 images: train and dev); the cache is 196 KiB an
           image in float16 (SqueezeNet's 169 KiB). Training about 1.1x
           flickr8k_squeezenet.py's ~50 min: attention runs over 196 cells
           instead of 169, the projection and the rest of the step are the same
           size.
Scores:    not measured here (no weights). Published: soft attention (Xu et al.
           2015) on the Flickr8k test split with VGG conv5 features, BLEU-4
           0.195, METEOR 0.189, without SCST.

Scores the dev split (the official test split is not in ../shared); add it and
set eval.split="test" to report on test.
"""

import dataclasses
import os

from tfcaption.pipelines import load_pipeline

# The default pipeline's data, model and schedule (a fresh copy).
SQUEEZENET = load_pipeline(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "flickr8k_squeezenet.py"))
CONFIG = dataclasses.replace(
    SQUEEZENET, name="flickr8k_vgg16",
    features=dataclasses.replace(SQUEEZENET.features, backbone="vgg16", weights="imagenet",
                                 cache_dir="runs/flickr8k_vgg16/features"),
    train=dataclasses.replace(SQUEEZENET.train, train_dir="runs/flickr8k_vgg16/train"),
    eval=dataclasses.replace(SQUEEZENET.eval, out_dir="runs/flickr8k_vgg16/eval",
                             report_dir="runs/flickr8k_vgg16/report"))
