"""The training loop: tf.function steps run through `strategy.run`.

One process per worker runs `train(config)`. Everything a run depends on is a
function of the step count or is in the checkpoint:

- the data: batch s of the run is fixed by (pipeline.seed, s) (data/batches.py),
  so a resumed run starts reading at step s, without reading earlier batches;
- the weights, the optimizer's slots and iteration count (which drives the
  learning-rate schedule), the loss scale, the counters of early stopping;
- the dropout RNG: Keras keeps each layer's seed state in a variable that its
  own checkpointing leaves out, so it is added here.

So a run killed at any point (SIGKILL included) resumes from its last
checkpoint and ends with the weights an uninterrupted run would have had. All
workers of a multi-worker run restore the chief's checkpoint, and decisions to
stop are agreed across workers (distribute.agree).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time

import keras
import tensorflow as tf

from tfcaption import averaging, decoding, distribute, io, metrics, rewards, scst
from tfcaption.checkpoints import TYPE_KEY, restore_checked, type_record, weight_names
from tfcaption.config import RunConfig
from tfcaption.data import pipeline, text
from tfcaption.models.build import (backbone_top, build_decoder, check_model, head_variables,
                                    top_variables)
from tfcaption.models.captioner import caption_loss
from tfcaption.schedules import Constant, TwoRates, WarmupCosine

log = logging.getLogger("tfcaption.train")

FINISHED = "finished.json"


class NonFiniteLoss(RuntimeError):
    pass


class SummedGradientsAdam(keras.optimizers.Adam):
    """Adam for gradients that the train step has already summed across replicas.

    Keras 3 sums replicas' gradients inside `apply`, after its own clipping, so
    `global_clipnorm` clips each replica's part, and a loss-scale optimizer
    judges finiteness on one replica's part. The step sums, unscales and clips
    itself; this optimizer must not sum a second time.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)

    def update_step(self, gradient, variable, learning_rate):
        """Keras' Adam update in one fused kernel (ResourceApplyAdam, the
        same formula: m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2), var -=
        m alpha / (sqrt(v) + eps), alpha = lr sqrt(1 - b2^t) / (1 - b1^t)).
        Keras writes it as ~10 elementwise ops a variable, each a pass over
        memory; at the bench's sizes (5.4 M weights) the update took 10.6 ms
        of a ~200 ms step that way. Variables are tf.Variables here (the TF
        backend hands them over inside tf.distribute's update, per replica).

        An embedding's sparse gradient keeps Keras' own update: Keras squares
        its slices before summing those of a repeated word, so its second
        moment is not dense Adam's where a word repeats in a batch; runs keep
        training as they did."""
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        constant = lambda x: tf.cast(x, dtype)  # noqa: E731
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=m.value.handle, v=v.value.handle,
            beta1_power=tf.pow(constant(self.beta_1), step),
            beta2_power=tf.pow(constant(self.beta_2), step), lr=constant(learning_rate),
            beta1=constant(self.beta_1), beta2=constant(self.beta_2),
            epsilon=constant(self.epsilon), grad=tf.cast(gradient, dtype))


@dataclasses.dataclass
class Trainer:
    """Everything a run holds: strategy, data, model, optimizer, checkpoints."""

    config: RunConfig
    strategy: tf.distribute.Strategy
    tokenizer: text.Tokenizer
    data: pipeline.TrainingData
    decoder: keras.Model  # one of models.build.DECODERS
    optimizer: keras.optimizers.Optimizer
    checkpoint: tf.train.Checkpoint
    latest: tf.train.CheckpointManager
    best: tf.train.CheckpointManager
    state: dict  # step, best_metric, bad_epochs as tf.Variables
    total_steps: int
    # Validation's decode function, traced once per run rather than once per epoch.
    greedy_fns: dict = dataclasses.field(default_factory=dict)
    traces: float = 0  # of the train step, in this process (see make_step)
    # The SCST phase (scst.py), when train.rl_epochs > 0: its batches, its own
    # optimizer (own learning rate, fresh moments) and the reward function.
    rl_data: pipeline.TrainingData | None = None
    rl_optimizer: keras.optimizers.Optimizer | None = None
    reward: object = None
    xe_steps: int = 0  # steps of the cross-entropy phase; the others follow
    # Fine-tuning (train.finetune_epochs, features.trainable_from): its steps,
    # between cross-entropy and SCST, and the backbone top's optimizer.
    ft_steps: int = 0
    top_optimizer: keras.optimizers.Optimizer | None = None
    # Polyak averaging (train.ema_decay, rl_ema_decay): the weights' shadow.
    average: averaging.WeightAverage | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch

    def phase(self, step: int) -> tuple[str, int, int]:
        """-> ("xe", "ft" (fine-tuning) or "rl" (SCST), the phase's first step,
        its steps per epoch). Past the end: the last phase."""
        if step < self.xe_steps or not (self.ft_steps or self.rl_data):
            return "xe", 0, self.data.steps_per_epoch
        if step < self.xe_steps + self.ft_steps or self.rl_data is None:
            return "ft", self.xe_steps, self.data.steps_per_epoch
        return "rl", self.xe_steps + self.ft_steps, self.rl_data.steps_per_epoch

    def phase_end(self, step: int) -> int:
        """The first step after step's phase."""
        return {"xe": self.xe_steps, "ft": self.xe_steps + self.ft_steps,
                "rl": self.total_steps}[self.phase(step)[0]]

    def variables(self, phase: str) -> tuple[list, list]:
        """(the decoder's own weights, the backbone top's) the phase trains:
        the top in fine-tuning, and in SCST after it when given a rate."""
        top = top_variables(self.decoder) if phase == "ft" or (
            phase == "rl" and self.top_optimizer is not None
            and self.config.train.rl_backbone_learning_rate > 0) else []
        return head_variables(self.decoder), top


