"""Flickr8k, SqueezeNet fine-tuned from fire6 with the LSTM decoder (issue 18).

The default pipeline (flickr8k_squeezenet.py) with the backbone's top trained:
the cache holds SqueezeNet's pool5 grid (13x13x256, fire6's input; half the
bytes of fire9's 13x13x512), and the decoder runs fire6..fire9 over it. After
the 8 cross-entropy epochs (the top frozen at its ImageNet weights: the same
function as the default pipeline's), 2 fine-tune epochs train the top at
train.backbone_learning_rate with the decoder, from the best cross-entropy
checkpoint; SCST follows with the top frozen again
(train.rl_backbone_learning_rate=0).

Command:   tfcaption run pipelines/flickr8k_squeezenet_finetune.py
Data:      as flickr8k_squeezenet.py.
Runtime:   RESULTS PENDING (see the closing note of issue 18).
Scores:    RESULTS PENDING.
"""

import dataclasses
import os

from tfcaption.pipelines import load_pipeline

# The default pipeline's data, model and schedule (a fresh copy).
FROZEN = load_pipeline(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "flickr8k_squeezenet.py"))
CONFIG = dataclasses.replace(
    FROZEN, name="flickr8k_squeezenet_finetune",
    features=dataclasses.replace(FROZEN.features, trainable_from="fire6",
                                 cache_dir="runs/flickr8k_squeezenet_finetune/features"),
    train=dataclasses.replace(FROZEN.train, train_dir="runs/flickr8k_squeezenet_finetune/train",
                              finetune_epochs=2, backbone_learning_rate=1e-4,
                              rl_backbone_learning_rate=0.0),
    eval=dataclasses.replace(FROZEN.eval, out_dir="runs/flickr8k_squeezenet_finetune/eval",
                             report_dir="runs/flickr8k_squeezenet_finetune/report"))
