"""`tfcaption run`: every stage of a pipeline in order, each skipped when its output is complete.

    source -> feature cache -> training -> evaluation -> SavedModel -> report

Each stage decides for itself whether its output is already complete (the
cache's manifest for the same examples, captions and settings, training's
finished.json, metrics.json for the same checkpoint content and beam, a
SavedModel exported from the same checkpoint content with the same search
settings, a report made from that SavedModel), so a run killed at any point
resumes at the stage it was in, a finished run does no work, and a stage whose
inputs changed is done again.
"""

from __future__ import annotations

import json
import logging
import os

from tfcaption.config import RunConfig

log = logging.getLogger("tfcaption.run")


def splits_to_cache(config: RunConfig) -> list[str]:
    """Train, validation and the scored split; a source without a test split
    (Flickr8k here) scores "val" and never asks for "test"."""
    return list(dict.fromkeys(["train", "val", config.eval.split]))


def prepare_source(config: RunConfig) -> dict | None:
    """The synthetic world is rendered on demand: it is deterministic from the config."""
    if config.data.source != "synthetic":
        return None
    from tfcaption.data import synthetic
    return synthetic.generate(config.data.root, seed=config.data.synthetic_seed,
                              counts=tuple(config.data.synthetic_counts),
                              image_size=config.data.synthetic_image_size)


def extract_splits(config: RunConfig, splits, shard=(0, 1)) -> list[dict]:
    """Caches each split (this machine's shards of it); prints one line per split.

    One backbone serves every split; extract() returns at once for a split whose
    cache is complete for the same inputs (source, split, backbone, weights, size).
    """
    from tfcaption.data import features
    extractor = features.Extractor(config)
    manifests = []
    for split in splits:
        manifest = features.extract(config, split, shard=shard, extractor=extractor)
        if manifest.get("complete"):
            print(f"features {features.manifest_summary(manifest)} -> "
                  f"{features.split_dir(config.features.cache_dir, split)}")
        else:
            print(f"features {split}: waiting for other workers, "
                  f"{len(manifest['missing_shards'])} shards missing")
        manifests.append(manifest)
    return manifests


def existing_export(config: RunConfig, checkpoint: str) -> str | None:
    """A complete version under saved_models/<name>/ made from the content of
    `checkpoint` with the pipeline's search settings and the decode.* settings
    its graph fixes (export.export_key), or None."""
    from tfcaption import evaluation, export, io
    from tfcaption.serving import complete_versions, model_info
    model_dir = io.join(config.eval.export_dir, config.name)
    wanted = export.export_key(config, checkpoint, config.eval.beam_size,
                               evaluation.max_len(config), config.eval.length_penalty)
    for version in reversed(complete_versions(model_dir)):
        path = io.join(model_dir, str(version))
        info = model_info(path)
        if all(info.get(k) == v for k, v in wanted.items()):
            return path
    return None


def export_stage(config: RunConfig, checkpoint: str) -> str:
    from tfcaption import evaluation, export
    found = existing_export(config, checkpoint)
    if found:
        log.info("export: %s already holds %s", found, checkpoint)
        return found
    ev = config.eval
    return export.export(config, out_root=ev.export_dir, beam_size=ev.beam_size,
                         max_len=evaluation.max_len(config), length_penalty=ev.length_penalty,
                         checkpoint=checkpoint)


def run(config: RunConfig, progress: bool = True) -> dict:
    """All stages; returns where each artifact went."""
    from tfcaption import checkpoints, evaluation, report, training
    from tfcaption.data import features

    # A setting training would refuse (model.decoder=lsmt) fails now, not after
    # the world is rendered and its features cached.
    training.check_config(config)
    world = prepare_source(config)
    if world:
        print(f"synthetic world: {json.dumps(world)}")
    splits = splits_to_cache(config)
    extract_splits(config, splits)
    caches = {s: features.split_dir(config.features.cache_dir, s) for s in splits}

    summary = training.train(config, progress=progress)
    print(f"training: {json.dumps(summary)}")
    checkpoint = checkpoints.chosen_checkpoint(config.train.train_dir)

    scores = evaluation.evaluate(config, checkpoint=checkpoint, progress=progress)
    model_path = export_stage(config, checkpoint)
    page = report.write_report(config, model_dir=model_path)

    artifacts = {
        "feature caches": caches,
        "checkpoint": checkpoint,
        "TensorBoard logs": os.path.join(config.train.train_dir, "logs"),
        "results": os.path.join(config.eval.out_dir, config.eval.split, "results.json"),
        "metrics": os.path.join(config.eval.out_dir, config.eval.split, "metrics.json"),
        "SavedModel": model_path,
        "report": page,
    }
    print(f"\nscores on the {config.eval.split} split "
          f"({getattr(config.data, f'{config.eval.split}_split')}), "
          + (f"sampled at temperature {config.decode.temperature}:"
             if config.eval.search == "sample" else f"beam {config.eval.beam_size}:"))
    for name, value in scores.get("metrics", scores).items():
        if isinstance(value, (int, float)):
            print(f"  {name:<10} {value:.4f}")
    correctness = scores.get("attention_correctness")
    if correctness and correctness.get("words"):
        print(f"attention on the {correctness['words']} generated words that name a boxed "
              f"object:\n  pointing   {correctness['pointing_accuracy']:.4f}  (chance "
              f"{correctness['chance']:.4f})\n  mass in box {correctness['mass_in_box']:.4f}")
    if summary["stopped"].startswith("time limit"):  # again, last, where it is seen
        print("\n" + training.time_limit_message(summary["step"], summary["total_steps"],
                                                  config.train.max_minutes))
    print("\nartifacts:")
    for name, where in artifacts.items():
        print(f"  {name:<17} {where}")
    return artifacts
