"""Flickr8k, ImageNet SqueezeNet v1.1 features, the Transformer decoder.

Command:   tfcaption run pipelines/flickr8k_squeezenet_transformer.py
Data:      as flickr8k_squeezenet.py (../shared/flickr8k, ../shared/weights), whose
           feature cache it shares.
Model:     model.decoder=transformer: 2 pre-norm blocks (model.layers) of masked
           self-attention, cross-attention over the projected 13x13 grid (with
           its location embedding) and a feed-forward layer, 4 heads
           (model.heads), d_model = model.units = 512; the grid projected to
           feature_dim 256. The heatmaps are the last block's cross-attention,
           heads averaged. The same training recipe as flickr8k_squeezenet.py
           (8 cross-entropy epochs, then one SCST epoch with the mixed objective).
Runtime:   on the 2-core CPU, alone: 8 cross-entropy epochs x 470 steps (~0.4 s a
           step) with greedy validation after each, 28 min; 1 SCST epoch of
           501 steps (~2 s a step: 5 samples of 12 images drawn word by word
           from the cache), 18 min; training 46 min, `tfcaption run` 48 min
           with evaluation, export and report (the cache shared with
           flickr8k_squeezenet.py already made).
Scores:    dev split (1000 images), beam 3, coco-caption (pycocoevalcap, PTB
           tokenizer); the best cross-entropy checkpoint (epoch 7 of 8, greedy
           validation CIDEr-D 0.397) and the SCST epoch that follows it (0.421):

           phase          BLEU-1  BLEU-2  BLEU-3  BLEU-4  METEOR  ROUGE_L  CIDEr-D
           cross-entropy  0.595   0.404   0.270   0.179   0.178   0.423    0.404
           + SCST 1 epoch 0.607   0.418   0.286   0.193   0.181   0.428    0.446

           Their captions, cross-entropy -> SCST: words used 404 -> 372,
           captions with a repeated word bigram 2.3% -> 1.6%, mean length
           9.07 -> 8.90 words. Below the LSTM's 0.433 -> 0.458 on the same
           recipe (0.448 -> 0.461 with the scheduled sampling the transformer
           refuses; flickr8k_squeezenet.py) at 2.5x its weights (10.66 M): the
           LSTM stays the real-data default.
"""

import dataclasses
import os

from tfcaption.pipelines import load_pipeline

# The default pipeline's data, features and schedule (a fresh copy), the transformer.
LSTM = load_pipeline(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 "flickr8k_squeezenet.py"))

CONFIG = dataclasses.replace(
    LSTM, name="flickr8k_squeezenet_transformer",
    model=dataclasses.replace(LSTM.model, decoder="transformer", layers=2, heads=4),
    # Its rows: no scheduled sampling (which it refuses), one SCST epoch.
    train=dataclasses.replace(LSTM.train, train_dir="runs/flickr8k_squeezenet_transformer/train",
                              scheduled_sampling=0.0, rl_epochs=1),
    # Its rows were scored without the default file's length penalty.
    eval=dataclasses.replace(LSTM.eval, length_penalty=0.0,
                             out_dir="runs/flickr8k_squeezenet_transformer/eval",
                             report_dir="runs/flickr8k_squeezenet_transformer/report"))
