"""Flickr8k with ImageNet SqueezeNet v1.1 features: real photos on a 2-core CPU.

The real-data default. Its decoder is Show, Attend and Tell's LSTM
(model.decoder=lstm), which scored higher than the GRU and the transformer
on this data (pipelines/README.md, "Decoders on Flickr8k dev"); flickr8k_squeezenet_gru.py and
flickr8k_squeezenet_transformer.py are the same run with the others.

Command:   tfcaption run pipelines/flickr8k_squeezenet.py
Data:      ../shared/flickr8k (official layout: Flicker8k_Dataset/, Flickr8k_text/);
           weights ../shared/weights/squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5
Runtime:   on the 2-core CPU, alone: feature cache 1 min (7000 images); training
           50 min: 21 min for 8 cross-entropy epochs x 470 steps of 64
           captions with scheduled sampling (p ramped 0 -> 0.25; ~0.3 s a
           step), greedy validation after each, then 3 SCST epochs of 501
           steps of 12 images x 5 sampled captions plus their 5 references,
           9.5 min each; evaluation, export and report 1-2 min (the cache
           already made).
Scores:    dev split (1000 images), beam 3 with length penalty 0.7 (the
           default here, eval.length_penalty), coco-caption (pycocoevalcap,
           PTB tokenizer); the best cross-entropy checkpoint (epoch 8 of 8,
           greedy validation CIDEr-D 0.430), then the SCST epochs that follow
           it (greedy validation 0.451, 0.455, 0.462; the last is the run's
           best checkpoint):

           phase          BLEU-1  BLEU-2  BLEU-3  BLEU-4  METEOR  ROUGE_L  CIDEr-D
           cross-entropy  0.612   0.426   0.291   0.198   0.188   0.445    0.451
           + SCST 1 epoch 0.616   0.432   0.298   0.204   0.190   0.446    0.475
           + SCST 3       0.617   0.432   0.298   0.204   0.190   0.446    0.482

           The same checkpoints without the length penalty
           (--set eval.length_penalty=0):
           cross-entropy  0.613   0.426   0.289   0.196   0.185   0.441    0.435
           + SCST 1 epoch 0.616   0.431   0.297   0.202   0.188   0.442    0.460
           + SCST 3       0.615   0.431   0.297   0.203   0.187   0.441    0.470

           Without scheduled sampling (train.scheduled_sampling=0, an earlier
           run, no length penalty, 1 SCST epoch):
           cross-entropy  0.607   0.421   0.287   0.194   0.183   0.440    0.433
           + SCST 1 epoch 0.615   0.430   0.294   0.199   0.186   0.443    0.458

           Their captions (dev, beam 3, length penalty 0.7), cross-entropy ->
           SCST 1 epoch -> 3: words used 324 -> 314 -> 293, captions with a
           repeated word bigram 8.7% -> 6.3% -> 6.6%, mean length 9.61 ->
           9.45 -> 9.44 words. The SCST rows come from one run whose SCST
           phase was extended from 1 to 3 epochs (`--set train.rl_epochs=3`
           on the finished run: it resumes at the step it stopped, as a fresh
           3-epoch run would be there). The GRU's rows (0.400 -> 0.452, no
           penalty) and why SCST here carries the references' cross-entropy
           (train.rl_xent_weight) are in flickr8k_squeezenet_gru.py. Cross-entropy
           is deterministic on one machine, and SCST since train.deterministic
           also turns Grappler off (the README's "A run killed at any point";
           these rows come from runs before that), not across machines: an earlier run
           of this file on another CPU gave 0.448 -> 0.461 without the
           penalty (its best cross-entropy epoch was 7).

The official test split is not in ../shared, so the dev split (1000 images) is
both the validation split (best checkpoint by CIDEr-D) and the scored split.
"""

from tfcaption.config import (DataConfig, EvalConfig, FeatureConfig, ModelConfig, PipelineConfig,
                              RunConfig, TrainConfig)

CONFIG = RunConfig(
    name="flickr8k_squeezenet",
    data=DataConfig(source="flickr8k", root="../shared/flickr8k", train_split="train",
                    val_split="dev", test_split="test", min_count=5, max_caption_words=20),
    features=FeatureConfig(
        backbone="squeezenet",
        weights="../shared/weights/squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5",
        input_size=224, cache_dir="runs/flickr8k_squeezenet/features", batch_size=32,
        shard_size=500),
    pipeline=PipelineConfig(batch_size=64),
    model=ModelConfig(decoder="lstm", embedding_dim=256, units=512, attention_units=256,
                      feature_dim=256, dropout=0.3),
    train=TrainConfig(train_dir="runs/flickr8k_squeezenet/train", epochs=8,
                      learning_rate=1e-3, warmup_steps=300, attention_lambda=1.0,
                      val_images=0, patience=3, checkpoint_every=200, deterministic=True,
                      rl_epochs=3, rl_learning_rate=2e-5, rl_xent_weight=0.1,
                      scheduled_sampling=0.25),
    # GNMT's length penalty (score / ((5 + length) / 6) ** 0.7): +0.015 dev
    # CIDEr-D on both phases' checkpoints, +0.013 on the GRU's (pipelines/README.md).
    eval=EvalConfig(split="val", beam_size=3, length_penalty=0.7,
                    out_dir="runs/flickr8k_squeezenet/eval",
                    report_dir="runs/flickr8k_squeezenet/report"),
)
