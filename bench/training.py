"""Training throughput: the real train step on Flickr8k-shaped batches, against matmul peak.

    .venv/bin/python bench/training.py [--flickr ../shared/flickr8k] [--quick]

About 9 minutes on 2 CPUs (--quick: about 1.5, mostly tracing and the XLA compile).

What runs is what `tfcaption train` runs: `training.make_trainer` (decoder,
Adam with the warm-up/cosine schedule and global clipping) on a feature cache,
batches from `pipeline.training_dataset`, and the step from `training.make_step`.
Only the cache is synthetic: random 8x8x2048 grids (InceptionV3's shape) in the
real on-disk format, holding the real Flickr8k train captions of a few hundred
images, and the vocabulary `tfcaption extract` writes for the whole train split
with data.max_vocab=5000 (without Flickr8k: Zipf words, Flickr8k-like lengths).
Batches are drawn once and held in memory, so the input pipeline's cost is not
in the numbers; only the step is timed (one `float(loss)` per step, as `train`).
The length-bucketed rows time a whole epoch of the cache (400 images: 32
batches), the mix of lengths an epoch of training runs: the first 8 batches of
it, what the bench timed before 2026-12-07, held the window's one batch of
32 tokens and averaged 15.0 tokens against the epoch's 13.7.

Configurations, each measured alternately with the others and the matmul
reference in one process (round 1, round 2, ...), best round kept:

    own longest    the same batches cut to their own longest caption (what the
                   pipeline did before)
    bucketed       the default: length buckets, each batch padded to its bucket's
                   boundary (XLA compiles once per boundary; without XLA the
                   step traces once in all, training.make_step)
    bucketed bf16  the same under train.mixed_precision=mixed_bfloat16
    grouped x5     pipeline.captions_per_image=5: batches of 65 captions from 13
                   images, each image encoded once for its 5 captions (bucketed too)
    grouped x5 bf16  the same under mixed_bfloat16: the two savings together
    fixed-32       pipeline.fixed_shapes: every batch padded to 30 words + 2 = 32 tokens
    fixed-32 + XLA the same with train.jit_compile (one compile, static shapes)
    fixed-32 4/call  train.steps_per_execution=4: four steps per tf.function call,
                   one host round trip per call (what TPUs and busy GPUs gain from)
    lstm bucketed  model.decoder=lstm, the same sizes and batches as bucketed
    transformer buck. model.decoder=transformer: d_model = units (512), 2 blocks
                   of 4 heads (model.layers, model.heads), the same batches
    tutorial-style the TensorFlow tutorial's model and step (bench/tutorial_model.py):
                   captions padded to 50 tokens, a Python loop over them, the
                   attention keys recomputed at every position; the ratio of
                   tfcaption's captions/s to its own is printed last
    scst           the SCST phase's step (tfcaption/scst.py) on images with their
                   5 references: 5 captions sampled per image, rewarded with the
                   in-graph CIDEr-D, one policy-gradient update; printed in a
                   table of its own with cross-entropy's steps/s and images/s

It runs unchanged on a GPU host (tf.distribute's default strategy places the
step on the first GPU); the matmul reference is then the GPU's.

Useful FLOPs (multiply-add = 2 FLOPs; E embedding, U units, A attention units,
F projected feature size, C channels, L locations, V vocabulary), counted for
real tokens only -- what a perfect implementation with no padding would do:

    once per encoded image: feature_proj 2LCF + keys W1 2LFA + init_state 2FU
        (once per caption in the pair configurations, once per 5 in grouped x5)
    per real token (advance + project):
        attention  W2 h 2UA, add+tanh 2LA, score v 2LA, softmax ~5L, context 2LF
        gate 2U, GRU 2(E+F)3U + 2U*3U, deep output 2UE + 2FE, vocabulary 2EV
    backward = 2x forward (input and weight gradients), except feature_proj,
        whose input (the cached features) needs no gradient: 1x. (The step
        does not compute it: feature_norm's scale and offset are folded into
        feature_proj's kernel, see GRUDecoder.project_features.)

At the tutorial's sizes, E=256, U=A=512, F=256 (its encoder's projection),
C=2048, L=64, V=5000, that is 84 MFLOP forward per caption (67 of it
feature_proj) and 6.8 MFLOP forward per token (2.6 of it the vocabulary
projection, 3.1 the GRU): 185 MFLOP per caption + 20.4 MFLOP per real token,
forward and backward. Elementwise work (layer norm, dropout, softmax
cross entropy, Adam) is left out: it is not "useful" in this sense.

"of matmul" divides the useful GFLOP/s by a float32 1024^3 tf.matmul chain in a
tf.function (same process, measured between the steps of every round): how much
of what this machine can multiply the step turns into useful training. The same
chain under XLA is shown too, to tell XLA's matmuls from the rest of its code.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfcaption import io, training  # noqa: E402
from tfcaption.attention_correctness import slice_centres  # noqa: E402
from tfcaption.config import (DataConfig, FeatureConfig, ModelConfig, PipelineConfig,  # noqa: E402
                              RunConfig, TrainConfig)
from tfcaption.data import batches as batches_module  # noqa: E402
from tfcaption.data import features, pipeline, sources, text  # noqa: E402
from tfcaption.data.example import Example  # noqa: E402
from tfcaption.models.captioner import target_mask  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import finetune  # noqa: E402
from tutorial_model import make_tutorial_step  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
GRID = (8, 8, 2048)  # InceptionV3 at 299 px
VOCAB = 5000
TUTORIAL_TOKENS = 50  # the tutorial pads every caption to this length
TUTORIAL_BATCHES = 8


# -- the analytic FLOP count --------------------------------------------------

def useful_flops(m: ModelConfig, vocab: int, locations: int, channels: int):
    """(per caption, per real token) forward+backward FLOPs; see the module docstring."""
    E, U, A, F, L, C, V = (m.embedding_dim, m.units, m.attention_units, m.feature_dim,
                           locations, channels, vocab)
    proj = 2 * L * C * F
    encode_rest = 2 * L * F * A + 2 * F * U
    per_token = (2 * U * A + 2 * L * A + 2 * L * A + 5 * L + 2 * L * F  # attention
                 + (2 * U if m.gate else 0)
                 + 2 * (E + F) * 3 * U + 2 * U * 3 * U  # GRU cell (3 gates)
                 + 2 * U * E + 2 * F * E  # deep output
                 + 2 * E * V)  # vocabulary projection
    return 2 * proj + 3 * encode_rest, 3 * per_token


# -- a feature cache in the real format -----------------------------------------

def flickr_captions(root: str):
    """(captions of the benchmark's images, all train captions) from Flickr8k, or None."""
    token_file = os.path.join(root, "Flickr8k_text", "Flickr8k.token.txt")
    if not os.path.exists(token_file):
        return None
    examples = sources.flickr8k(root, "train")
    return [list(ex.captions) for ex in examples], [c for ex in examples for c in ex.captions]


def synthetic_captions(images: int, seed: int = 0):
    """Flickr8k-like without Flickr8k: 5 captions per image, lengths 5-30 words
    (mean ~11; Flickr8k's train captions average 10.8 words after normalisation,
    90% at most 16), Zipf-distributed words."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.gamma(9.0, 11.0 / 9.0, size=(images, 5))), 5, 30)
    ranks = np.arange(1, VOCAB - 3)
    p = 1.0 / ranks
    p /= p.sum()
    words = np.array([f"w{r}" for r in ranks])
    caps = [[" ".join(rng.choice(words, size=int(n), p=p)) for n in row] for row in lengths]
    return caps, [" ".join(words)]  # the second: every word once, for the vocabulary


def write_cache(cache_dir: str, captions: list[list[str]], vocab_captions: list[str],
                seed: int = 0, grid: tuple[int, int, int] = GRID) -> None:
    """A one-shard train cache: random float16 grids (h, w, c) + the given captions.

    Records, sidecar and manifest come from features.py's own writers, so this
    cache cannot drift from the format `tfcaption extract` writes."""
    rng = np.random.default_rng(seed)
    out = features.split_dir(cache_dir, "train")
    os.makedirs(out)
    name = features.shard_name(0, 1)
    examples = [Example(f"img{i:05d}", "", tuple(c)) for i, c in enumerate(captions)]
    with tf.io.TFRecordWriter(os.path.join(out, f"{name}.tfrecord")) as writer:
        for ex in examples:
            # Non-negative, like a ReLU backbone's output.
            cells = np.abs(rng.standard_normal((grid[0] * grid[1], grid[2]), np.float32))
            writer.write(features._serialize(ex.image_id, cells, ex))
    io.write_json(os.path.join(out, features.sidecar_name(name)),
                  {"count": len(examples),
                   "image_ids": [ex.image_id for ex in examples], "skipped": []})
    fingerprint = {"source": "bench", "split": "train", "backbone": "random grids",
                   "weights": "random", "input_size": 0, "grid_shape": list(grid)}
    config = RunConfig(data=DataConfig(max_vocab=VOCAB),
                       features=FeatureConfig(cache_dir=cache_dir))
    # Random grids have no geometry: cells as equal slices (only heatmaps read it).
    centres = {k: v.tolist() for k, v in slice_centres(*grid[:2]).items()}
    features._write_manifest(config, "train", out, [name], fingerprint, examples, centres)
    # The vocabulary of the whole train split, as `tfcaption extract` writes it.
    vocab = text.build_vocabulary(vocab_captions, 1, VOCAB)
    vocab += [f"<unused{i}>" for i in range(VOCAB - len(vocab))]
    text.save_vocabulary(vocab, os.path.join(cache_dir, features.VOCABULARY))


# -- timing -------------------------------------------------------------------------

def draw_batches(config: RunConfig, tokenizer, count: int, own_longest: bool = False):
    """count batches of the training pipeline, held in memory (0: an epoch's)."""
    if not count:
        count = pipeline.TrainingData(config.features.cache_dir, tokenizer,
                                      config.pipeline).steps_per_epoch
    ds = pipeline.training_dataset(config.features.cache_dir, tokenizer, config.pipeline,
                                   epochs=1000)
    batches = list(ds.take(count))
    if own_longest:  # what the pipeline did before: each batch cut to its longest caption
        batches = [(f, t[:, :int(tf.reduce_max(tf.reduce_sum(tf.cast(t != 0, tf.int32), 1)))])
                   for f, t in batches]
    real = sum(float(tf.reduce_sum(target_mask(t[:, 1:]) *
                                   tf.cast(t[:, :1] != 0, tf.float32))) for _, t in batches)
    return batches, real


def run_steps(step, batches, per_call: int = 1) -> float:
    """Times the batches through `step`, one host round trip (float(loss)) per call;
    per_call > 1: `step` is training.make_multi_step's, fed by an iterator."""
    if per_call > 1:
        iterator = iter(tf.data.Dataset.from_tensor_slices(
            tuple(tf.stack(x) for x in zip(*batches))))
        start = time.perf_counter()
        for _ in range(len(batches) // per_call):
            float(step(iterator, per_call)[0])
        return time.perf_counter() - start
    start = time.perf_counter()
    for feats, tokens in batches:
        loss, _, _ = step(feats, tokens)
        float(loss)
    return time.perf_counter() - start


def matmul_loop(n: int, iterations: int, jit: bool):
    """A float32 n^3 matmul chain in one tf.function; returns (fn, input, FLOPs per call)."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))
    q = tf.constant(q, tf.float32)  # orthogonal: the chain neither grows nor decays

    @tf.function(jit_compile=jit)
    def chain(x):
        for _ in tf.range(iterations):
            x = tf.matmul(q, x)
        return x

    return chain, q, 2.0 * n ** 3 * iterations


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {message}", file=sys.stderr, flush=True)


START = time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flickr", default=str(SHARED / "flickr8k"),
                        help="Flickr8k root (captions only); synthetic captions if absent")
    parser.add_argument("--images", type=int, default=400, help="images in the cache")
    parser.add_argument("--steps", type=int, default=0,
                        help="timed steps per round, bucketed (a mix of lengths); 0: an "
                             "epoch of the cache, every batch of its window")
    parser.add_argument("--fixed-steps", type=int, default=3,
                        help="timed steps per round, fixed shapes (all alike)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 + 1 steps, 1 round, 60 images")
    args = parser.parse_args()
    if args.quick:
        args.images, args.steps, args.fixed_steps, args.rounds = 60, 2, 1, 1
    batch_size = 64

    found = flickr_captions(args.flickr)
    if found:
        order = np.random.default_rng(0).permutation(len(found[0]))[: args.images]
        captions, vocab_captions = [found[0][i] for i in order], found[1]
        where = "Flickr8k train captions"
    else:
        captions, vocab_captions = synthetic_captions(args.images)
        where = "synthetic Flickr8k-like captions"

    tmp = tempfile.mkdtemp(prefix="tfcaption-bench-")
    try:
        cache = os.path.join(tmp, "cache")
        write_cache(cache, captions, vocab_captions)
        log(f"cache written: {len(captions)} images, {where}")
        # The tutorial's sizes: its encoder projects the features to embedding_dim (256).
        model = ModelConfig(embedding_dim=256, units=512, attention_units=512, feature_dim=256)
        config = RunConfig(
            features=FeatureConfig(cache_dir=cache),
            pipeline=PipelineConfig(batch_size=batch_size),
            model=model,
            train=TrainConfig(train_dir=os.path.join(tmp, "train"), epochs=1))
        tf.keras.utils.set_random_seed(0)
        trainer = training.make_trainer(config)
        assert trainer.tokenizer.vocab_size == VOCAB, trainer.tokenizer.vocab_size

        def variant(fixed: bool, jit: bool, per_image: int = 0, precision: str = "",
                    per_call: int = 1, decoder: str = "gru") -> RunConfig:
            # Whole images per batch: 13 x 5 = 65 captions when grouped.
            size = -(-batch_size // per_image) * per_image if per_image else batch_size
            return dataclasses.replace(
                config, model=dataclasses.replace(config.model, decoder=decoder),
                pipeline=dataclasses.replace(config.pipeline, fixed_shapes=fixed,
                                                     captions_per_image=per_image,
                                                     batch_size=size),
                train=dataclasses.replace(config.train, jit_compile=jit,
                                          mixed_precision=precision,
                                          steps_per_execution=per_call))

        per_call = 4
        configs = {"own longest": (variant(False, False), args.steps),
                   "bucketed": (variant(False, False), args.steps),
                   "bucketed bf16": (variant(False, False, precision="mixed_bfloat16"),
                                     args.steps),
                   "grouped x5": (variant(False, False, 5), args.steps),
                   "grouped x5 bf16": (variant(False, False, 5, precision="mixed_bfloat16"),
                                       args.steps),
                   # The other decoders at the same sizes (the transformer's
                   # d_model = units, model.layers blocks of model.heads heads).
                   "lstm bucketed": (variant(False, False, decoder="lstm"), args.steps),
                   "transformer buck.": (variant(False, False, decoder="transformer"),
                                         args.steps),
                   "fixed-32": (variant(True, False), args.fixed_steps * per_call),
                   "fixed-32 + XLA": (variant(True, True), args.fixed_steps * per_call),
                   f"fixed-32 {per_call}/call": (variant(True, False, per_call=per_call),
                                                 args.fixed_steps * per_call)}
        runs = {}
        for label, (cfg, steps) in configs.items():
            batches, real = draw_batches(cfg, trainer.tokenizer, steps,
                                         own_longest=label == "own longest")
            padded = sum(float(tf.reduce_sum(tf.cast(t[:, 0] != 0, tf.float32))) *
                         (int(t.shape[1]) - 1) for _, t in batches)
            # Another precision (the policy is read at build) or decoder type
            # needs its own decoder.
            own = cfg.train.mixed_precision or cfg.model.decoder != config.model.decoder
            owner = training.make_trainer(cfg) if own else trainer
            owner = dataclasses.replace(owner, config=cfg)
            calls = cfg.train.steps_per_execution
            if calls > 1:
                step = training.make_multi_step(owner)
                warm = run_steps(step, batches[:calls], calls)  # one trace in all
                shapes = {1: None}
            else:
                step = training.make_step(owner)
                # One batch of each shape: a trace each (and an XLA compile each).
                shapes = {tuple(t.shape): (f, t) for f, t in batches}
                warm = run_steps(step, list(shapes.values()))
            images = sum(int(f.shape[0]) for f, _ in batches)
            if cfg.model.decoder != config.model.decoder:  # the FLOP count is the GRU's
                images = None
            runs[label] = {"step": step, "batches": batches, "real": real, "images": images,
                           "padded": padded, "warm": warm, "shapes": len(shapes), "times": [],
                           "calls": calls}
            log(f"{label}: {len(shapes)} shape(s) run in {warm:.1f} s (the first call of each)")
        # The tutorial's step on the same pairs, each caption padded to 50 tokens:
        # 8 of bucketed's batches (3 a round had moved its ratio by 30% between two
        # runs). Every one of its batches is alike (64 x 50), so a few time all.
        pairs = runs["bucketed"]
        tutorial = [(f, batches_module.pad_tokens(t, TUTORIAL_TOKENS))
                    for f, t in pairs["batches"][:TUTORIAL_BATCHES]]
        step = make_tutorial_step(VOCAB)
        tutorial_step = lambda f, t: (step(f, t), None, None)  # noqa: E731
        warm = run_steps(tutorial_step, tutorial[:1])
        runs["tutorial-style"] = {
            "step": tutorial_step, "batches": tutorial, "images": None, "warm": warm,
            "real": sum(float(tf.reduce_sum(target_mask(t[:, 1:]))) for _, t in tutorial),
            "padded": len(tutorial) * batch_size * (TUTORIAL_TOKENS - 1), "shapes": 1,
            "times": [], "calls": 1}
        log(f"tutorial-style: traced in {warm:.1f} s")
        # The SCST phase's step (scst.py): images with their 5 references, 5
        # captions sampled per image, rewarded, and the policy-gradient update.
        rl_config = dataclasses.replace(config, train=dataclasses.replace(
            config.train, rl_epochs=1, train_dir=os.path.join(tmp, "train-rl")))
        rl_trainer = training.make_trainer(rl_config)
        rl_step = training.make_step(rl_trainer, "rl")
        seed = tf.constant([0, 0], tf.int64)
        scst_batches = list(rl_trainer.rl_data.dataset(0, 1000).take(args.fixed_steps))
        scst_step = lambda f, t: rl_step(f, t, seed)  # noqa: E731
        warm = run_steps(scst_step, scst_batches[:1])
        samples = rl_config.train.rl_samples
        runs["scst"] = {"step": scst_step, "batches": scst_batches, "images": None,
                        "warm": warm, "real": 0.0, "padded": 1.0, "shapes": 1, "times": [],
                        "calls": 1, "scst": True,
                        "sampled": sum(int(f.shape[0]) for f, _ in scst_batches) * samples}
        log(f"scst: traced in {warm:.1f} s")
        # The backbone top (features.trainable_from) at the Flickr8k default's
        # sizes: frozen, in the step but frozen, trained (bench/finetune.py).
        top_configs = finetune.configs(tmp, os.path.join(tmp, "train-top"), batch_size)
        finetune.write_caches(top_configs, write_cache, captions, vocab_captions)
        top_runs = {}
        # (top_step, not step: the tutorial's lambda above reads `step` when called)
        for label, (top_step, batches) in finetune.steps(top_configs, draw_batches,
                                                         args.steps or 8).items():
            warm = run_steps(top_step,
                             list({tuple(t.shape): (f, t) for f, t in batches}.values()))
            top_runs[label] = {"step": top_step, "batches": batches, "times": [], "calls": 1}
            runs[f"top: {label}"] = top_runs[label]
            log(f"top: {label}: traced in {warm:.1f} s")
        references = {"matmul 1024^3": matmul_loop(1024, 8, jit=False),
                      "matmul 1024^3 XLA": matmul_loop(1024, 8, jit=True)}
        for fn, x, _ in references.values():
            fn(x).numpy()
        log("matmul references traced")
        ref_times: dict[str, list[float]] = {k: [] for k in references}
        top_memory = finetune.measure_memory(tmp, batch_size, args.fixed_steps) \
            if not args.quick else {}
        for r in range(args.rounds):
            for label, run in runs.items():
                run["times"].append(run_steps(run["step"], run["batches"], run["calls"]))
                log(f"round {r + 1}: {label} {len(run['batches']) / run['times'][-1]:.3f} steps/s")
            for label, (fn, x, _) in references.items():
                for _ in range(5):  # ~0.1 s each: five tries per round
                    start = time.perf_counter()
                    fn(x).numpy()
                    ref_times[label].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    per_caption, per_token = useful_flops(model, VOCAB, GRID[0] * GRID[1], GRID[2])
    rates = {k: references[k][2] / min(v) / 1e9 for k, v in ref_times.items()}
    peak = rates["matmul 1024^3"]
    h, w, c = GRID
    print(f"\nGRUDecoder E{model.embedding_dim} U{model.units} A{model.attention_units} "
          f"F{model.feature_dim}, vocabulary {VOCAB}, {h}x{w}x{c} features, batch "
          f"{batch_size}, {where}; best of {args.rounds} round(s); "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}")
    sample = runs["bucketed"]
    print(f"useful FLOPs (fwd+bwd): {per_caption / 1e6:.0f} M per encoded image + "
          f"{per_token / 1e6:.1f} M per real token; "
          f"{sample['real'] / (len(sample['batches']) * batch_size):.1f} real tokens "
          "(words + <end>) per caption in the bucketed batches\n")
    scst = runs.pop("scst")  # its own table below
    for label in top_runs:  # their own table below
        runs.pop(f"top: {label}")
    # Captions per second of each run (masked rows, which fill a batch, excluded).
    captions = {label: sum(float(tf.reduce_sum(tf.cast(t[:, 0] != 0, tf.float32)))
                           for _, t in r["batches"]) / min(r["times"])
                for label, r in runs.items()}
    print(f"{'config':<18}{'steps':>6}{'steps/s':>9}{'captions/s':>12}{'real tok/s':>12}"
          f"{'real/padded':>13}{'useful GFLOP/s':>16}{'of matmul':>11}{'warm-up s':>11}")
    for label, run in runs.items():
        t = min(run["times"])
        n = len(run["batches"])
        if run["images"] is None:  # another model: its useful work is not ours
            useful_cells = f"{'n/a':>16}{'n/a':>11}"
        else:
            useful = (run["images"] * per_caption + run["real"] * per_token) / t / 1e9
            useful_cells = f"{useful:>16.1f}{useful / peak:>11.3f}"
        print(f"{label:<18}{n:>6}{n / t:>9.3f}{captions[label]:>12.1f}{run['real'] / t:>12.0f}"
              f"{run['real'] / run['padded']:>13.2f}{useful_cells}{run['warm']:>11.1f}")
    for label, rate in rates.items():
        print(f"{label:<18}{'':>6}{'':>9}{'':>12}{'':>12}{'':>13}{rate:>16.1f}"
              f"{rate / peak:>11.3f}")
    pairs, t_scst = runs["bucketed"], min(scst["times"])
    t_pairs = min(pairs["times"])
    print(f"\nSCST against cross-entropy (bucketed pairs), same model and process:\n"
          f"{'phase':<18}{'steps/s':>9}{'images/s':>10}{'captions/s':>12}")
    print(f"{'cross-entropy':<18}{len(pairs['batches']) / t_pairs:>9.3f}"
          f"{pairs['images'] / t_pairs:>10.1f}{captions['bucketed']:>12.1f}   (trained on)")
    scst_images = scst["sampled"] / rl_config.train.rl_samples
    print(f"{'scst':<18}{len(scst['batches']) / t_scst:>9.3f}{scst_images / t_scst:>10.1f}"
          f"{scst['sampled'] / t_scst:>12.1f}   (sampled, {rl_config.train.rl_samples} per "
          "image, rewarded and trained on)")
    print("\nThe backbone's top (features.trainable_from=fire6: fire6..fire9 over the "
          "13x13x256 cache, SqueezeNet at 224 px) at the Flickr8k default's sizes (LSTM "
          f"E256 U512 A256 F256, batch {batch_size}), same process; peak memory from a "
          f"process of its own per row{' (not measured with --quick)' if args.quick else ''}:")
    print(finetune.table(top_runs, top_memory))
    rate = {label: r["real"] / min(r["times"]) for label, r in runs.items()}
    print("\nreal tokens/s relative to bucketed: " + ", ".join(
        f"{label} {r / rate['bucketed']:.2f}" for label, r in rate.items() if label != "bucketed"))
    best = max((label for label in captions if label != "tutorial-style"), key=captions.get)
    print(f"captions/s against the tutorial-style step (Flickr8k captions, the tutorial's "
          f"sizes): {best} {captions[best] / captions['tutorial-style']:.1f}x, bucketed "
          f"{captions['bucketed'] / captions['tutorial-style']:.1f}x")
    print("warm-up: the first call of each distinct batch shape (the step traces once "
          "in all without XLA, once per shape with it): "
          f"{runs['bucketed']['shapes']} shapes among the bucketed batches (padded to "
          f"bucket boundaries), {runs['own longest']['shapes']} when each batch is cut to "
          "its own longest caption")
    return 0


if __name__ == "__main__":
    sys.exit(main())
