"""Flickr8k with ImageNet SqueezeNet v1.1 features: real photos on a 2-core CPU.

The real-data default. Its decoder is Show, Attend and Tell's LSTM
(model.decoder=lstm), which scored higher than the GRU and the transformer
on this data (pipelines/README.md, "Decoders on Flickr8k dev"); flickr8k_squeezenet_gru.py and
flickr8k_squeezenet_transformer.py are the same run with the others.

Command:   tfcaption run pipelines/flickr8k_squeezenet.py
Data:      ../shared/flickr8k (official layout: Flicker8k_Dataset/, Flickr8k_text/);
           weights ../shared/weights/squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5
Runtime:   on the 2-core CPU: feature cache 1 min (7000 images); training: 8
           cross-entropy epochs x 470 steps of 64 captions with scheduled
           sampling (p ramped 0 -> 0.25), then 1 SCST epoch of 501 steps of 12
           images x 5 sampled captions plus their 5 references, greedy
           validation after each epoch. ~0.3 s a cross-entropy step alone
           (~20-25 min for the phase; the measured run was shared and paused,
           66 min wall clock), SCST 10 min alone; evaluation 1-2 min, export
           and report 1 min.
Scores:    dev split (1000 images), beam 3, coco-caption (pycocoevalcap, PTB
           tokenizer); the best cross-entropy checkpoint (epoch 7 of 8, greedy
           validation CIDEr-D 0.430) and the SCST epoch that follows it (0.448):

           phase          BLEU-1  BLEU-2  BLEU-3  BLEU-4  METEOR  ROUGE_L  CIDEr-D
           cross-entropy  0.615   0.431   0.296   0.202   0.185   0.443    0.448
           + SCST 1 epoch 0.619   0.434   0.297   0.201   0.187   0.443    0.461

           Without scheduled sampling (train.scheduled_sampling=0, one run):
           cross-entropy  0.607   0.421   0.287   0.194   0.183   0.440    0.433
           + SCST 1 epoch 0.615   0.430   0.294   0.199   0.186   0.443    0.458

           Their captions (dev, beam 3), cross-entropy -> SCST: words used
           302 -> 288 (without scheduled sampling 316 -> 295), captions with a
           repeated word bigram 6.7% -> 5.5% (6.5% -> 6.8%), mean length
           9.09 -> 9.10 words (9.17 -> 9.21). The GRU's rows (0.400 -> 0.452)
           and why SCST here carries the references' cross-entropy
           (train.rl_xent_weight) are in flickr8k_squeezenet_gru.py.

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
                      rl_epochs=1, rl_learning_rate=2e-5, rl_xent_weight=0.1,
                      scheduled_sampling=0.25),
    eval=EvalConfig(split="val", beam_size=3, out_dir="runs/flickr8k_squeezenet/eval",
                    report_dir="runs/flickr8k_squeezenet/report"),
)