def rng_state(decoder) -> dict:
    """The decoder's seed-generator states (dropout), by position."""
    states = [v for v in decoder.non_trainable_variables if "seed_generator" in v.path]
    return {f"seed_{i}": v for i, v in enumerate(states)}


def checkpoint_dirs(train_dir: str, strategy) -> tuple[str, str]:
    """(latest, best). Every worker must save (the save is collective); the
    chief into train_dir, the others into folders of their own that nothing
    reads. A restarted worker restores the chief's checkpoint (`train`)."""
    if distribute.is_chief(strategy):
        return io.join(train_dir, "latest"), io.join(train_dir, "best")
    kind, index = distribute.task(strategy)
    own = io.join(train_dir, "workers", f"{kind}-{index}")
    return io.join(own, "latest"), io.join(own, "best")


def check_config(config: RunConfig) -> None:
    """Refuses settings that cannot work, before a strategy or anything else is made."""
    pc, tc = config.pipeline, config.train
    check_model(config.model)
    if not 0.0 <= tc.scheduled_sampling <= 1.0:
        raise ValueError(f"train.scheduled_sampling={tc.scheduled_sampling} is a probability: "
                         "0 (off) to 1")
    if tc.scheduled_sampling and config.model.decoder == "transformer":
        raise ValueError("train.scheduled_sampling needs a recurrent decoder (gru, lstm): "
                         "the transformer reads every position of a caption at once")
    if tc.steps_per_execution < 1:
        raise ValueError("train.steps_per_execution must be >= 1")
    if tc.strategy == "tpu" and tc.steps_per_execution > 1 and not pc.fixed_shapes:
        raise ValueError("train.steps_per_execution > 1 on a TPU loops over batches of "
                         "one shape: set pipeline.fixed_shapes=true")
    if tc.finetune_epochs < 0:
        raise ValueError("train.finetune_epochs must be >= 0")
    if tc.finetune_epochs and not config.features.trainable_from:
        raise ValueError("train.finetune_epochs fine-tunes the backbone's top: set "
                         "features.trainable_from (e.g. fire6 for SqueezeNet) and extract "
                         "the cache below it")
    for name in ("ema_decay", "rl_ema_decay"):
        if not 0.0 <= getattr(tc, name) < 1.0:
            raise ValueError(f"train.{name}={getattr(tc, name)} must be in [0, 1): the "
                             "weight of the average's past at each step (0: no averaging)")
    if config.features.trainable_from and tc.mixed_precision == "mixed_float16":
        # Two optimizers would need one loss scale; bfloat16 needs none.
        raise ValueError("features.trainable_from does not train with mixed_float16; use "
                         "mixed_bfloat16 (float32's range, no loss scale) or float32")


def check_replicas(config: RunConfig, replicas: int) -> None:
    pc = config.pipeline
    k = pc.captions_per_image
    rows = pc.batch_size // k if k else pc.batch_size
    if rows % replicas:
        # Each replica must get whole images, or its captions would belong to others.
        what = "images" if k else "captions"
        raise ValueError(f"pipeline.batch_size{' / captions_per_image' if k else ''} = "
                         f"{rows} {what} must divide among {replicas} replicas")


