"""The custom training loop: a tf.function step run through `strategy.run`.

One process per worker runs `train(config)`. The data order is a pure function
of (seed, step): the dataset repeats forever with seeded shuffles, and a run
that resumes skips the batches it has already trained on. So a run killed at
any point resumes from its last checkpoint and ends at the same step count, and
every worker of a multi-worker run takes the same number of steps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time

import keras
import tensorflow as tf

from tfcaption import decoding, io, metrics
from tfcaption.config import RunConfig
from tfcaption.data import pipeline, text
from tfcaption.data.features import load_manifest
from tfcaption.models.captioner import caption_loss
from tfcaption.checkpoints import restore_checked
from tfcaption.models.build import build_decoder
from tfcaption.models.decoder import GRUDecoder

log = logging.getLogger("tfcaption.train")


class NonFiniteLoss(RuntimeError):
    pass


def _tpu_strategy(cfg):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=cfg.tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


STRATEGIES = {
    "default": lambda cfg: tf.distribute.get_strategy(),
    "mirrored": lambda cfg: tf.distribute.MirroredStrategy(),
    # Reads the cluster from the TF_CONFIG environment variable.
    "multiworker": lambda cfg: tf.distribute.MultiWorkerMirroredStrategy(),
    "tpu": _tpu_strategy,
}


def make_strategy(cfg) -> tf.distribute.Strategy:
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"train.strategy {cfg.strategy!r}: choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[cfg.strategy](cfg)


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to `peak * floor` at `total` steps."""

    def __init__(self, peak: float, warmup: int, total: int, floor: float):
        self.peak, self.warmup, self.total, self.floor = peak, warmup, max(total, 1), floor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup, 1)
        progress = tf.clip_by_value((step - self.warmup) / max(self.total - self.warmup, 1),
                                    0.0, 1.0)
        cosine = self.floor + (1.0 - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup, warm, self.peak * cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total,
                "floor": self.floor}


def steps_per_epoch(config: RunConfig, manifest: dict) -> int:
    """An epoch is every caption once, or every image once with K captions."""
    k = config.pipeline.captions_per_image
    rows = manifest["count"] * k if k else manifest["captions"]
    return max(1, math.ceil(rows / config.pipeline.batch_size))


@dataclasses.dataclass
class Trainer:
    """Everything a run holds: strategy, model, optimizer, checkpoints, summaries."""

    config: RunConfig
    strategy: tf.distribute.Strategy
    tokenizer: text.Tokenizer
    decoder: GRUDecoder
    optimizer: keras.optimizers.Optimizer
    checkpoint: tf.train.Checkpoint
    latest: tf.train.CheckpointManager
    best: tf.train.CheckpointManager
    state: dict  # step, best_metric, bad_epochs as tf.Variables
    steps_per_epoch: int
    total_steps: int
    # Validation's decode function, traced once per run rather than once per epoch.
    greedy_fns: dict = dataclasses.field(default_factory=dict)


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker"
                                             and resolver.task_id == 0)


def _checkpoint_dir(path: str, strategy) -> str:
    # Non-chief workers must save too (the save is collective) but elsewhere.
    return path if _is_chief(strategy) else tempfile.mkdtemp(prefix="tfcaption-worker-")


