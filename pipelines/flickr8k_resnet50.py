"""Flickr8k with ImageNet ResNet-50 features (conv5, 7x7x2048 at 224 px).

Command:   tfcaption run pipelines/flickr8k_resnet50.py
Needs:     the Flickr8k folder (official layout) at data.root, and Keras' ResNet-50
           ImageNet weights (downloaded to ~/.keras/models/ on first use; offline,
           put resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 there or
           --set features.weights=/path/to/it.h5). ResNet-101: --set
           features.backbone=resnet101 (its file:
           resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5).
Runtime:   not run: this machine has no internet, so Keras cannot download the
           ImageNet weights. Estimate for the 2-core CPU: ResNet-50's forward
           pass costs ~74 core-ms an image (ResNet-101 ~130, InceptionV3 93,
           SqueezeNet 6.5; process CPU time, bench/extraction.py's docstring),
           so ~5 min for the feature cache (7000 images: train and dev); then
           training about as long as flickr8k_squeezenet.py's ~28 min (49
           cells of 2048 channels instead of 169 of 512: the projection to 256
           costs about the same, attention over fewer cells less).
Scores:    not measured here. Published: soft attention (Xu et al. 2015) on the
           Flickr8k test split with VGG conv5 features, BLEU-4 0.195, METEOR
           0.189. No trustworthy published number for soft attention over
           ResNet features on Flickr8k could be found offline, so none is
           quoted and no expectation is claimed. A lead, not read here: Katiyar
           & Borgohain, "Comparative Evaluation of CNN Architectures for Image
           Caption Generation", IJACSA 11(12), 2020, which evaluates 17 CNNs,
           ResNets among them, under a soft-attention decoder.

Scores the dev split (the official test split is not in ../shared); add it and
set eval.split="test" to report on test. The recipe is flickr8k_squeezenet.py's
(the same decoder, schedule and one SCST epoch at 1e-5), so the two runs
compare backbones, not recipes.
"""

from tfcaption.config import (DataConfig, EvalConfig, FeatureConfig, ModelConfig, PipelineConfig,
                              RunConfig, TrainConfig)

CONFIG = RunConfig(
    name="flickr8k_resnet50",
    data=DataConfig(source="flickr8k", root="../shared/flickr8k", train_split="train",
                    val_split="dev", test_split="test", min_count=5, max_caption_words=20),
    features=FeatureConfig(backbone="resnet50", weights="imagenet", input_size=224,
                           cache_dir="runs/flickr8k_resnet50/features", batch_size=32,
                           shard_size=500),
    pipeline=PipelineConfig(batch_size=64),
    model=ModelConfig(embedding_dim=256, units=512, attention_units=256, feature_dim=256,
                      dropout=0.3),
    train=TrainConfig(train_dir="runs/flickr8k_resnet50/train", epochs=8, learning_rate=1e-3,
                      warmup_steps=300, attention_lambda=1.0, val_images=0, patience=3,
                      checkpoint_every=200, deterministic=True, rl_epochs=1,
                      rl_learning_rate=1e-5),
    eval=EvalConfig(split="val", beam_size=3, out_dir="runs/flickr8k_resnet50/eval",
                    report_dir="runs/flickr8k_resnet50/report"),
)