def make_trainer(config: RunConfig, strategy: tf.distribute.Strategy | None = None) -> Trainer:
    # Seeded before any variable exists, so the initial weights and dropout
    # masks are a function of train.seed alone.
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
        # And no Grappler: with it, one SCST step from one checkpoint, batch
        # and seed gave weights that differ in the last bits from one process
        # to the next (~1 in 3), with the same gradients when computed on
        # their own: the rewrite of the inlined step varies per process.
        # Without it, 6 of 6 agreed; the demo's and Flickr8k's steps were no slower.
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    check_config(config)
    scst.check(config)
    strategy = strategy or distribute.make_strategy(config.train)
    check_replicas(config, strategy.num_replicas_in_sync)
    manifest = pipeline.load_manifest(config.features.cache_dir, "train")
    tokenizer = text.Tokenizer(pipeline.vocabulary_path(manifest), config.data.max_caption_words)
    data = pipeline.TrainingData(config.features.cache_dir, tokenizer, config.pipeline)
    tc = config.train
    xe_total = data.steps_per_epoch * tc.epochs
    ft_total = data.steps_per_epoch * tc.finetune_epochs
    rl_data = scst.training_data(config, tokenizer, share=data) if tc.rl_epochs > 0 else None
    total = xe_total + ft_total + (rl_data.steps_per_epoch * tc.rl_epochs if rl_data else 0)

    def adam(learning_rate, variables):
        made = SummedGradientsAdam(learning_rate)
        if tc.mixed_precision == "mixed_float16":
            # float16 gradients underflow without it; bfloat16 has float32's range.
            made = keras.optimizers.LossScaleOptimizer(made)
        made.build(variables)
        return made

    with strategy.scope():
        decoder = build_decoder(config, tokenizer.vocab_size, manifest["grid_shape"],
                                backbone_top(config))
        head = head_variables(decoder)
        optimizer = adam(WarmupCosine(tc.learning_rate, tc.warmup_steps, xe_total,
                                      tc.min_learning_rate_ratio), head)
        rl_optimizer = adam(Constant(tc.rl_learning_rate), head) if rl_data else None
        top_optimizer = adam(TwoRates(tc.backbone_learning_rate, tc.rl_backbone_learning_rate,
                                      ft_total), top_variables(decoder)) if ft_total else None
        state = {"step": tf.Variable(0, dtype=tf.int64, trainable=False, name="step"),
                 "best_metric": tf.Variable(-1.0, trainable=False, name="best_metric"),
                 "bad_epochs": tf.Variable(0, trainable=False, name="bad_epochs")}
        average = averaging.WeightAverage(decoder.trainable_variables) \
            if averaging.wanted(tc) else None
    checkpoint = _checkpoint(decoder, optimizer, state, rl_optimizer, top_optimizer,
                             average=average)
    latest_dir, best_dir = checkpoint_dirs(tc.train_dir, strategy)
    latest = tf.train.CheckpointManager(checkpoint, latest_dir, max_to_keep=tc.keep_checkpoints)
    best = tf.train.CheckpointManager(checkpoint, best_dir, max_to_keep=1)
    reward = rewards.make_reward(tc.rl_reward, scst.document_frequencies(config, tokenizer)) \
        if rl_data else None
    return Trainer(config, strategy, tokenizer, data, decoder, optimizer, checkpoint, latest,
                   best, state, total, rl_data=rl_data, rl_optimizer=rl_optimizer,
                   reward=reward, xe_steps=xe_total, ft_steps=ft_total,
                   top_optimizer=top_optimizer, average=average)


def _checkpoint(decoder, optimizer, state: dict, rl_optimizer=None, top_optimizer=None,
                record: bool = True, average=None) -> tf.train.Checkpoint:
    """What a run's checkpoints hold: the SCST and top optimizers and the
    weights' average only when they exist, and the decoder type's record
    (checkpoints.type_record) unless told not to."""
    extra = {"rl_optimizer": rl_optimizer} if rl_optimizer else {}
    if top_optimizer:
        extra["top_optimizer"] = top_optimizer
    if average:
        extra[averaging.CHECKPOINT_KEY] = average.shadows
    if record:
        extra.update(type_record(decoder))
    return tf.train.Checkpoint(decoder=decoder, optimizer=optimizer, rng=rng_state(decoder),
                               **state, **extra)


def restore_latest(trainer: Trainer, path: str) -> None:
    """Restores a run's latest checkpoint into what it holds: one written before
    SCST was asked for (train.rl_epochs raised after cross-entropy finished) has
    no SCST optimizer, which then starts fresh; one written before decoder
    types were recorded has no record (restore_checked takes it for a GRU's);
    one written without averaging gives the average the restored weights.
    The run's next checkpoint holds all three."""
    names = weight_names(path)
    has = lambda prefix: any(k.startswith(prefix + "/") for k in names)  # noqa: E731
    rl_optimizer = trainer.rl_optimizer if has("rl_optimizer") else None
    top_optimizer = trainer.top_optimizer if has("top_optimizer") else None
    average = trainer.average if has(averaging.CHECKPOINT_KEY) else None
    restore_checked(_checkpoint(trainer.decoder, trainer.optimizer, trainer.state,
                                rl_optimizer, top_optimizer, record=has(TYPE_KEY),
                                average=average), path)
    if trainer.average and not average:
        trainer.average.reset()


