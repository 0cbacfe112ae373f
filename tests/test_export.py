"""The SavedModel stands alone: a process that cannot import tfcaption (nor
tensorflow-text) loads it and gets the eager decoder's tokens; TF1-style loading
(`saved_model_cli run`, as TF Serving does) works; the graph holds core ops only;
bad requests fail cleanly; the `tfcaption caption` command uses it.

One tiny model is trained and exported twice (beam 3 and beam 1) for the whole
module, and one fresh subprocess does all of its checks at once and reports as
JSON: importing TensorFlow in a new process costs more than everything it runs.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import types

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import checkpoints, cli, decoding, export, serving, training
from tfcaption.data import features
from tfcaption.data.pipeline import max_tokens
from tfcaption.models.backbones import build_backbone
from tests.test_training import tiny_run

# A Python without tfcaption, saved_model_cli and the caption command are processes.
pytestmark = pytest.mark.integration

SITE_PACKAGES = sysconfig.get_paths()["purelib"]
VENV_BIN = pathlib.Path(sys.executable).parent
FORBIDDEN_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "NumpyFunction"}
OUTPUTS = ("caption", "tokens", "lengths", "scores", "attention")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained tiny run exported as its eval config says (beam 3), plus a beam-1
    export, and the images and bytes the tests send."""
    root = tmp_path_factory.mktemp("export")
    config = tiny_run(root)
    config.eval.beam_size = 3
    config.eval.export_dir = str(root / "saved_models")
    for split in ("train", "val"):
        features.extract(config, split)
    training.train(config, progress=False)
    ev = config.eval
    saved, save = [], tf.saved_model.save  # the module saved, for its trace counts

    def recording_save(module, *args, **kwargs):
        saved.append(module)
        return save(module, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf.saved_model, "save", recording_save)
        beam = export.export(config, out_root=ev.export_dir, beam_size=ev.beam_size,
                             length_penalty=ev.length_penalty)
    greedy = export.export(config, out_root=ev.export_dir, beam_size=1, name="tiny_greedy")
    # RGB, PNG, grayscale and CMYK JPEGs, PNG again (see fixtures.make_images).
    images = [root / "img" / f"{i:04d}.{'png' if i % 4 == 1 else 'jpg'}" for i in range(6)]
    jpeg, png = images[0].read_bytes(), images[1].read_bytes()
    bad = {"not_an_image": [jpeg, b"not an image"],
           "truncated_jpeg": [jpeg[: len(jpeg) // 3]],
           "truncated_png": [png, png[: len(png) // 3]]}
    return types.SimpleNamespace(config=config, root=root, beam=beam, greedy=greedy,
                                 images=images, blobs=[p.read_bytes() for p in images],
                                 bad=bad, info=serving.model_info(beam), module=saved[0])


def test_each_signature_is_traced_once(exported):
    """tf.saved_model.save traces again what was traced outside a save context;
    the export traces its signatures inside one (export.traced_as_save_traces)."""
    module = exported.module
    functions = (module.caption_images, module.greedy_images, module.caption_features,
                 module.sample_images)
    assert [f.experimental_get_tracing_count() for f in functions] == [1, 1, 1, 1]


@pytest.fixture(scope="module")
def eager(exported):
    return eager_outputs(exported.config, exported.blobs, exported.info)


def eager_outputs(config, blobs, info, decoder=None):
    """What the code in this process computes from config's checkpoint (or
    `decoder`) for the image bytes `blobs`: the cache's image decoding and
    preprocessing, the backbone (its bottom, with features.trainable_from),
    decoding.beam / greedy with the search settings of the export `info` and
    config.decode.no_repeat_ngram, which the export fixes in its graph. ->
    beam, greedy (dicts of OUTPUTS) and the backbone's grid."""
    restored, tokenizer, _, _ = checkpoints.restore_decoder(config)
    decoder = decoder or restored
    fc = config.features
    backbone = build_backbone(fc.backbone, weights=fc.weights, input_size=fc.input_size,
                              seed=fc.seed, trainable_from=fc.trainable_from)
    images = tf.stack([backbone.preprocess(features.decode_image(tf.constant(b)))
                       for b in blobs])
    grid = backbone(images)
    h, w, c = info["grid"]
    flat = tf.reshape(grid, [-1, h * w, c])
    no_repeat = config.decode.no_repeat_ngram
    beam = decoding.beam(decoder, flat, info["beam_size"], info["max_len"],
                         info["length_penalty"], no_repeat)
    greedy = decoding.greedy(decoder, flat, info["max_len"], no_repeat)
    as_dict = lambda found: {  # noqa: E731
        "caption": [c.decode() for c in tokenizer.detokenize(found[0]).numpy()],
        **{k: v.numpy() for k, v in zip(OUTPUTS[1:], found)}}
    return types.SimpleNamespace(beam=as_dict(beam), greedy=as_dict(greedy), grid=grid.numpy())


# Runs with `python -I -S`: no PYTHONPATH, no cwd, no user site and no .pth files,
# so the editable install of tfcaption is invisible; only TensorFlow's folder is
# put on the path. Everything it learns goes into one JSON report on stdout.
FRESH_PROCESS = r"""
import json, sys
args = json.loads(sys.argv[1])
sys.path.append(args["site_packages"])
try:
    import tfcaption
    report = {"tfcaption_importable": tfcaption.__file__}
except ImportError:
    report = {"tfcaption_importable": False}

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

def op_types(model_dir):
    proto = saved_model_pb2.SavedModel()
    with open(model_dir + "/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    functions = {f.signature.name for f in graph.library.function}
    ops = {n.op for n in graph.node}
    ops |= {n.op for f in graph.library.function for n in f.node_def}
    return sorted(ops - functions), len(functions)

def outputs(out):
    return {k: v.numpy().tolist() if v.dtype != tf.string else
            np.char.decode(v.numpy().astype(bytes), "utf-8").tolist() for k, v in out.items()}

for name, model_dir in args["models"].items():
    ops, functions = op_types(model_dir)  # before loading: TensorFlow's own registry
    report[name] = {"ops": ops, "functions": functions,
                    "unregistered": [op for op in ops if op_def_registry.get(op) is None]}
    model = tf.saved_model.load(model_dir)
    blobs = tf.constant([bytes.fromhex(b) for b in args["blobs"]])
    for sig in ("serving_default", "greedy"):
        report[name][sig] = outputs(model.signatures[sig](image_bytes=blobs))
        empty = model.signatures[sig](image_bytes=tf.zeros([0], tf.string))
        report[name][sig + "_empty"] = {k: v.shape.as_list() for k, v in empty.items()}
    grid = tf.constant(np.load(args["grid"]))
    report[name]["caption_features"] = outputs(
        model.signatures["caption_features"](features=grid))
    sample = lambda temperature: outputs(model.signatures["sample"](
        image_bytes=blobs, num_captions=tf.constant(3), temperature=tf.constant(temperature)))
    report[name]["sample"] = {"cold": sample(0.0), "warm": sample(1.0), "again": sample(1.0)}
    report[name]["bad"] = {}
    for case, batch in args["bad"].items():
        try:
            model.signatures["serving_default"](
                image_bytes=tf.constant([bytes.fromhex(b) for b in batch]))
            report[name]["bad"][case] = {"error": None}
        except Exception as err:
            report[name]["bad"][case] = {"error": type(err).__name__,
                                         "message": getattr(err, "message", str(err))}

report["tensorflow_text_imported"] = any(m.startswith("tensorflow_text") for m in sys.modules)
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def fresh(exported, eager, tmp_path_factory):
    return fresh_report({"beam": exported.beam, "greedy": exported.greedy}, exported.blobs,
                        eager.grid, exported.bad, tmp_path_factory.mktemp("fresh"))


def fresh_report(models: dict, blobs: list, grid, bad: dict, cwd) -> dict:
    """FRESH_PROCESS's report on the SavedModels `models` (name -> folder), all
    in one new process: the outputs of each signature for the image bytes
    `blobs` and for the backbone grid `grid`, and how the `bad` requests
    (case -> list of bytes) fail."""
    np.save(cwd / "grid.npy", grid)
    args = {"site_packages": SITE_PACKAGES, "grid": str(cwd / "grid.npy"), "models": models,
            "blobs": [b.hex() for b in blobs],
            "bad": {k: [b.hex() for b in v] for k, v in bad.items()}}
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), "TF_CPP_MIN_LOG_LEVEL": "2"}
    # The timeout is the "bad input does not hang" check as well.
    done = subprocess.run([sys.executable, "-I", "-S", "-c", FRESH_PROCESS, json.dumps(args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def assert_same_outputs(served: dict, expected: dict):
    np.testing.assert_array_equal(np.array(served["tokens"]), expected["tokens"])
    np.testing.assert_array_equal(np.array(served["lengths"]), expected["lengths"])
    assert served["caption"] == expected["caption"]
    np.testing.assert_allclose(served["scores"], expected["scores"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(served["attention"]).reshape(expected["attention"].shape),
                               expected["attention"], atol=1e-4)


def test_fresh_process_without_tfcaption_matches_the_eager_decoder(exported, eager, fresh):
    assert fresh["tfcaption_importable"] is False
    assert not fresh["tensorflow_text_imported"]
    beam = fresh["beam"]
    assert_same_outputs(beam["serving_default"], eager.beam)
    assert_same_outputs(beam["greedy"], eager.greedy)
    assert_same_outputs(beam["caption_features"], eager.beam)  # features in, same search
    # The test would prove little if every caption were empty.
    assert any(eager.greedy["lengths"] > 1)
    assert np.array(beam["serving_default"]["attention"]).shape[1:] == \
        (exported.info["max_len"], *exported.info["grid"][:2])


def test_beam_one_is_greedy_and_beam_never_scores_below_greedy(fresh):
    greedy_export = fresh["greedy"]["serving_default"]
    for key in ("tokens", "lengths", "caption"):
        assert greedy_export[key] == fresh["beam"]["greedy"][key]
        assert greedy_export[key] == fresh["greedy"]["greedy"][key]
    beam_scores = np.array(fresh["beam"]["serving_default"]["scores"])
    greedy_scores = np.array(fresh["beam"]["greedy"]["scores"])
    assert (beam_scores >= greedy_scores - 1e-5).all()


def test_graph_holds_only_core_tensorflow_ops(fresh):
    for name in ("beam", "greedy"):
        ops = set(fresh[name]["ops"])
        assert fresh[name]["functions"] > 0  # the walk did reach the function library
        assert {"While", "DecodeImage", "LookupTableFindV2", "Conv2D"} <= ops
        assert not ops & FORBIDDEN_OPS
        assert fresh[name]["unregistered"] == []


def test_bad_images_fail_the_request_with_a_decoding_error(fresh):
    for name in ("beam", "greedy"):
        bad = fresh[name]["bad"]
        for case, result in bad.items():
            assert result["error"] == "InvalidArgumentError", (case, result)
            assert re.search("decod", result["message"], re.I), (case, result["message"])
        assert "image decoding failed" in bad["not_an_image"]["message"]
        assert "JPEG" in bad["truncated_jpeg"]["message"]
        assert "PNG" in bad["truncated_png"]["message"]


def test_empty_batch_returns_empty_outputs_of_the_right_rank(exported, fresh):
    t, (h, w, _) = exported.info["max_len"], exported.info["grid"]
    expected = {"caption": [0], "tokens": [0, t], "lengths": [0], "scores": [0],
                "attention": [0, t, h, w]}
    for name in ("beam", "greedy"):
        for sig in ("serving_default", "greedy"):
            assert fresh[name][sig + "_empty"] == expected


def test_export_info_places_the_attention_cells(exported):
    """Heatmaps read the cells' receptive-field centres from the export info."""
    h, w, _ = exported.info["grid"]
    centres = exported.info["cell_centres"]
    assert len(centres["rows"]) == h and len(centres["cols"]) == w
    assert all(0 < a < b < 1 for a, b in zip(centres["rows"], centres["rows"][1:]))
    # What a runner compares to decide on a re-export.
    assert exported.info["decode_settings"] == decoding.decode_settings(exported.config)


def saved_model_cli(*args) -> subprocess.Popen:
    return subprocess.Popen([str(VENV_BIN / "saved_model_cli"), *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def finished(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    return out


def signature_shapes(show: str, signature: str) -> dict:
    """{"inputs": {name: shape}, "outputs": {name: shape}} of one signature as
    `saved_model_cli show --all` prints it."""
    block = show.split(f"signature_def['{signature}']:", 1)[1].split("signature_def[", 1)[0]
    block = block.split("Method name is", 1)[0]
    inputs, _, outputs = block.partition("output(s):")
    pattern = r"\['(\w+)'\] tensor_info:\s+dtype: \w+\s+shape: (\([-\d, ]*\))"
    return {part: {k: v for k, v in re.findall(pattern, text)}
            for part, text in (("inputs", inputs), ("outputs", outputs))}


def test_saved_model_cli_show_and_run_as_the_readme_says(exported, fresh, tmp_path):
    t, (h, w, c) = exported.info["max_len"], exported.info["grid"]
    assert t == max_tokens(exported.config.data.max_caption_words)
    # saved_models/README.md, verbatim but for the paths. `run` loads the model
    # the TF1 way, as TF Serving does (variables restored by the saver, not by
    # object graph).
    readme = (pathlib.Path(__file__).parents[1] / "saved_models" / "README.md").read_text()
    assert "np.save('/tmp/in.npy', np.array([open('img.jpg','rb').read()], dtype=object))" \
        in readme
    assert "--signature_def serving_default --inputs image_bytes=/tmp/in.npy" in readme
    np.save(tmp_path / "in.npy", np.array(exported.blobs[:2], dtype=object))
    run = saved_model_cli("run", "--dir", exported.beam, "--tag_set", "serve", "--signature_def",
                          "serving_default", "--inputs", f"image_bytes={tmp_path / 'in.npy'}",
                          "--outdir", str(tmp_path / "out"))
    show = finished(saved_model_cli("show", "--dir", exported.beam, "--all"))
    finished(run)
    outputs = {"caption": "(-1)", "tokens": f"(-1, {t})", "lengths": "(-1)", "scores": "(-1)",
               "attention": f"(-1, {t}, {h}, {w})"}
    assert signature_shapes(show, "serving_default") == {
        "inputs": {"image_bytes": "(-1)"}, "outputs": outputs}
    assert signature_shapes(show, "greedy") == {
        "inputs": {"image_bytes": "(-1)"}, "outputs": outputs}
    assert signature_shapes(show, "caption_features") == {
        "inputs": {"features": f"(-1, {h}, {w}, {c})"}, "outputs": outputs}
    tokens = np.load(tmp_path / "out" / "tokens.npy")
    np.testing.assert_array_equal(tokens, fresh["beam"]["serving_default"]["tokens"][:2])


def test_caption_command_json_errors_and_attention_figures(exported, fresh, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    missing = tmp_path / "missing.jpg"
    good = [str(p) for p in exported.images[:2]]
    paths = [good[0], str(bad), good[1], str(missing)]
    figures = tmp_path / "figures"
    code = cli.main(["caption", *paths, "--model", exported.beam, "--json",
                     "--attention-dir", str(figures)])
    assert code == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert [r["image"] for r in lines] == paths
    served = fresh["beam"]["serving_default"]
    for i, r in zip((0, 1), (lines[0], lines[2])):
        assert "error" not in r
        assert r["caption"] == served["caption"][i]
        assert r["tokens"] == served["tokens"][i][: served["lengths"][i]]
        assert r["score"] == pytest.approx(served["scores"][i], abs=1e-4)
        stem = figures / pathlib.Path(r["image"]).stem
        for ext in (".png", ".pdf"):
            assert (stem.with_suffix(ext)).stat().st_size > 0
    assert "image decoding failed" in lines[1]["error"]
    assert "No such file" in lines[3]["error"]
    assert sorted(p.name for p in figures.iterdir()) == sorted(
        pathlib.Path(g).stem + ext for g in good for ext in (".pdf", ".png"))


def test_caption_command_beam_one_uses_the_greedy_signature(exported, fresh, capsys):
    code = cli.main(["caption", str(exported.images[0]), "--model", exported.beam, "--json",
                     "--beam", "1"])
    assert code == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert line["caption"] == fresh["beam"]["greedy"]["caption"][0]
    with pytest.raises(ValueError, match="exported with beam size 3"):
        serving.signature_for(None, exported.beam, 5)


def test_sample_signature_draws_n_captions_per_image(exported, fresh):
    greedy, sampled = fresh["beam"]["greedy"], fresh["beam"]["sample"]
    images, t, (h, w, _) = len(exported.blobs), exported.info["max_len"], exported.info["grid"]
    # Temperature 0 is greedy search, N times over.
    cold = sampled["cold"]
    assert cold["caption"] == [[c] * 3 for c in greedy["caption"]]
    assert cold["tokens"] == [[row] * 3 for row in greedy["tokens"]]
    np.testing.assert_allclose(cold["scores"], np.repeat(np.array(greedy["scores"])[:, None],
                                                         3, 1), rtol=1e-5, atol=1e-5)
    warm = sampled["warm"]
    assert np.array(warm["attention"]).shape == (images, 3, t, h, w)
    assert np.array(warm["caption"]).shape == (images, 3)
    assert (np.array(warm["scores"]) <= 0).all() and warm == sampled["again"]  # fixed seed
    for row, n in zip(np.array(warm["tokens"]).reshape(-1, t), np.ravel(warm["lengths"])):
        assert n >= 1 and not row[n:].any()


def test_caption_command_samples_with_num_captions(exported, fresh, capsys):
    code = cli.main(["caption", str(exported.images[0]), "--model", exported.beam, "--json",
                     "--num-captions", "3", "--temperature", "0"])
    assert code == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    greedy = fresh["beam"]["greedy"]["caption"][0]
    assert line["caption"] == greedy and [s["caption"] for s in line["samples"]] == [greedy] * 3


def test_same_file_names_in_two_folders_get_their_own_figures(exported, tmp_path, capsys):
    blob = pathlib.Path(exported.images[0]).read_bytes()
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "photo.jpg")
        paths[-1].write_bytes(blob)
    figures = tmp_path / "figures"
    assert cli.main(["caption", *map(str, paths), "--model", exported.beam,
                     "--attention-dir", str(figures)]) == 0
    assert sorted(p.name for p in figures.iterdir()) == [
        "photo-2.pdf", "photo-2.png", "photo.pdf", "photo.png"]
