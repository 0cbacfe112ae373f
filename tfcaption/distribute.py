"""Strategies, who the chief is, input splitting and agreement across workers.

One process per worker runs the same program. Every decision that changes how
many steps a worker takes (stop for time, early stopping) goes through `agree`,
so no worker is left waiting in an all-reduce that the others have left.
"""

from __future__ import annotations

import tensorflow as tf

from tfcaption.data.pipeline import replica_slices


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


def task(strategy) -> tuple[str, int]:
    """(task type, index) of this process; ("", 0) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return "", 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy) -> bool:
    kind, index = task(strategy)
    return kind in ("", "chief") or (kind == "worker" and index == 0)


def workers(strategy) -> int:
    """Processes in the cluster (1 outside one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(kind, [])) for kind in ("chief", "worker"))


def distribute(strategy, make_dataset) -> tf.distribute.DistributedDataset:
    """make_dataset() -> global batches; each worker builds them all (the plan is
    deterministic) and keeps the per-replica slices of its own replicas, in
    replica order, so the global batch is the same whatever the cluster."""
    def per_worker(ctx: tf.distribute.InputContext):
        replicas = ctx.num_replicas_in_sync
        local = replicas // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local
        return replica_slices(make_dataset(), replicas, range(first, first + local))

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(per_worker, options=options)


def agree(strategy, flag: bool) -> bool:
    """True when `flag` is true on any worker; every worker gets the same answer."""
    if workers(strategy) == 1:
        return bool(flag)
    value = tf.constant(1.0 if flag else 0.0)
    per_replica = strategy.run(
        lambda v: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, v),
        args=(value,))
    return bool(strategy.experimental_local_results(per_replica)[0].numpy() > 0)
