"""Flickr8k with ImageNet SqueezeNet v1.1 features and the GRU decoder.

The real-data default, flickr8k_squeezenet.py, is the same run with the LSTM
decoder, which scored higher (pipelines/README.md, "Decoders on Flickr8k dev").

Command:   tfcaption run pipelines/flickr8k_squeezenet_gru.py
Data:      ../shared/flickr8k (official layout: Flicker8k_Dataset/, Flickr8k_text/);
           weights ../shared/weights/squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5
Runtime:   on the 2-core CPU: feature cache 1 min (7000 images); training: 8
           cross-entropy epochs x 470 steps of 64 captions (~23 min; ~0.37 s a
           step), then 1 SCST epoch of 501 steps of 12 images x 5 sampled captions
           plus their 5 references (~6 min; ~0.7 s a step), greedy validation
           after each epoch (~20 s); evaluation 1-2 min, export and report 1 min.
Scores:    dev split (1000 images), beam 3, coco-caption (pycocoevalcap, PTB
           tokenizer); the best cross-entropy checkpoint (epoch 6 of 8) and the
           SCST phases that follow it (one run each; the SCST rows start from
           that same cross-entropy checkpoint):

           phase                    BLEU-1 BLEU-2 BLEU-3 BLEU-4 METEOR ROUGE_L CIDEr-D
           cross-entropy            0.591  0.404  0.271  0.180  0.178  0.429   0.400
           SCST 1 ep., 1e-5, pure   0.620  0.430  0.290  0.192  0.182  0.442   0.438
           SCST 2 ep., 5e-5, +0.1 XE 0.614 0.429  0.291  0.195  0.185  0.441   0.447
           SCST 1 ep., 2e-5, +0.1 XE 0.611 0.427  0.293  0.199  0.184  0.442   0.452  (this file)

           Their captions (dev, beam 3), in the same order: words used 320, 220,
           285, 302; captions with a repeated word bigram 4.9%, 8.0%, 3.7%, 5.0%;
           mean length 9.04, 9.08, 8.90, 9.02 words.

Pure SCST on these features is fragile: at the usual rate 5e-5 the sampling
entropy fell from ~2 to 0.005 nats a word within one epoch and validation
CIDEr-D (greedy) fell from 0.398 to 0.326; at 1e-5 the first epoch raised it to
0.420, and the second, collapsing again (entropy 0.19), lowered it to 0.365,
while the vocabulary shrank by a third. With the references' cross-entropy in
the loss (train.rl_xent_weight=0.1, a "mixed objective") the entropy stays
near 2 nats a word even at 5e-5 (1.7 after two epochs), validation CIDEr-D
holds (0.431, 0.434 after epochs 1 and 2 at 5e-5; 0.430, 0.428 at 2e-5) and
the vocabulary and repeats stay near cross-entropy's. The best checkpoint is
chosen across both phases in any case.

The official test split is not in ../shared, so the dev split (1000 images) is
both the validation split (best checkpoint by CIDEr-D) and the scored split.
"""

import dataclasses
import os

from tfcaption.pipelines import load_pipeline

# The default pipeline's data, features and schedule (a fresh copy), the GRU.
LSTM = load_pipeline(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "flickr8k_squeezenet.py"))
CONFIG = dataclasses.replace(
    LSTM, name="flickr8k_squeezenet_gru",
    model=dataclasses.replace(LSTM.model, decoder="gru"),
    # Its rows were measured without scheduled sampling and with one SCST epoch.
    train=dataclasses.replace(LSTM.train, train_dir="runs/flickr8k_squeezenet_gru/train",
                              scheduled_sampling=0.0, rl_epochs=1),
    # Its rows were scored without the default file's length penalty.
    eval=dataclasses.replace(LSTM.eval, length_penalty=0.0,
                             out_dir="runs/flickr8k_squeezenet_gru/eval",
                             report_dir="runs/flickr8k_squeezenet_gru/report"))
