"""The `tfcaption` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

SPLITS = ("train", "val", "test")


def _pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="a pipeline file, e.g. pipelines/synthetic.py")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. --set features.batch_size=16")


def _config(args):
    from tfcaption.pipelines import load_pipeline
    return load_pipeline(args.pipeline, args.overrides)


def _prepare_source(config) -> None:
    from tfcaption.runner import prepare_source
    summary = prepare_source(config)
    if summary:
        print(f"synthetic world: {json.dumps(summary)}")


def cmd_generate(args) -> int:
    _prepare_source(_config(args))
    return 0


def cmd_extract(args) -> int:
    from tfcaption.data.features import parse_shard_spec
    config = _config(args)
    _prepare_source(config)
    from tfcaption.runner import extract_splits, splits_to_cache
    splits = splits_to_cache(config) if args.split == "all" else (args.split,)
    extract_splits(config, splits, shard=parse_shard_spec(args.shard))
    return 0


def _train(config) -> dict:
    from tfcaption import training
    summary = training.train(config)
    print(f"training: {json.dumps(summary)}")
    return summary


def cmd_train(args) -> int:
    _train(_config(args))
    return 0


def cmd_export(args) -> int:
    from tfcaption import evaluation, export
    config = _config(args)
    ev = config.eval
    if args.format == "tflite":
        from tfcaption import tflite_export
        path = tflite_export.export_tflite(
            config, out_root=args.out or ev.export_dir, version=args.version,
            max_len=args.max_len or evaluation.max_len(config), checkpoint=args.checkpoint,
            float16=args.float16)
        print(f"TFLite model: {os.path.join(path, tflite_export.MODEL_FILE)}")
        return 0
    path = export.export(
        config, out_root=args.out or ev.export_dir, version=args.version,
        beam_size=args.beam or ev.beam_size, max_len=args.max_len or evaluation.max_len(config),
        length_penalty=ev.length_penalty if args.length_penalty is None else args.length_penalty,
        checkpoint=args.checkpoint)
    print(f"SavedModel: {path}")
    return 0


def cmd_caption(args) -> int:
    from tfcaption import serving
    results = serving.caption_files(args.images, args.model, beam=args.beam,
                                    attention_dir=args.attention_dir,
                                    num_captions=args.num_captions,
                                    temperature=args.temperature)
    for r in results:
        if args.json:
            print(json.dumps(r))
        elif "samples" in r:
            for s in r["samples"]:
                print(f"{r['image']}\t{s['caption']}")
        else:
            print(f"{r['image']}\t{r['caption']}" if "caption" in r
                  else f"{r['image']}\tERROR: {r['error']}")
    return 1 if any("error" in r for r in results) else 0


def cmd_evaluate(args) -> int:
    from tfcaption import evaluation
    config = _config(args)
    if args.split:
        config.eval.split = args.split
    if args.beam is not None:
        config.eval.beam_size = args.beam
    result = evaluation.evaluate(config, checkpoint=args.checkpoint)
    print(json.dumps({k: result[k] for k in ("metrics", "attention_correctness") if k in result}))
    return 0


def cmd_report(args) -> int:
    from tfcaption import report
    path = report.write_report(_config(args), model_dir=args.model, images=args.images)
    print(f"report: {path}")
    return 0


def cmd_run(args) -> int:
    """Every stage in order; a stage whose output is complete is skipped."""
    from tfcaption import runner
    runner.run(_config(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfcaption", description="Show, Attend and Tell image captioning on TensorFlow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline end to end (resumes where it stopped)")
    _pipeline_args(run)
    run.set_defaults(func=cmd_run)

    gen = sub.add_parser("generate", help="render the synthetic shapes world of a pipeline")
    _pipeline_args(gen)
    gen.set_defaults(func=cmd_generate)

    ext = sub.add_parser("extract", help="cache backbone features of a split as TFRecords")
    _pipeline_args(ext)
    ext.add_argument("--split", default="all", choices=SPLITS + ("all",),
                     help="all = train, val and the pipeline's eval.split")
    ext.add_argument("--shard", default="0/1", metavar="I/N",
                     help="this machine's part: shards k with k %% N == I (default 0/1)")
    ext.set_defaults(func=cmd_extract)

    tr = sub.add_parser("train", help="train the decoder on a cached split (resumes)")
    _pipeline_args(tr)
    tr.set_defaults(func=cmd_train)

    exp = sub.add_parser("export", help="write the trained captioner as a SavedModel")
    _pipeline_args(exp)
    exp.add_argument("--out", default=None,
                     help="root of NAME/VERSION (default: eval.export_dir, saved_models)")
    exp.add_argument("--version", type=int, default=None, help="default: the next integer")
    exp.add_argument("--beam", type=int, default=None,
                     help="beam size fixed in the graph, 1 = greedy (default: eval.beam_size)")
    exp.add_argument("--max-len", type=int, default=None,
                     help="default: eval.max_len, else max caption words + 2")
    exp.add_argument("--length-penalty", type=float, default=None,
                     help="default: eval.length_penalty")
    exp.add_argument("--checkpoint", default=None, help="default: the best, else the latest")
    exp.add_argument("--format", default="savedmodel", choices=("savedmodel", "tflite"),
                     help="tflite: greedy search on uint8 images of the input size, "
                     "written to OUT/NAME-tflite/VERSION/ with vocab.txt")
    exp.add_argument("--float16", action="store_true",
                     help="with --format tflite: float16 weights, half the file (default "
                          "float32, the SavedModel's tokens exactly)")
    exp.set_defaults(func=cmd_export)

    cap = sub.add_parser("caption", help="caption image files with an exported SavedModel")
    cap.add_argument("images", nargs="+")
    cap.add_argument("--model", required=True, help="saved_models/NAME/VERSION")
    cap.add_argument("--beam", type=int, default=None,
                     help="1 = the greedy signature; default: the beam size exported")
    cap.add_argument("--num-captions", type=int, default=None, metavar="N",
                     help="sample N captions per image (the \"sample\" signature) instead "
                     "of searching")
    cap.add_argument("--temperature", type=float, default=1.0,
                     help="with --num-captions: < 1 sharper, 0 = greedy (default: 1.0)")
    cap.add_argument("--json", action="store_true", help="one JSON object per line")
    cap.add_argument("--attention-dir", default=None, help="also write a heatmap figure per image")
    cap.set_defaults(func=cmd_caption)

    ev = sub.add_parser("evaluate", help="decode a split and score it (coco-caption metrics, "
                        "attention correctness)")
    _pipeline_args(ev)
    ev.add_argument("--split", default=None, choices=("val", "test"),
                    help="default: the pipeline's eval.split")
    ev.add_argument("--beam", type=int, default=None,
                    help="beam size (1 = greedy); default: the pipeline's eval.beam_size")
    ev.add_argument("--checkpoint", default=None, help="default: the best, else the latest")
    ev.set_defaults(func=cmd_evaluate)

    rep = sub.add_parser("report", help="one self-contained HTML page: captions, references, "
                         "attention heatmaps, scores")
    _pipeline_args(rep)
    rep.add_argument("--model", default=None,
                     help="saved_models/NAME/VERSION; default: the newest export of the pipeline")
    rep.add_argument("--images", type=int, default=None,
                     help="how many images of the eval split; default: eval.report_images")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # absl (checkpoint sharding) logs at INFO through the root logger: not ours to show.
    logging.getLogger("absl").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        # Expected failures (bad input, missing cache, NaN loss): one clear line.
        print(f"tfcaption {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