def _replica_step(trainer: Trainer, phase: str = "xe"):
    """(features, tokens) of one replica -> (loss, stats, gradient norm), weights updated.
    phase "rl": an SCST step, (features, references, seed) -> the same.

    The gradient is summed across replicas before anything looks at it: the
    clip uses the global batch's norm, and the loss scale sees the summed
    gradient, so an overflow on any replica skips the step on all of them.
    In fine-tuning (and SCST after it) the backbone top's gradients join the
    norm and the clip, and its own optimizer applies them.
    """
    tc = trainer.config.train
    decoder = trainer.decoder
    rl = phase == "rl"
    optimizer = trainer.rl_optimizer if rl else trainer.optimizer
    head, top = trainer.variables(phase)
    variables = head + top
    global_batch = trainer.config.pipeline.batch_size
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    ema_decay = averaging.decay(tc, phase)

    def gradients(features, tokens, *sampling):
        with tf.GradientTape() as tape:
            loss, stats = caption_loss(decoder, features, tokens, global_batch,
                                       tc.attention_lambda, training=True,
                                       sampling=sampling or None)
            target = optimizer.scale_loss(loss) if scaled else loss
        return loss, stats, tape.gradient(target, variables)

    def rl_gradients(features, references, seed):
        # Drawn outside the tape: no gradient flows through a draw.
        tokens, advantage, real, stats = scst.sample_and_reward(
            decoder, features, references, trainer.reward, trainer.config, seed)
        with tf.GradientTape() as tape:
            loss, more = scst.mixed_loss(decoder, features, references, tokens, advantage,
                                         real, trainer.config)
            target = optimizer.scale_loss(loss) if scaled else loss
        return loss, {**stats, **more}, tape.gradient(target, variables)

    # XLA compiles the model's forward and backward pass; the all-reduce and the
    # optimizer update stay outside, where tf.distribute places them.
    # autograph=False here and at every tf.function of the package: their loops
    # are explicit tf.while_loop / tf.scan / tf.cond, so autograph would only
    # transpile Python that needs none (Keras' layers too), ~5 s of every
    # training process's tracing (demo, 3 epochs: 12.9 -> 6.8 s).
    compiled = tf.function(rl_gradients if rl else gradients, jit_compile=tc.jit_compile,
                           autograph=False)

    def replica_step(features, tokens, *seed):
        # Python runs only while tracing, once per local replica: a count of traces.
        trainer.traces += 1 / distribute.local_replicas(trainer.strategy)
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group,
                          tf.int64)
        # What the step draws with: SCST's seed, or scheduled sampling's
        # (probability, key); each replica draws its own.
        draws = ()
        if seed:
            draws = (tf.stack([seed[0][0], seed[0][1] * 1024 + replica]),)
        elif tc.scheduled_sampling:
            draws = scheduled_sampling(trainer, replica)
        loss, stats, grads = compiled(features, tokens, *draws)
        grads = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, grads)
        scale = optimizer.dynamic_scale if scaled else None
        if scaled:
            grads = [g / scale for g in grads]
        norm = tf.linalg.global_norm(grads)
        if tc.clip_norm:
            # An infinite norm makes every gradient NaN: the loss scale then skips.
            grads, _ = tf.clip_by_global_norm(grads, tc.clip_norm, use_norm=norm)
        if scaled:  # it unscales (and checks) what it is given
            grads = [g * scale for g in grads]
        optimizer.apply(grads[:len(head)], head)
        if top:
            trainer.top_optimizer.apply(grads[len(head):], top)
        if ema_decay:
            trainer.average.update(ema_decay, optimizer.iterations, variables)
        return loss, stats, norm

    return replica_step


def sampling_probability(trainer: Trainer, step) -> tf.Tensor:
    """Scheduled sampling's probability at a cross-entropy step: a linear ramp
    from 0 to train.scheduled_sampling over the phase."""
    done = tf.cast(step, tf.float32) / float(max(trainer.xe_steps, 1))
    return trainer.config.train.scheduled_sampling * tf.minimum(done, 1.0)


