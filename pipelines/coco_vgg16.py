"""COCO 2014 captions (Karpathy split), VGG16 conv5_3 features (14x14x512), as in
Show, Attend and Tell.

Command:   tfcaption run pipelines/coco_vgg16.py
Needs:     internet for tensorflow-datasets' `coco_captions` (data.root is the tfds
           data_dir) and Keras' VGG16 ImageNet weights; ~13 GB of memory while the
           coco source extracts a split (see coco_inception.py).
Runtime:   not run on this project's machines (no download). Estimate: feature
           cache ~1.5 h on one GPU; training ~25 min per epoch on one V100-class
           GPU (196 locations instead of 64). For a TPU: --set train.strategy=tpu
           --set pipeline.fixed_shapes=true --set train.mixed_precision=mixed_bfloat16.
Scores:    not measured here. Published soft attention with VGG (Xu et al. 2015,
           Karpathy test): BLEU-4 0.243, METEOR 0.239.
"""

from tfcaption.config import (DataConfig, EvalConfig, FeatureConfig, ModelConfig, PipelineConfig,
                              RunConfig, TrainConfig)

CONFIG = RunConfig(
    name="coco_vgg16",
    data=DataConfig(source="coco", root="data/tensorflow_datasets", train_split="train",
                    val_split="val", test_split="test", min_count=5, max_caption_words=20),
    features=FeatureConfig(backbone="vgg16", weights="imagenet",
                           cache_dir="runs/coco_vgg16/features", batch_size=64,
                           shard_size=1000),
    pipeline=PipelineConfig(batch_size=128, cache_in_memory=False),
    model=ModelConfig(embedding_dim=512, units=512, attention_units=512, feature_dim=512,
                      dropout=0.5),
    train=TrainConfig(train_dir="runs/coco_vgg16/train", epochs=20, learning_rate=5e-4,
                      warmup_steps=1000, attention_lambda=1.0, patience=3,
                      checkpoint_every=1000, val_images=5000, log_every=100),
    eval=EvalConfig(split="test", beam_size=3, out_dir="runs/coco_vgg16/eval",
                    report_dir="runs/coco_vgg16/report"),
)
