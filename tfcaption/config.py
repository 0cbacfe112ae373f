"""Plain dataclasses that configure a run; a pipeline file builds one `RunConfig`.

Every field can be overridden from the command line as `--set section.field=value`
(see `override`), so there is no second way to configure anything.
"""

from __future__ import annotations

import dataclasses
import typing


@dataclasses.dataclass
class DataConfig:
    """Where the examples come from and how their text becomes tokens.

    source: one of tfcaption.data.sources.SOURCES ("synthetic", "flickr8k",
        "karpathy", "coco", "jsonl", "csv").
    root: the dataset folder (Flickr8k's official layout, the synthetic world's
        folder, the image folder of a Karpathy/JSONL/CSV source, or the
        tensorflow-datasets data_dir for "coco").
    annotations: the captions file of "karpathy", "jsonl" and "csv" sources; may
        contain "{split}" (e.g. "captions_{split}.jsonl").
    splits: names of the train / validation / test splits in the source's own terms.
    """

    source: str = "synthetic"
    root: str = "data/synthetic"
    annotations: str = ""
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    # The synthetic world's size (ignored by other sources).
    synthetic_seed: int = 0
    synthetic_counts: tuple[int, int, int] = (3000, 300, 300)
    synthetic_image_size: int = 128
    # Vocabulary: words seen at least `min_count` times in the train split, at
    # most `max_vocab` of them (0 = no cap), plus <pad> <start> <end> <unk>.
    min_count: int = 1
    max_vocab: int = 0
    # Captions longer than this many words (before <start>/<end>) are cut.
    max_caption_words: int = 30


@dataclasses.dataclass
class FeatureConfig:
    """The backbone that turns images into feature grids, and the cache it fills.

    weights: "imagenet" (Keras cache), "random", or a path to an .h5 file.
    input_size: 0 = the backbone's native size; SqueezeNet accepts any size.
    """

    backbone: str = "squeezenet"
    weights: str = "random"
    input_size: int = 0
    layer: str = ""  # the layer attended over; "" = the backbone's usual grid
    # Fine-tuning (issue 18): the layer or block (fire6, mixed9, block5_conv1,
    # conv5_block2) from which the backbone trains with the decoder. The cache
    # then holds the grid below it; the decoder runs the rest. "" = all frozen.
    trainable_from: str = ""
    cache_dir: str = "runs/synthetic/features"
    batch_size: int = 32
    shard_size: int = 256
    seed: int = 0
    # Left-right mirrors as augmentation: the train split's cache also holds
    # the grid of each image's mirror (the backbone run on the flipped image,
    # which is not the flipped grid: its channels are not mirror-symmetric),
    # and each training row takes the mirror's grid with probability 1/2,
    # drawn from (seed, epoch, window) so a resumed run draws the same. Images
    # whose captions say "left" or "right" are never mirrored. Other splits
    # are cached as they are. Costs a second forward pass and twice the train
    # cache (on disk and, with cache_in_memory, in RAM). On Flickr8k with
    # SqueezeNet: dev CIDEr-D 0.481 after SCST against 0.482 without.
    mirror: bool = False


@dataclasses.dataclass
class PipelineConfig:
    """How the feature cache becomes training batches."""

    batch_size: int = 64  # the global batch, split among replicas
    # Rows are shuffled within windows of this many images (whole shards); an
    # epoch visits the windows in a seeded order. A streamed cache holds one
    # window in memory at a time.
    shuffle_window: int = 4096
    # Token lengths (with <start> and <end>) batches are padded to; one more at
    # max_caption_words + 2 is always added. Every batch has batch_size rows and
    # one of these lengths, so under XLA or on a TPU the train step traces (and
    # compiles) once per boundary; elsewhere once in all (training.make_step).
    # One per length where captions are common: on Flickr8k 98% of the padded
    # tokens are real (0.87 with (8, 12, 16, 20)), for 13 compiles instead of 5.
    bucket_boundaries: tuple[int, ...] = (8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 24)
    # One length for every batch (max_caption_words + 2): one trace in all,
    # what steps_per_execution > 1 on a TPU needs.
    fixed_shapes: bool = False
    # 0: rows are (image, caption) pairs, every caption once per epoch. K > 0:
    # each batch holds batch_size / K images with K of their captions each
    # (drawn afresh every epoch; repeated when an image has fewer), so the
    # decoder encodes each image once for K captions ("seq_per_img").
    captions_per_image: int = 0
    cache_in_memory: bool = True
    seed: int = 0  # the data order