def scheduled_sampling(trainer: Trainer, replica) -> tuple[tf.Tensor, tf.Tensor]:
    """(probability, key) for this step and replica. Both are functions of the
    optimizer's step count (in the checkpoint), so a resumed run draws the same
    words, and each replica draws its own."""
    step = tf.cast(trainer.optimizer.iterations, tf.int64)
    key = tf.stack([tf.constant(trainer.config.train.seed, tf.int64), step * 1024 + replica])
    return sampling_probability(trainer, step), key


def _reduced(strategy, loss, stats, norm):
    total = lambda x: strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None)  # noqa: E731
    return (total(loss), {k: total(v) for k, v in stats.items()},
            strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None))


def make_step(trainer: Trainer, phase: str = "xe"):
    """One distributed train step: (features, tokens) -> summed (loss, stats), mean
    gradient norm. phase "rl": an SCST step, (features, references, seed (2,)
    int64) -> the same.

    Traces: under XLA (train.jit_compile) and on TPUs, one per batch shape (one
    per bucket boundary): a compiler wants static shapes. Elsewhere one in all,
    whatever the buckets: the first call traces for tokens of any length
    (_any_length), which serves every bucket; the scan over time does not need
    its length in the graph. A trace of the demo's step takes ~2.5 s: its 10
    bucket widths took 24.6 s of tracing one per width, 6.2 s with two traces
    (the first batch's shape, then reduce_retracing's unknown length), and the
    steps ran as fast (one measurement). The SCST step keeps reduce_retracing
    (its references are padded to one length: it traces once too).
    """
    replica_step, strategy = _replica_step(trainer, phase), trainer.strategy
    tc = trainer.config.train
    static = tc.jit_compile or tc.strategy == "tpu"

    @tf.function(reduce_retracing=not static, autograph=False)
    def step(features, tokens, *seed):
        return _reduced(strategy, *strategy.run(replica_step, args=(features, tokens, *seed)))

    if static or phase == "rl":
        return step
    traced = []

    def step_any_length(features, tokens, *seed):
        if not traced:
            step.get_concrete_function(tf.type_spec_from_value(features), _any_length(tokens),
                                       *map(tf.type_spec_from_value, seed))
            traced.append(True)
        return step(features, tokens, *seed)

    return step_any_length


def _any_length(tokens) -> tf.TypeSpec:
    """The spec of tokens (rows, T), or of a PerReplica of them, with T unknown."""
    spec = tf.type_spec_from_value(tokens)
    parts = [tf.TensorSpec([s.shape[0], None], s.dtype)
             for s in tf.nest.flatten(spec, expand_composites=True)]
    # A PerReplicaSpec is built from its replicas' specs (nest would pack them
    # into a PerReplica value instead).
    return parts[0] if isinstance(spec, tf.TensorSpec) else type(spec)(*parts)


def make_multi_step(trainer: Trainer):
    """n steps in one call: (iterator, n) -> (loss, stats) summed over the n steps,
    the last step's gradient norm. Traced once per n (train() calls it with
    steps_per_execution only). The n steps are unrolled: a tf.while_loop around
    the step fails at run time (the gradient sums of the decoder's scan over time
    reuse one temporary variable name in every iteration: AlreadyExistsError)."""
    replica_step, strategy = _replica_step(trainer), trainer.strategy

    @tf.function(autograph=False)
    def steps(iterator, n: int):
        loss, stats, norm = _reduced(strategy, *strategy.run(replica_step,
                                                             args=next(iterator)))
        for _ in range(n - 1):
            more = _reduced(strategy, *strategy.run(replica_step, args=next(iterator)))
            loss += more[0]
            stats = {k: stats[k] + more[1][k] for k in stats}
            norm = more[2]
        return loss, stats, norm

    return steps


