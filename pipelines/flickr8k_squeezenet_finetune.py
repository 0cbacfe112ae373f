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
Runtime:   on the 2-core CPU: feature cache 32 s (83 KB an image, against
           fire9's 165 KB); cross-entropy 8 epochs x 470 steps at ~0.46-0.50 s
           a step on a quiet machine (~3.7 min an epoch: the top's forward
           pass is in every step), fine-tuning ~0.7 s a step (~5.5-6 min an
           epoch), SCST 1 epoch of 501 steps (~10 min alone); ~50 min of
           training in all, against ~30-35 for flickr8k_squeezenet.py. The
           measured run shared the CPU (69 min).
Scores:    dev split, beam 3, coco-caption (pycocoevalcap, PTB tokenizer),
           the best checkpoint by greedy validation CIDEr-D:

           FINE-TUNING DID NOT HELP HERE. Greedy validation CIDEr-D after
           cross-entropy epoch 7 (the best) 0.422; after fine-tune epochs 1
           and 2 at backbone_learning_rate=1e-4: 0.417, 0.410; at 1e-5 (3
           epochs, from the same checkpoint): 0.425, 0.417, 0.418. So SCST started
           from the cross-entropy checkpoint (at 1e-4) or from fine-tune
           epoch 1 (at 1e-5, a second run from a copy of the first one's
           cross-entropy checkpoint, whose epoch 8 it redid to the same
           0.417), and both end below the frozen pipeline:

           run                         BLEU-1  BLEU-2  BLEU-3  BLEU-4  METEOR  ROUGE_L  CIDEr-D
           frozen (flickr8k_squeezenet.py)
             cross-entropy             0.615   0.431   0.296   0.202   0.185   0.443    0.448
             + SCST                    0.619   0.434   0.297   0.201   0.187   0.443    0.461
           fire6 trainable, 1e-4 (this file)
             + SCST (from XE epoch 7)  0.613   0.430   0.297   0.202   0.184   0.438    0.446
           fire6 trainable, 1e-5, 3 fine-tune epochs
             + SCST (from FT epoch 1)  0.606   0.424   0.292   0.198   0.184   0.437    0.451

           The training loss kept falling through fine-tuning (2.55 -> ~2.5
           a token) while validation fell: the top's 0.60 M weights over 6000
           images overfit, as cross-entropy itself had begun to (epoch 8
           below epoch 7). Issue 18's +0.03 is not met on this data.
           With mirrored images as augmentation and the top at 3e-5
           (pipelines/README.md) it was not met either: greedy validation
           0.424 -> 0.428 over 2 fine-tune epochs, dev 0.451 against the
           mirrored frozen run's 0.456.
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
                              rl_backbone_learning_rate=0.0,
                              # Its rows: one SCST epoch, no length penalty.
                              rl_epochs=1),
    eval=dataclasses.replace(FROZEN.eval, length_penalty=0.0,
                             out_dir="runs/flickr8k_squeezenet_finetune/eval",
                             report_dir="runs/flickr8k_squeezenet_finetune/report"))
