"""Flickr8k with ImageNet SqueezeNet v1.1 features: real photos on a 2-core CPU.

Command:   tfcaption run pipelines/flickr8k_squeezenet.py
Data:      ../shared/flickr8k (official layout: Flicker8k_Dataset/, Flickr8k_text/);
           weights ../shared/weights/squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5
Runtime:   on the 2-core CPU: feature cache 1 min (7000 images), training 23 min
           (8 epochs x 469 steps of 64 captions, greedy validation after each; 44 min
           when the machine was shared with other jobs), evaluation 1 min, export and
           report 1 min.
Scores:    dev split (1000 images), beam 3, coco-caption (pycocoevalcap, PTB tokenizer):
           BLEU-1 0.596  BLEU-2 0.411  BLEU-3 0.278  BLEU-4 0.185
           METEOR 0.182  ROUGE_L 0.437  CIDEr-D 0.423
           Training is seeded with op determinism on (train.deterministic). A second
           run from a fresh clone gave BLEU-4 0.1846, METEOR 0.1816, ROUGE_L 0.4358,
           CIDEr-D 0.4219: not bit-identical (thread scheduling on the CPU moves the
           last float bits), every metric within 0.002.

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
    model=ModelConfig(embedding_dim=256, units=512, attention_units=256, feature_dim=256,
                      dropout=0.3),
    train=TrainConfig(train_dir="runs/flickr8k_squeezenet/train", epochs=8,
                      learning_rate=1e-3, warmup_steps=300, attention_lambda=1.0,
                      val_images=0, patience=3, checkpoint_every=200, deterministic=True,
                      rl_epochs=6, rl_learning_rate=1e-5),
    eval=EvalConfig(split="val", beam_size=3, out_dir="runs/flickr8k_squeezenet/eval",
                    report_dir="runs/flickr8k_squeezenet/report"),
)