def greedy_captions(trainer: Trainer, split_role: str, limit: int = 0,
                    max_len: int | None = None) -> dict[str, str]:
    """image_id -> greedy caption, free-running (what validation scores). The
    search runs on the replicas; only turning ids into words happens here."""
    max_len = max_len or pipeline.max_tokens(trainer.config.data.max_caption_words)
    decoder, strategy = trainer.decoder, trainer.strategy
    if max_len not in trainer.greedy_fns:
        @tf.function(autograph=False)
        def decode(feats):
            # As evaluation decodes (decode.no_repeat_ngram too), so the best
            # checkpoint is chosen by the captions that will be scored.
            no_repeat = trainer.config.decode.no_repeat_ngram
            tokens = strategy.run(lambda f: decoding.greedy(decoder, f, max_len, no_repeat)[0],
                                  args=(feats,))
            return strategy.gather(tokens, axis=0)
        trainer.greedy_fns[max_len] = decode
    decode = trainer.greedy_fns[max_len]

    cache, replicas = trainer.config.features.cache_dir, strategy.num_replicas_in_sync
    batch = -(-trainer.config.train.val_batch_size // replicas) * replicas
    ids = pipeline.image_dataset(cache, split_role, batch, static=True)
    feats = distribute.distribute(strategy, lambda: pipeline.image_dataset(
        cache, split_role, batch, static=True).map(
            tf.autograph.experimental.do_not_convert(lambda b: (b["features"],))))
    out: dict[str, str] = {}
    for rows, (grid,) in zip(ids, feats):
        captions = trainer.tokenizer.detokenize(decode(grid)).numpy()
        for i, c in zip(rows["image_id"].numpy(), captions):
            if i:  # "" marks the rows that fill the last batch
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


def _next_call(step: int, trainer: Trainer) -> int:
    """Steps the next call runs: at most steps_per_execution (1 in the SCST
    phase), never past a log, checkpoint, epoch or phase boundary (they keep
    their cadence)."""
    tc = trainer.config.train
    phase, first, per_epoch = trainer.phase(step)
    n = min(tc.steps_per_execution if phase == "xe" else 1, trainer.phase_end(step) - step)
    n = min(n, per_epoch - (step - first) % per_epoch)
    for every in (tc.checkpoint_every, tc.log_every):
        if every > 0:
            n = min(n, every - step % every)
    return max(n, 1)


def train(config: RunConfig, strategy: tf.distribute.Strategy | None = None,
          progress: bool = True) -> dict:
    """Trains until `epochs` (then `rl_epochs` of SCST) are done, early stopping,
    or `max_minutes`; resumes from the latest checkpoint of the chief. Returns a
    summary dict."""
    trainer = make_trainer(config, strategy)
    tc, strategy = config.train, trainer.strategy
    chief = distribute.is_chief(strategy)
    step_var = trainer.state["step"]
    # Every worker restores the chief's checkpoint: the others' own are never read.
    restored = tf.train.latest_checkpoint(io.join(tc.train_dir, "latest"))
    if restored:
        restore_latest(trainer, restored)
        log.info("resumed from %s at step %d", restored, int(step_var.numpy()))
    start_step = int(step_var.numpy())
    finished = _read_finished(tc.train_dir)
    if start_step >= trainer.total_steps or (
            finished and finished["total_steps"] == trainer.total_steps
            and not _limit_raised(finished, tc.max_minutes)):
        # An early-stopped or time-limited run is finished too: running the
        # pipeline again must not train it further (unless given more time).
        log.info("training already finished at step %d", start_step)
        return _summary(trainer, stopped=finished["stopped"] if finished else "complete")

    # One set of curves: other workers log nothing (they share train_dir).
    writer = tf.summary.create_file_writer(io.join(tc.train_dir, "logs")) \
        if chief else tf.summary.create_noop_writer()
    begun, stopped = time.perf_counter(), "complete"
    window = {"start": time.perf_counter(), "tokens": 0.0}
    bar, iterator, step_fn, multi_fn, phase = None, None, None, None, None
    step = start_step
    # A phase stopped early (now, or before a resume): the next follows at once.
    stopped_early = int(trainer.state["bad_epochs"].numpy()) >= tc.patience
    while step < trainer.total_steps:
        if stopped_early and trainer.phase_end(step) < trainer.total_steps:
            step = trainer.phase_end(step)
            step_var.assign(step)
        stopped_early = False
        now, first, per_epoch = trainer.phase(step)
        if now != phase:
            phase = now
            if phase != "xe":
                _start_phase(trainer, phase, step, first)
            data = trainer.rl_data if phase == "rl" else trainer.data
            # Fine-tuning continues cross-entropy's plan of epochs: its
            # batches come in new orders, not epoch 1's again.
            offset = first if phase == "ft" else 0
            epochs = {"xe": tc.epochs, "ft": tc.epochs + tc.finetune_epochs}.get(
                phase, tc.rl_epochs)
            iterator = iter(distribute.distribute(
                strategy, lambda: data.dataset(step - first + offset, epochs)))
            step_fn = make_step(trainer, phase)
            multi_fn = make_multi_step(trainer) \
                if tc.steps_per_execution > 1 and phase == "xe" else None
            bar = None
        epoch, in_epoch = divmod(step - first, per_epoch)
        if in_epoch == 0 or bar is None:
            bar = keras.utils.Progbar(per_epoch, verbose=1 if progress else 0,
                                      stateful_metrics=["loss", "tokens/s", "lr", "reward",
                                                        "baseline", "entropy", "sampled"])
            if progress:
                count = {"xe": tc.epochs, "ft": tc.finetune_epochs}.get(phase, tc.rl_epochs)
                print(f"{PHASE_NAMES[phase]} {epoch + 1}/{count}")
        n = _next_call(step, trainer)
        if n == tc.steps_per_execution > 1 and multi_fn is not None:
            loss, stats, norm = multi_fn(iterator, n)
        else:  # single steps up to the next boundary: no trace for each other n
            n = 1
            args = next(iterator)
            if phase == "rl":  # the draw is a function of (seed, step): resumable
                args = (*args, tf.constant([tc.seed, step], tf.int64))
            loss, stats, norm = step_fn(*args)
        loss = float(loss)  # the one host round trip per call
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"loss became {loss} at step {step + n}; the last good checkpoint "
                f"({trainer.latest.latest_checkpoint}) is untouched. Lower "
                "train.learning_rate or train.clip_norm, or check the features for NaNs")
        step += n
        step_var.assign(step)
        shown = _progress(trainer, phase, stats, window)
        bar.update(in_epoch + n, list(shown.items()))
        if step % tc.log_every == 0:
            _log_scalars(writer, step, phase, shown, stats, loss / n, float(norm))
            window.update(start=time.perf_counter(), tokens=0.0)
        # Decided once for all workers: one worker's clock must not leave the
        # others waiting in an all-reduce.
        out_of_time = bool(tc.max_minutes) and distribute.agree(
            strategy, time.perf_counter() - begun > tc.max_minutes * 60)
        if (step - first) % per_epoch == 0:
            if _end_of_epoch(trainer, writer, step, progress):
                if trainer.phase_end(step - 1) >= trainer.total_steps:
                    stopped = "early stopping"
                    break
                stopped_early = True
        elif step % tc.checkpoint_every == 0 or out_of_time:
            trainer.latest.save(checkpoint_number=step)
        if out_of_time:
            stopped = f"time limit ({tc.max_minutes} min)"
            log.warning("%s", time_limit_message(step, trainer.total_steps, tc.max_minutes))
            break
    writer.flush()
    summary = _summary(trainer, stopped=stopped)
    if chief:
        io.write_json(io.join(tc.train_dir, FINISHED), summary)
    return summary


