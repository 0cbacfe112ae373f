"""The embedded default: the synthetic shapes world, end to end, no download.

Command:   tfcaption run pipelines/synthetic.py      (or: make demo)
Runtime:   to be measured (world + feature cache + training + export + report).
Scores:    to be measured.

Features come from a SqueezeNet with random (seeded) weights: no ImageNet
weights are needed, and random convolutions still keep colour and position,
which is all this world asks for. 160 px input gives a 9x9 attention grid at
half the cost of 224 px.
"""

from tfcaption.config import (DataConfig, EvalConfig, FeatureConfig, ModelConfig, PipelineConfig,
                              RunConfig, TrainConfig)

CONFIG = RunConfig(
    name="synthetic",
    data=DataConfig(source="synthetic", root="data/synthetic", synthetic_seed=0,
                    synthetic_counts=(3000, 300, 300), synthetic_image_size=128,
                    max_caption_words=16),
    features=FeatureConfig(backbone="squeezenet", weights="random", input_size=160,
                           cache_dir="runs/synthetic/features", batch_size=32,
                           shard_size=256),
    pipeline=PipelineConfig(batch_size=64, bucket_boundaries=(8, 10, 12)),
    model=ModelConfig(embedding_dim=128, units=256, attention_units=128, feature_dim=256,
                      dropout=0.1),
    train=TrainConfig(train_dir="runs/synthetic/train", epochs=8, max_minutes=5,
                      learning_rate=2e-3, warmup_steps=100, attention_lambda=0.1,
                      val_images=300, patience=3, checkpoint_every=200),
    eval=EvalConfig(split="test", beam_size=3, out_dir="runs/synthetic/eval",
                    report_dir="runs/synthetic/report", report_images=12),
)