@dataclasses.dataclass
class ModelConfig:
    """The decoder: its type and sizes.

    decoder: a name in tfcaption.models.build.DECODERS. A checkpoint restores
        only into the type it was trained with. What each reads:
      - "gru" (GRUDecoder, the default) and "lstm" (LSTMDecoder, Show, Attend
        and Tell's own): every field below but layers and heads.
      - "transformer" (TransformerDecoder): units (its d_model: the word
        embeddings and every block's width), layers, heads (units must be a
        multiple of heads), feature_dim, dropout, feature_kernel. It ignores
        embedding_dim, attention_units, gate, init_from_features and
        position_embedding (its location embedding is always on).
    layers, heads: the transformer's blocks and attention heads per block.
    """

    decoder: str = "gru"
    layers: int = 2
    heads: int = 4
    embedding_dim: int = 256
    units: int = 512
    attention_units: int = 512
    feature_dim: int = 512  # the projected feature size (the attention "values")
    dropout: float = 0.3
    gate: bool = True  # Show, Attend and Tell's beta = sigmoid(f(h)) gating scalar
    # Initial recurrent state from the mean feature (Show, Attend and Tell).
    # False: a learned constant, so every word must find its evidence by attending.
    init_from_features: bool = True
    position_embedding: bool = False  # a learned vector per grid location
    # 1: project each location alone; k > 1: a k x k convolution over the grid,
    # so the decoder can learn detectors that span neighbouring cells.
    feature_kernel: int = 1
    # The k x k convolution as a depthwise k x k then a 1x1 (SeparableConv2D):
    # ~1/3 of the full 3x3's time in the demo's step.
    feature_separable: bool = False


@dataclasses.dataclass
class TrainConfig:
    """The training loop: optimisation, distribution, checkpoints and validation.

    strategy: "default" (one device), "mirrored" (the GPUs of one machine),
        "multiworker" (MultiWorkerMirroredStrategy from TF_CONFIG) or "tpu".
    mixed_precision: "" (float32), "mixed_float16" (GPU; with loss scaling) or
        "mixed_bfloat16" (TPU, recent CPUs).
    """

    train_dir: str = "runs/synthetic/train"
    epochs: int = 20
    max_minutes: float = 0.0  # 0 = no limit; else stop (with a checkpoint) after this
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    min_learning_rate_ratio: float = 0.05  # cosine decay ends at this fraction
    clip_norm: float = 5.0
    attention_lambda: float = 1.0  # doubly stochastic attention regulariser
    strategy: str = "default"
    tpu: str = ""  # TPU name or address for strategy="tpu" ("" = the local TPU VM)
    mixed_precision: str = ""
    jit_compile: bool = False
    # Train steps run inside one tf.function call (Keras' meaning): fewer host
    # round trips on accelerators. Logging, checkpoints and validation keep
    # their step cadence (a call never crosses one of their boundaries).
    steps_per_execution: int = 1
    checkpoint_every: int = 500  # steps; an epoch's end always checkpoints
    keep_checkpoints: int = 3
    patience: int = 5  # epochs without a better validation CIDEr-D before stopping
    val_images: int = 0  # 0 = the whole validation split
    val_batch_size: int = 100
    log_every: int = 50
    seed: int = 0  # initial weights, dropout and data order
    # Fine-tuning the backbone's top (features.trainable_from): finetune_epochs
    # of cross-entropy after the first phase, from its best checkpoint, the top
    # trained at backbone_learning_rate (its own Adam), the rest going on at the
    # decoder's learning rate where its schedule ended. SCST then trains the
    # top at rl_backbone_learning_rate (0: leaves it as fine-tuning did).
    finetune_epochs: int = 0
    backbone_learning_rate: float = 1e-4
    rl_backbone_learning_rate: float = 0.0
    # Self-critical sequence training (tfcaption/scst.py): rl_epochs > 0 adds a
    # second phase that starts from the best cross-entropy checkpoint and
    # trains on the reward of sampled captions. Its batches hold rl_images
    # images (0: batch_size // rl_samples) with all their references.
    rl_epochs: int = 0
    rl_samples: int = 5  # captions sampled per image
    rl_baseline: str = "mean"  # "mean" of the image's other samples, or "greedy"
    rl_reward: str = "cider"  # "cider" (CIDEr-D), "bleu4" or "cider+bleu4"
    # Constant. 5e-5 (the usual SCST rate) collapsed the Flickr8k model's
    # sampling entropy (1.0 -> 0.005 nats a word in 450 steps) and lowered
    # validation CIDEr-D; 1e-5 raised it.
    rl_learning_rate: float = 1e-5
    rl_images: int = 0
    rl_references: int = 5  # references per image the reward compares against
    # <end> counts as a word in the reward's n-grams (captions and references):
    # a caption cut off mid-phrase ("a dog runs with a") then misses the
    # "... a <end>" n-grams a whole one earns, which plain CIDEr-D does not see.
    rl_end_word: bool = True
    # A cross-entropy term on the batch's references during SCST (a "mixed
    # objective", Paulus et al. 2018): loss = SCST + rl_xent_weight * the mean
    # per-caption cross entropy (the same term the first phase minimises). It
    # anchors the policy to the data and slows the entropy collapse pure SCST
    # shows on Flickr8k. 0: pure SCST.
    rl_xent_weight: float = 0.0
    # An entropy bonus: loss -= rl_entropy_weight * the policy's entropy (nats)
    # summed along each sampled caption, averaged over the samples. 0: none.
    rl_entropy_weight: float = 0.0
    # Scheduled sampling (Bengio et al. 2015) in the cross-entropy phase: each
    # input word after <start> is, with probability p, drawn from the model's
    # own previous distribution instead of taken from the reference. p ramps
    # linearly from 0 at the first step to this value at the phase's last.
    # Recurrent decoders only (a transformer reads all positions at once).
    scheduled_sampling: float = 0.0
    # Polyak averaging (tfcaption/averaging.py): an exponential moving average
    # of the weights, kept alongside them, with this decay per step (0: off;
    # e.g. 0.999 over thousands of steps). Validation, the best checkpoint and
    # everything after training use the average. ema_decay: cross-entropy
    # and fine-tuning; rl_ema_decay: SCST. Each phase starts its own average.
    ema_decay: float = 0.0
    rl_ema_decay: float = 0.0
    # Bit-for-bit repeatable runs (tf.config.experimental.enable_op_determinism,
    # and Grappler off: see training.make_trainer): a fresh run reproduces its
    # scores exactly, SCST included; costs a little speed on GPUs. Without it,
    # two demo runs made side by side on one CPU had the same weights after
    # cross-entropy and differed by 1e-4 after 250 SCST steps.
    deterministic: bool = False


