"""COCO 2014 captions (Karpathy split) through tensorflow-datasets, InceptionV3 features.

Command:   tfcaption run pipelines/coco_inception.py
Needs:     internet for tensorflow-datasets' `coco_captions` (~20 GB download into
           data.root, the tfds data_dir) and Keras' InceptionV3 ImageNet weights.
           The coco source holds a split's JPEG bytes in memory while it
           extracts (~13 GB for train + restval): use a machine with 32 GB, or the
           `karpathy` source over COCO's image folders, which streams from disk.
Runtime:   not run on this project's machines (no download). Estimate: feature
           cache ~1 h on one GPU (123k images; days on a 2-core CPU); training
           ~20 min per epoch on one V100-class GPU, 4x faster with --set
           train.strategy=mirrored on 4 GPUs. The cache (64x2048 float16 per
           image, ~30 GB) is streamed from disk, not held in memory.
Scores:    not measured here. Published soft attention (Xu et al. 2015) on the
           Karpathy test split: BLEU-4 0.243, METEOR 0.239; with a GRU and beam 3
           expect BLEU-4 ~0.25-0.28, CIDEr-D ~0.8-0.9.
"""

from tfcaption.config import (DataConfig, EvalConfig, FeatureConfig, ModelConfig, PipelineConfig,
                              RunConfig, TrainConfig)

CONFIG = RunConfig(
    name="coco_inception",
    data=DataConfig(source="coco", root="data/tensorflow_datasets", train_split="train",
                    val_split="val", test_split="test", min_count=5, max_caption_words=20),
    features=FeatureConfig(backbone="inception_v3", weights="imagenet",
                           cache_dir="runs/coco_inception/features", batch_size=64,
                           shard_size=1000),
    pipeline=PipelineConfig(batch_size=128, cache_in_memory=False),
    model=ModelConfig(embedding_dim=512, units=512, attention_units=512, feature_dim=512,
                      dropout=0.5),
    train=TrainConfig(train_dir="runs/coco_inception/train", epochs=20, learning_rate=5e-4,
                      warmup_steps=1000, attention_lambda=1.0, patience=3,
                      checkpoint_every=1000, val_images=5000, log_every=100),
    eval=EvalConfig(split="test", beam_size=3, out_dir="runs/coco_inception/eval",
                    report_dir="runs/coco_inception/report"),
)