PHASE_NAMES = {"xe": "epoch", "ft": "fine-tune epoch", "rl": "SCST epoch"}


def _start_phase(trainer: Trainer, phase: str, step: int, first: int) -> None:
    """Fine-tuning and SCST start from the best checkpoint so far (once: a run
    resumed inside the phase has its own weights in the latest checkpoint),
    with their own early-stopping count."""
    if step == first:
        best = trainer.best.latest_checkpoint
        if best:
            tf.train.Checkpoint(decoder=trainer.decoder).restore(best).expect_partial()
            log.info("%s starts from the best checkpoint so far, %s",
                     PHASE_NAMES[phase].split()[0], best)
        trainer.state["bad_epochs"].assign(0)
        if trainer.average:
            trainer.average.reset()


def _progress(trainer: Trainer, phase: str, stats: dict, window: dict) -> dict:
    """What the progress bar shows: per-token loss and tokens/s; in the SCST
    phase the mean reward, baseline and per-token entropy of the samples."""
    window["tokens"] += float(stats["tokens"])
    rate = window["tokens"] / (time.perf_counter() - window["start"])
    if phase == "rl":
        samples = max(float(stats["samples"]), 1.0)
        shown = {"reward": float(stats["reward"]) / samples,
                 "baseline": float(stats["baseline"]) / samples,
                 "entropy": float(stats["entropy"]) / max(float(stats["tokens"]), 1.0)}
        if "xent" in stats:  # train.rl_xent_weight: the references' loss per token
            shown["loss"] = float(stats["xent"]) / max(float(stats["xent_tokens"]), 1.0)
        return {**shown, "tokens/s": rate, "lr": trainer.config.train.rl_learning_rate}
    shown = {"loss": float(stats["xent"]) / max(float(stats["tokens"]), 1.0),
             "tokens/s": rate, "lr": float(trainer.optimizer.learning_rate)}
    if trainer.config.train.scheduled_sampling:  # the probability the step just used
        shown["sampled"] = float(sampling_probability(trainer,
                                                      trainer.optimizer.iterations - 1))
    return shown


def _log_scalars(writer, step: int, phase: str, shown: dict, stats: dict, loss: float,
                 norm: float) -> None:
    with writer.as_default(step=step):
        if phase == "rl":
            for key in ("reward", "baseline", "entropy"):
                tf.summary.scalar(f"scst/{key}", shown[key])
            if "loss" in shown:
                tf.summary.scalar("scst/cross_entropy_per_token", shown["loss"])
            tf.summary.scalar("scst/loss", loss)
        else:
            tf.summary.scalar("loss/cross_entropy_per_token", shown["loss"])
            tf.summary.scalar("loss/regulariser", float(stats["regulariser"]) /
                              max(float(stats["captions"]), 1.0))
            tf.summary.scalar("loss/total", loss)
            if "sampled" in shown:
                tf.summary.scalar("scheduled_sampling", shown["sampled"])
        tf.summary.scalar("learning_rate", shown["lr"])
        tf.summary.scalar("gradient_norm", norm)
        tf.summary.scalar("tokens_per_second", shown["tokens/s"])


