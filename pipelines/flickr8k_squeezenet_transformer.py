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
Runtime:   not measured on a quiet machine: the one run this session shared the
           2 cores with three other jobs (~3 s a step, against ~1 s for the GRU
           and LSTM at the same time) and was stopped in its first epoch, so
           its time and scores are unknown.
Scores:    none yet. The GRU and LSTM rows are in pipelines/README.md ("Decoders
           on Flickr8k dev"); this file's row is missing there, and the synthetic
           world's comparison is its only measurement so far.
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
    train=dataclasses.replace(LSTM.train, train_dir="runs/flickr8k_squeezenet_transformer/train"),
    eval=dataclasses.replace(LSTM.eval, out_dir="runs/flickr8k_squeezenet_transformer/eval",
                             report_dir="runs/flickr8k_squeezenet_transformer/report"))
