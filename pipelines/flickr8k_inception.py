"""Flickr8k with ImageNet InceptionV3 features (8x8x2048), the tutorial-standard setup.

Command:   tfcaption run pipelines/flickr8k_inception.py
Needs:     the Flickr8k folder (official layout) at data.root, and Keras' InceptionV3
           ImageNet weights (downloaded to ~/.keras/models/ on first use; offline,
           put inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 there or
           --set features.weights=/path/to/it.h5).
Runtime:   not run on this project's machines (no ImageNet InceptionV3 weights
           offline). Estimate on a 2-core CPU: ~15 min feature cache (InceptionV3
           is ~17x SqueezeNet's FLOPs), ~60 min training; minutes on one GPU.
Scores:    not measured here. Published soft-attention numbers on Flickr8k test
           (Xu et al. 2015, VGG features): BLEU-4 0.195, METEOR 0.189; expect
           BLEU-4 around 0.18-0.21 on dev with this config.

Scores the dev split; add the official test split file and set eval.split="test"
to report on test.
"""

from tfcaption.config import (DataConfig, EvalConfig, FeatureConfig, ModelConfig, PipelineConfig,
                              RunConfig, TrainConfig)

CONFIG = RunConfig(
    name="flickr8k_inception",
    data=DataConfig(source="flickr8k", root="../shared/flickr8k", val_split="dev",
                    min_count=5, max_caption_words=20),
    features=FeatureConfig(backbone="inception_v3", weights="imagenet",
                           cache_dir="runs/flickr8k_inception/features", batch_size=32,
                           shard_size=500),
    pipeline=PipelineConfig(batch_size=64),
    model=ModelConfig(embedding_dim=256, units=512, attention_units=256, feature_dim=256,
                      dropout=0.3),
    train=TrainConfig(train_dir="runs/flickr8k_inception/train", epochs=8, learning_rate=1e-3,
                      warmup_steps=300, attention_lambda=1.0, patience=3,
                      checkpoint_every=200, deterministic=True),
    eval=EvalConfig(split="val", beam_size=3, out_dir="runs/flickr8k_inception/eval",
                    report_dir="runs/flickr8k_inception/report"),
)