def make_trainer(config: RunConfig, strategy: tf.distribute.Strategy | None = None) -> Trainer:
    # Seeded before any variable exists, so the initial weights and dropout
    # masks are a function of train.seed alone.
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = strategy or make_strategy(config.train)
    k, replicas = config.pipeline.captions_per_image, strategy.num_replicas_in_sync
    if k and (config.pipeline.batch_size // k) % replicas:
        # tf.distribute splits images and caption rows separately: each replica
        # must get whole images, or its captions would belong to other images.
        raise ValueError(f"pipeline.batch_size / captions_per_image = "
                         f"{config.pipeline.batch_size // k} images must divide among "
                         f"{replicas} replicas")
    cache = config.features.cache_dir
    manifest = load_manifest(cache, "train")
    tokenizer = text.Tokenizer(pipeline.vocabulary_path(manifest), config.data.max_caption_words)
    per_epoch = steps_per_epoch(config, manifest)
    total = per_epoch * config.train.epochs
    tc = config.train
    with strategy.scope():
        decoder = build_decoder(config, tokenizer.vocab_size, manifest["grid_shape"])
        schedule = WarmupCosine(tc.learning_rate, tc.warmup_steps, total,
                                tc.min_learning_rate_ratio)
        optimizer = keras.optimizers.Adam(schedule, global_clipnorm=tc.clip_norm or None)
        if tc.mixed_precision == "mixed_float16":
            # float16 gradients underflow without it; bfloat16 has float32's range.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(decoder.trainable_variables)
        state = {"step": tf.Variable(0, dtype=tf.int64, trainable=False, name="step"),
                 "best_metric": tf.Variable(-1.0, trainable=False, name="best_metric"),
                 "bad_epochs": tf.Variable(0, trainable=False, name="bad_epochs")}
    checkpoint = tf.train.Checkpoint(decoder=decoder, optimizer=optimizer, **state)
    latest = tf.train.CheckpointManager(
        checkpoint, _checkpoint_dir(os.path.join(tc.train_dir, "latest"), strategy),
        max_to_keep=tc.keep_checkpoints)
    best = tf.train.CheckpointManager(
        checkpoint, _checkpoint_dir(os.path.join(tc.train_dir, "best"), strategy), max_to_keep=1)
    return Trainer(config, strategy, tokenizer, decoder, optimizer, checkpoint, latest, best,
                   state, per_epoch, total)


def make_step(trainer: Trainer):
    """The distributed train step: batch -> summed (loss, stats, grad norm)."""
    tc = trainer.config.train
    decoder, optimizer, strategy = trainer.decoder, trainer.optimizer, trainer.strategy
    global_batch = trainer.config.pipeline.batch_size
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def gradients(features, tokens):
        with tf.GradientTape() as tape:
            loss, stats = caption_loss(decoder, features, tokens, global_batch,
                                       tc.attention_lambda, training=True)
            target = optimizer.scale_loss(loss) if scaled else loss
        return loss, stats, tape.gradient(target, decoder.trainable_variables)

    # XLA compiles the model's forward and backward pass; the optimizer update
    # stays outside, where tf.distribute does its cross-replica reduction.
    compiled = tf.function(gradients, jit_compile=tc.jit_compile)

    def replica_step(features, tokens):
        loss, stats, grads = compiled(features, tokens)
        # A LossScaleOptimizer takes the scaled gradients and unscales them itself.
        optimizer.apply_gradients(zip(grads, decoder.trainable_variables))
        norm = tf.linalg.global_norm(grads)
        return loss, stats, norm / optimizer.dynamic_scale if scaled else norm

    @tf.function
    def step(features, tokens):
        loss, stats, norm = strategy.run(replica_step, args=(features, tokens))
        total = lambda x: strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None)  # noqa: E731
        return (total(loss), {k: total(v) for k, v in stats.items()},
                strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None))

    return step


def greedy_captions(trainer: Trainer, split_role: str, limit: int = 0,
                    max_len: int | None = None) -> dict[str, str]:
    """image_id -> greedy caption, free-running (what validation scores)."""
    max_len = max_len or pipeline.max_tokens(trainer.config.data.max_caption_words)
    decoder, tokenizer = trainer.decoder, trainer.tokenizer
    if max_len not in trainer.greedy_fns:
        @tf.function(reduce_retracing=True)  # the short last batch reuses the trace
        def decode(feats):
            tokens, _, _, _ = decoding.greedy(decoder, feats, max_len)
            return tokenizer.detokenize(tokens)
        trainer.greedy_fns[max_len] = decode
    decode = trainer.greedy_fns[max_len]

    out: dict[str, str] = {}
    ds = pipeline.image_dataset(trainer.config.features.cache_dir, split_role,
                                trainer.config.train.val_batch_size)
    for batch in ds:
        for i, c in zip(batch["image_id"].numpy(), decode(batch["features"]).numpy()):
            out[i.decode()] = c.decode("utf-8")
        if limit and len(out) >= limit:
            break
    return out


def validate(trainer: Trainer) -> dict[str, float]:
    """Greedy decoding on the validation split, scored with BLEU-4 and CIDEr-D."""
    refs = pipeline.references(trainer.config.features.cache_dir, "val")
    cands = greedy_captions(trainer, "val", trainer.config.train.val_images)
    scores = metrics.score(cands, {i: refs[i] for i in cands}, metrics=("BLEU", "CIDEr-D"),
                           tokenize="simple")
    samples = list(cands.items())[:3]
    return {"BLEU-4": scores["BLEU-4"], "CIDEr-D": scores["CIDEr-D"], "samples": samples}