def time_limit_message(step: int, total: int, minutes: float) -> str:
    return (f"TRAINING WAS CUT by train.max_minutes={minutes} at step {step} of {total} "
            f"({100 * step / max(total, 1):.0f}% of its budget): the model is not the one "
            "the pipeline describes, and its scores are lower than the ones it states. "
            "Run again with --set train.max_minutes=0 to train the remaining steps "
            "(it resumes from the last checkpoint).")


def _limit_raised(finished: dict, minutes: float) -> bool:
    """A run cut by the time limit continues when run again with a higher or no limit."""
    cut = finished["stopped"].startswith("time limit")
    before = finished.get("max_minutes", 0.0)
    return cut and (not minutes or minutes > before)


def _read_finished(train_dir: str) -> dict | None:
    """The summary a run leaves when it ends on its own (not when killed)."""
    path = io.join(train_dir, FINISHED)
    return io.read_json(path) if io.exists(path) else None


def _end_of_epoch(trainer: Trainer, writer, step: int, progress: bool) -> bool:
    """Validates, keeps the best checkpoint; True when early stopping says stop.
    With averaging in this phase both are the average's (averaging.py)."""
    phase, first, per_epoch = trainer.phase(step - 1)
    averaged = trainer.average and averaging.decay(trainer.config.train, phase)
    with trainer.average.swapped_in() if averaged else contextlib.nullcontext():
        better = _validate_and_keep_best(trainer, writer, step, phase, first, per_epoch,
                                         progress)
    state = trainer.state
    if not better:
        state["bad_epochs"].assign_add(1)
    # After validation, so the counters above are in the checkpoint too; after
    # the swap, so it holds the weights training goes on from.
    trainer.latest.save(checkpoint_number=step)
    # Every worker scored the same captions; agreeing still guards the collective.
    return distribute.agree(trainer.strategy,
                            int(state["bad_epochs"].numpy()) >= trainer.config.train.patience)


def _validate_and_keep_best(trainer: Trainer, writer, step: int, phase: str, first: int,
                            per_epoch: int, progress: bool) -> bool:
    """Validation's scores logged and shown; the best checkpoint saved when they
    are the best yet. -> whether they were."""
    scores = validate(trainer)
    epoch = (step - first) // per_epoch
    what = PHASE_NAMES[phase]
    with writer.as_default(step=step):
        tf.summary.scalar("val/CIDEr-D", scores["CIDEr-D"])
        tf.summary.scalar("val/BLEU-4", scores["BLEU-4"])
        tf.summary.text("val/samples", "\n\n".join(f"{i}: {c}" for i, c in scores["samples"]))
    if progress:
        print(f"  validation after {what} {epoch}: CIDEr-D {scores['CIDEr-D']:.3f} "
              f"BLEU-4 {scores['BLEU-4']:.3f}  e.g. {scores['samples'][0][1]!r}")
    state = trainer.state
    if scores["CIDEr-D"] > float(state["best_metric"].numpy()):
        state["best_metric"].assign(scores["CIDEr-D"])
        state["bad_epochs"].assign(0)
        trainer.best.save(checkpoint_number=step)
        if distribute.is_chief(trainer.strategy):  # workers share train_dir: one writer
            io.write_json(io.join(trainer.config.train.train_dir, "best.json"),
                          {"step": step, "epoch": epoch,
                           "phase": {"xe": "cross-entropy", "ft": "fine-tune"}.get(phase, "scst"),
                           **{k: v for k, v in scores.items() if k != "samples"}})
        return True
    return False


def _summary(trainer: Trainer, stopped: str) -> dict:
    return {"stopped": stopped, "step": int(trainer.state["step"].numpy()),
            "total_steps": trainer.total_steps, "steps_per_epoch": trainer.steps_per_epoch,
            "finetune_steps": trainer.ft_steps,
            "scst_steps": trainer.total_steps - trainer.xe_steps - trainer.ft_steps,
            "max_minutes": trainer.config.train.max_minutes,
            "step_traces": round(trainer.traces),
            "best_CIDEr-D": float(trainer.state["best_metric"].numpy()),
            "best_checkpoint": trainer.best.latest_checkpoint,
            "latest_checkpoint": trainer.latest.latest_checkpoint}
