"""The embedded default: the synthetic shapes world, end to end, no download.

Command:   tfcaption run pipelines/synthetic.py      (or: make demo)
Runtime:   about 1 minute on a 2-core CPU so far (world rendering + feature cache).
Scores:    reported here once training lands (issue 3 onwards).

Features come from a SqueezeNet with random (seeded) weights: no ImageNet
weights are needed, and random convolutions still keep colour and position,
which is all this world asks for. 160 px input gives a 9x9 attention grid at
half the cost of 224 px.
"""

from tfcaption.config import DataConfig, FeatureConfig, PipelineConfig, RunConfig

CONFIG = RunConfig(
    name="synthetic",
    data=DataConfig(source="synthetic", root="data/synthetic", synthetic_seed=0,
                    synthetic_counts=(3000, 300, 300), synthetic_image_size=128),
    features=FeatureConfig(backbone="squeezenet", weights="random", input_size=160,
                           cache_dir="runs/synthetic/features", batch_size=32,
                           shard_size=256),
    pipeline=PipelineConfig(batch_size=64),
)