@dataclasses.dataclass
class EvalConfig:
    """Scoring, export and the report: what `evaluate`, `export` and `report` do.

    split: the split role scored and shown ("val" or "test"); Flickr8k here has
        no test split, so its pipelines score "val" (the official dev split).
    beam_size: 1 = greedy; the same beam is fixed into the exported SavedModel.
    search: what the scored captions are: "beam" (beam_size and length_penalty;
        greedy at 1) or "sample" (one caption per image drawn by
        tfcaption.decoding.sample at decode.temperature, with decode.top_k,
        decode.top_p, decode.seed; decode.no_repeat_ngram holds for both).
    max_len: 0 = data.max_caption_words + 2 (the words, <start>, <end>).
    """

    split: str = "test"
    beam_size: int = 3
    length_penalty: float = 0.0
    search: str = "beam"
    max_len: int = 0
    batch_size: int = 64
    out_dir: str = "runs/synthetic/eval"  # results.json, metrics.json
    export_dir: str = "saved_models"  # saved_models/<name>/<version>/
    report_dir: str = "runs/synthetic/report"  # index.html (+ figures)
    report_images: int = 12


@dataclasses.dataclass
class DecodeConfig:
    """How captions are searched, beyond eval.beam_size and eval.length_penalty
    (see tfcaption.decoding).

    no_repeat_ngram: n > 0 forbids any n-gram twice in a caption (greedy, beam,
        sampling); 0 = off. 3 by default: on Flickr8k dev it changed CIDEr-D by
        -0.001 to +0.002 and removes loops ("a red shirt and a red shirt"), while
        it still allows the bigram repeats people write ("in a ... in a");
        pipelines/README.md has the table.
    temperature, top_k, top_p: sampling. temperature <= 0 is greedy; top_k 0 and
        top_p 1.0 keep every word.
    num_captions: captions per image when sampling (diverse beam search gives
        eval.beam_size of them).
    diverse_groups, diversity_penalty: diverse beam search (Vijayakumar et al.):
        groups > 1 split the beam into groups that are penalised for choosing the
        words earlier groups chose at the same step.
    seed: the sampling noise; the same seed gives the same captions.
    """

    no_repeat_ngram: int = 3
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_captions: int = 1
    diverse_groups: int = 1
    diversity_penalty: float = 0.0
    seed: int = 0


@dataclasses.dataclass
class RunConfig:
    name: str = "synthetic"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)


def _parse(value: str, kind: typing.Any):
    """Turns a command-line string into the type of the field it overrides."""
    if kind is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    origin = typing.get_origin(kind)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(kind)
        return tuple(_parse(v, inner) for v in value.split(",") if v != "")
    return kind(value)


def override(config, assignment: str):
    """Applies one "section.field=value" (or "field=value") override in place."""
    key, sep, value = assignment.partition("=")
    if not sep:
        raise ValueError(f"override {assignment!r} is not of the form section.field=value")
    *path, field = key.strip().split(".")
    target = config
    for part in path:
        if not hasattr(target, part):
            raise ValueError(f"override {assignment!r}: no section {part!r}")
        target = getattr(target, part)
    hints = typing.get_type_hints(type(target))
    if field not in hints:
        names = ", ".join(sorted(hints))
        raise ValueError(f"override {assignment!r}: no field {field!r} (fields: {names})")
    setattr(target, field, _parse(value.strip(), hints[field]))
    return config