def train(config: RunConfig, strategy: tf.distribute.Strategy | None = None,
          progress: bool = True) -> dict:
    """Trains until `epochs` are done, early stopping, or `max_minutes`; resumes
    from the latest checkpoint in train_dir. Returns a summary dict."""
    trainer = make_trainer(config, strategy)
    tc = config.train
    step_var = trainer.state["step"]
    restored = trainer.latest.latest_checkpoint
    if restored:
        restore_checked(trainer.latest.checkpoint, restored)
        log.info("resumed from %s at step %d", restored, int(step_var.numpy()))
    start_step = int(step_var.numpy())
    finished = _read_finished(tc.train_dir)
    if start_step >= trainer.total_steps or (
            finished and finished["total_steps"] == trainer.total_steps):
        # An early-stopped or time-limited run is finished too: running the
        # pipeline again must not train it further.
        log.info("training already finished at step %d", start_step)
        return _summary(trainer, stopped=finished["stopped"] if finished else "complete")

    ds = pipeline.training_dataset(config.features.cache_dir, trainer.tokenizer, config.pipeline,
                                   repeat=True).skip(start_step)
    dist = iter(trainer.strategy.experimental_distribute_dataset(ds))
    step_fn = make_step(trainer)
    # One set of curves: other workers log nothing (they share train_dir).
    writer = tf.summary.create_file_writer(os.path.join(tc.train_dir, "logs")) \
        if _is_chief(trainer.strategy) else tf.summary.create_noop_writer()
    begun, stopped = time.perf_counter(), "complete"
    tokens_seen, window_start = 0.0, time.perf_counter()
    bar = None
    step = start_step
    while step < trainer.total_steps:
        epoch, in_epoch = divmod(step, trainer.steps_per_epoch)
        if in_epoch == 0 or bar is None:
            bar = keras.utils.Progbar(trainer.steps_per_epoch, verbose=1 if progress else 0,
                                      stateful_metrics=["loss", "tokens/s", "lr"])
            if progress:
                print(f"epoch {epoch + 1}/{tc.epochs}")
        features, tokens = next(dist)
        loss, stats, norm = step_fn(features, tokens)
        loss = float(loss)
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"loss became {loss} at step {step + 1}; the last good checkpoint "
                f"({trainer.latest.latest_checkpoint}) is untouched. Lower "
                "train.learning_rate or train.clip_norm, or check the features for NaNs")
        step += 1
        step_var.assign(step)
        tokens_seen += float(stats["tokens"])
        per_token = float(stats["xent"]) / max(float(stats["tokens"]), 1.0)
        rate = tokens_seen / (time.perf_counter() - window_start)
        lr = float(trainer.optimizer.learning_rate)
        bar.update(in_epoch + 1, [("loss", per_token), ("tokens/s", rate), ("lr", lr)])
        if step % tc.log_every == 0:
            with writer.as_default(step=step):
                tf.summary.scalar("loss/cross_entropy_per_token", per_token)
                tf.summary.scalar("loss/regulariser", float(stats["regulariser"]) /
                                  max(float(stats["captions"]), 1.0))
                tf.summary.scalar("loss/total", loss)
                tf.summary.scalar("learning_rate", lr)
                tf.summary.scalar("gradient_norm", float(norm))
                tf.summary.scalar("tokens_per_second", rate)
            tokens_seen, window_start = 0.0, time.perf_counter()
        out_of_time = tc.max_minutes and time.perf_counter() - begun > tc.max_minutes * 60
        if step % trainer.steps_per_epoch == 0:
            if _end_of_epoch(trainer, writer, step, progress):
                stopped = "early stopping"
                break
        elif step % tc.checkpoint_every == 0 or out_of_time:
            trainer.latest.save(checkpoint_number=step)
        if out_of_time:
            stopped = f"time limit ({tc.max_minutes} min)"
            break
    writer.flush()
    summary = _summary(trainer, stopped=stopped)
    if _is_chief(trainer.strategy):
        io.write_json(os.path.join(tc.train_dir, FINISHED), summary)
    return summary


FINISHED = "finished.json"


def _read_finished(train_dir: str) -> dict | None:
    """The summary a run leaves when it ends on its own (not when killed)."""
    path = os.path.join(train_dir, FINISHED)
    return io.read_json(path) if io.exists(path) else None


def _end_of_epoch(trainer: Trainer, writer, step: int, progress: bool) -> bool:
    """Validates, keeps the best checkpoint; True when early stopping says stop."""
    scores = validate(trainer)
    epoch = step // trainer.steps_per_epoch
    with writer.as_default(step=step):
        tf.summary.scalar("val/CIDEr-D", scores["CIDEr-D"])
        tf.summary.scalar("val/BLEU-4", scores["BLEU-4"])
        tf.summary.text("val/samples", "\n\n".join(f"{i}: {c}" for i, c in scores["samples"]))
    if progress:
        print(f"  validation after epoch {epoch}: CIDEr-D {scores['CIDEr-D']:.3f} "
              f"BLEU-4 {scores['BLEU-4']:.3f}  e.g. {scores['samples'][0][1]!r}")
    state = trainer.state
    if scores["CIDEr-D"] > float(state["best_metric"].numpy()):
        state["best_metric"].assign(scores["CIDEr-D"])
        state["bad_epochs"].assign(0)
        trainer.best.save(checkpoint_number=step)
        if _is_chief(trainer.strategy):  # workers share train_dir: one writer, no race
            io.write_json(os.path.join(trainer.config.train.train_dir, "best.json"),
                       {"step": step, "epoch": epoch, **{k: v for k, v in scores.items()
                                                         if k != "samples"}})
    else:
        state["bad_epochs"].assign_add(1)
    # After validation, so the counters above are in the checkpoint too.
    trainer.latest.save(checkpoint_number=step)
    return int(state["bad_epochs"].numpy()) >= trainer.config.train.patience


def _summary(trainer: Trainer, stopped: str) -> dict:
    return {"stopped": stopped, "step": int(trainer.state["step"].numpy()),
            "total_steps": trainer.total_steps,
            "best_CIDEr-D": float(trainer.state["best_metric"].numpy()),
            "best_checkpoint": trainer.best.latest_checkpoint,
            "latest_checkpoint": trainer.latest.latest_checkpoint}


