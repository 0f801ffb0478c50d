"""The command line, through subprocesses, on the session's backend."""

import dataclasses
import json
import os
import runpy
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from conftest import (
    BACKEND,
    randomize,
    save_safetensors,
    serve,
    small_model,
    timm_convmixer,
    to_numpy,
)
from digits import digits_32
from PIL import Image

import keras_convmixer
from keras_convmixer import cli as cli_module
from keras_convmixer import pretrained, training

TINY = "convmixer_16_2_k3_p2"
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def cli(*args, env=None, timeout=600):
    environment = {**os.environ, "KERAS_BACKEND": BACKEND, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "keras_convmixer", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(result, message):
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("keras-convmixer:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file(timm_convmixer(16, 2, 3, 2, classes=1000, seed=5).state_dict(), str(path))
    return str(path)


def test_info():
    result = cli("info")
    assert result.returncode == 0, result.stderr
    assert f"backend {BACKEND}" in result.stdout and "weights cache" in result.stdout
    assert "convmixer_1536_20    ImageNet top-1 81.37" in result.stdout


def test_backend_flag_switches_backend():
    other = "jax" if BACKEND != "jax" else "torch"
    result = cli("info", "--backend", other)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"backend {other}" in result.stdout


@pytest.mark.skipif(BACKEND == "tensorflow", reason="Keras imports TensorFlow on its backend")
def test_commands_without_tf_data_run_without_tensorflow(tiny_checkpoint, tmp_path):
    """`pip install keras-convmixer[jax]` (or [torch]) installs no TensorFlow: the command line
    builds its parser, predicts, benchmarks and converts without it. `train` and `evaluate`
    (tf.data) and a SavedModel export from JAX need it, and say what to install."""
    blocked = "import sys; sys.modules['tensorflow'] = None; from keras_convmixer.cli import main"

    def run(*args):
        return subprocess.run(
            [sys.executable, "-c", f"{blocked}; raise SystemExit(main(sys.argv[1:]))", *args],
            env={**os.environ, "KERAS_BACKEND": BACKEND},
            capture_output=True,
            text=True,
            timeout=600,
        )

    converted = str(tmp_path / "tiny.weights.h5")
    runs = [
        ["--help"],
        ["predict", "--model", TINY, "--weights", tiny_checkpoint, "--top", "1"],
        ["benchmark", "--model", TINY, "--image-size", "32", "--batch", "2", "--repeats", "1"],
        ["convert", tiny_checkpoint, converted, "--model", TINY],
    ]
    for args in runs:
        result = run(*args)
        assert result.returncode == 0, (args, result.stderr[-2000:])
    assert os.path.getsize(converted) > 0
    train = run("train", "--model", TINY, "--tfds", "cifar10", "--output", str(tmp_path / "t"))
    assert_user_error(train, "need TensorFlow on every backend: pip install tensorflow-cpu")
    if BACKEND == "jax":
        export = run("export", str(tmp_path / "served"), "--model", TINY, "--weights", converted)
        assert_user_error(export, "SavedModel export need TensorFlow")


def test_a_missing_optional_package_is_named_with_what_to_install(monkeypatch, capsys):
    def needs(module):
        def command(args):
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)

        return command

    for module, hint in cli_module.INSTALL_HINTS.items():
        monkeypatch.setattr(cli_module, "cmd_info", needs(module))
        assert cli_module.main(["info"]) == 2
        assert capsys.readouterr().err == f"keras-convmixer: error: {hint}\n"
        assert f"pip install {module.replace('_', '-')}" in hint or module == "tensorflow"
    monkeypatch.setattr(cli_module, "cmd_info", needs("a_bug"))  # not an optional package
    with pytest.raises(ModuleNotFoundError):
        cli_module.main(["info"])


def test_predict_classifies_the_bundled_photo(tiny_checkpoint, capsys):
    result = cli("predict", "--model", TINY, "--weights", tiny_checkpoint)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sample_cat.png")
    assert [line.split(".")[0].strip() for line in lines[1:6]] == ["1", "2", "3", "4", "5"]
    args = ["predict", "--model", TINY, "--weights", tiny_checkpoint, "--json", "--top", "3"]
    assert cli_module.main(args) == 0
    rows = next(iter(json.loads(capsys.readouterr().out).values()))
    assert len(rows) == 3 and rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    assert all(row["wnid"].startswith("n") for row in rows)


def test_predict_with_a_saved_model_names_its_classes(tmp_path, capsys):
    from keras_convmixer.imagenet import eval_transform

    model = small_model(classifier_activation="softmax")  # 5 classes, any image size
    model.save(tmp_path / "model.keras")
    names = ["ant", "bee", "cat", "dog", "eel"]
    (tmp_path / "classes.json").write_text(json.dumps(names))
    args = ["predict", "--weights", str(tmp_path / "model.keras"), "--recipe", "cifar10"]
    assert cli_module.main([*args, "--json", "--top", "2"]) == 0
    (rows,) = json.loads(capsys.readouterr().out).values()
    cifar = training.get_recipe("cifar10")
    image = eval_transform(cli_module.read_image(cli_module.sample_image_path()), 32, 1.0)
    probs = model.predict(((image / 255.0 - cifar.mean) / cifar.std)[None], verbose=0)[0]
    order = np.argsort(-probs)[:2]
    assert [row["label"] for row in rows] == [names[i] for i in order]
    np.testing.assert_allclose([row["score"] for row in rows], probs[order], atol=2e-6)
    (tmp_path / "classes.json").write_text(json.dumps(names[:3]))
    assert cli_module.main(args) == 2
    assert "3 class names for a model of 5 classes" in capsys.readouterr().err
    (tmp_path / "classes.json").unlink()
    assert cli_module.main(args) == 0
    assert "  1. class " in capsys.readouterr().out
    # a 10-class checkpoint, e.g. from a hub, with its names
    checkpoint = save_safetensors(timm_convmixer(16, 2, 3, 2), tmp_path / "ten.safetensors")
    (tmp_path / "ten.json").write_text(json.dumps([f"digit {i}" for i in range(10)]))
    ten = ["--model", TINY, "--weights", checkpoint, "--classes-file", str(tmp_path / "ten.json")]
    assert cli_module.main(["predict", *ten, "--classes", "10", "--json"]) == 0
    (rows,) = json.loads(capsys.readouterr().out).values()
    assert len(rows) == 5 and all(row["label"].startswith("digit ") for row in rows)


def predicted(model, path, size, crop, mean, std) -> np.ndarray:
    """The model's probabilities for an image file through an evaluation transform."""
    from keras_convmixer.imagenet import eval_transform, preprocess_input

    image = eval_transform(cli_module.read_image(path), size, crop)
    x = preprocess_input(image[None], "channels_last", mean=mean, std=std)
    return to_numpy(model.predict(x, verbose=0))[0]


def test_predict_and_convert_read_the_checkpoints_config_json(hub, tmp_path, monkeypatch, capsys):
    """A checkpoint in timm's Hub layout brings its architecture, classes, label names and
    evaluation transform (config.json), from the hub or beside a local file."""
    model = randomize(keras_convmixer.ConvMixer(16, 2, 3, 7, classes=3))  # "convmixer_tiny"
    names = ["daisy", "rose", "tulip"]
    timm_cfg = {"input_size": [3, 40, 40], "crop_pct": 0.8, "mean": [0.5] * 3, "std": [0.25] * 3}
    folder = hub["root"] / "someone" / "flowers" / "resolve" / "main"
    pretrained.save_timm(model, folder, label_names=names, data_config=timm_cfg)
    photo = cli_module.sample_image_path()
    probs = predicted(model, photo, 40, 0.8, timm_cfg["mean"], timm_cfg["std"])
    local = str(folder / "model.safetensors")
    for weights in ("hf://someone/flowers", local, str(folder)):
        with serve(hub["root"]) as endpoint:
            monkeypatch.setenv("HF_ENDPOINT", endpoint)
            assert cli_module.main(["predict", "--weights", weights, "--json"]) == 0
        (rows,) = json.loads(capsys.readouterr().out).values()
        assert [row["label"] for row in rows] == [names[i] for i in np.argsort(-probs)]
        np.testing.assert_allclose([row["score"] for row in rows], np.sort(probs)[::-1], atol=2e-6)
    assert cli_module.main(["predict", "--weights", str(folder), "--classes", "5"]) == 2
    assert f"{folder} has 3 classes, not 5" in capsys.readouterr().err
    assert cli_module.main(["info"]) == 0
    assert (
        "  hf://someone/flowers@main  config.json, model.safetensors  (" in capsys.readouterr().out
    )
    # A config.json beside a file of another name is not the checkpoint's.
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "config.json").write_text((folder / "config.json").read_text())
    (other / "flowers.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    assert pretrained.timm_config(str(other / "flowers.safetensors")) is None
    (other / "model.safetensors").write_bytes(b"")
    (other / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not timm's config.json: Expecting"):
        pretrained.timm_config(str(other))
    # Once downloaded, both files come from the cache; a repository without config.json is
    # not asked again for it once its weights are there.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert cli_module.main(["predict", "--weights", "hf://someone/flowers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    os.remove(
        os.path.join(pretrained.cache_dir(), "hub", "someone", "flowers", "main", "config.json")
    )
    asked = []
    monkeypatch.setattr(pretrained, "_fetch", lambda url, near: asked.append(url))
    assert pretrained.timm_config("hf://someone/flowers") is None and asked == []
    # Back to Keras without --model or --classes: config.json names them.
    back_file = str(tmp_path / "back.weights.h5")
    assert cli_module.main(["convert", str(folder), back_file, "--compare-timm"]) == 0
    assert "max |output difference| against timm" in capsys.readouterr().out
    back = keras_convmixer.ConvMixer(16, 2, 3, 7, classes=3, weights=back_file)
    # train keeps the classifier of a checkpoint with as many classes as the data
    kept = cli_module.build_model("convmixer_tiny", str(folder), 3, fine_tune=True)
    for loaded in (back, kept):
        for ours, theirs in zip(model.weights, loaded.weights, strict=True):
            np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs), err_msg=ours.path)


def test_a_repository_without_config_json_is_asked_for_it_once(hub, monkeypatch, capsys):
    """predict looks the class count up several times; the network is asked once."""
    folder = hub["root"] / "someone" / "bare" / "resolve" / "main"
    folder.mkdir(parents=True)
    save_safetensors(timm_convmixer(16, 2, 3, 7, classes=10), folder / "model.safetensors")
    asked, fetch = [], pretrained._fetch
    monkeypatch.setattr(
        pretrained, "_fetch", lambda url, near: asked.append(url) or fetch(url, near)
    )
    args = ["predict", "--model", "convmixer_tiny", "--weights", "hf://someone/bare", "--classes"]
    with serve(hub["root"]) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        assert cli_module.main([*args, "10", "--json"]) == 0
    assert [url.rsplit("/", 1)[-1] for url in asked] == ["config.json", "model.safetensors"]
    assert len(next(iter(json.loads(capsys.readouterr().out).values()))) == 5


def test_predict_classifies_a_folder_in_batches(tmp_path, capsys):
    model = small_model(classifier_activation="softmax")
    model.save(tmp_path / "model.keras")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(4)
    for name in ("b.png", "a.JPG", "c.webp"):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(photos / name)
    (photos / "notes.txt").write_text("not an image")
    args = ["predict", str(photos), "--weights", str(tmp_path / "model.keras"), "--json"]
    assert cli_module.main([*args, "--batch-size", "2", "--recipe", "cifar10", "--top", "5"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert list(results) == [str(photos / name) for name in ("a.JPG", "b.png", "c.webp")]
    cifar = training.get_recipe("cifar10")
    for path, rows in results.items():
        probs = predicted(model, path, 32, 1.0, cifar.mean, cifar.std)
        np.testing.assert_allclose([row["score"] for row in rows], np.sort(probs)[::-1], atol=2e-6)
    (tmp_path / "empty").mkdir()
    assert cli_module.main(["predict", str(tmp_path / "empty")]) == 2
    assert "no image files (.jpg, " in capsys.readouterr().err


def test_convert_writes_keras_weights_with_the_same_outputs(tiny_checkpoint, tmp_path):
    out = tmp_path / "tiny.weights.h5"
    result = cli("convert", tiny_checkpoint, str(out), "--model", TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {out}  sha256 " in result.stdout
    import keras_convmixer

    a = keras_convmixer.ConvMixer(16, 2, 3, 2, weights=tiny_checkpoint, classifier_activation=None)
    b = keras_convmixer.ConvMixer(16, 2, 3, 2, weights=str(out), classifier_activation=None)
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(a.predict(x, verbose=0)), np.asarray(b.predict(x, verbose=0)), atol=1e-6
    )


def test_convert_a_keras_model_to_timm(tmp_path):
    """`convert MODEL.keras FOLDER`, e.g. what `train` saved, in timm's layout."""
    from safetensors.numpy import load_file
    from timm_shim import import_timm

    model = small_model(input_shape=(16, 16, 3), classifier_activation="softmax")
    source = tmp_path / "model.keras"
    model.save(source)
    out = tmp_path / "timm"
    result = cli("convert", str(source), str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {out / 'model.safetensors'}  sha256 " in result.stdout
    assert "no config.json: timm has no registered architecture" in result.stdout
    assert os.listdir(out) == ["model.safetensors"]
    written, expected = load_file(out / "model.safetensors"), pretrained.timm_state_dict(model)
    assert sorted(written) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)
    assert import_timm() is not None
    # --compare-timm's check, with the model's softmax applied to timm's logits
    assert cli_module.compare_with_timm(model, str(out / "model.safetensors")) < 1e-6


def test_convert_takes_the_class_names_beside_a_keras_model(tmp_path):
    model = keras_convmixer.ConvMixer1024_20(classes=2, input_shape=(28, 28, 3))
    model.save(tmp_path / "model.keras")
    (tmp_path / "classes.json").write_text(json.dumps(["cat", "dog"]))
    recipe = training.get_recipe("cifar10", image_size=28, crop_pct=0.9)
    (tmp_path / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe)))
    assert cli_module.main(["convert", str(tmp_path / "model.keras"), str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architecture"] == "convmixer_1024_20_ks9_p14"
    assert config["label_names"] == ["cat", "dog"]
    # The evaluation transform of the run's recipe.json, which predict reads back.
    timm_cfg = config["pretrained_cfg"]
    assert timm_cfg["input_size"] == [3, 28, 28] and timm_cfg["crop_pct"] == 0.9
    assert (timm_cfg["mean"], timm_cfg["std"]) == (list(recipe.mean), list(recipe.std))
    args = cli_module.parser().parse_args(["predict", "--weights", str(tmp_path / "hf")])
    assert cli_module.recipe_from_args(args) == training.get_recipe(
        "imagenet", image_size=28, crop_pct=0.9, mean=recipe.mean, std=recipe.std
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["x.safetensors", "o.h5", "--model", TINY], "the output must be FILE.weights.h5"),
        (["m.keras", "o.safetensors", "--model", TINY], "--model and --classes build a model"),
        (["m.keras", "o.safetensors", "--classes", "3"], "--model and --classes build a model"),
        (["x.safetensors", "o.weights.h5"], "--model is needed to read x.safetensors"),
        (["m.weights.h5", "o.weights.h5", "--compare-timm"], "needs a timm/PyTorch checkpoint"),
    ],
)
def test_convert_refuses_what_it_cannot_do(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    small_model(input_shape=(16, 16, 3)).save("m.keras")
    keras_convmixer.ConvMixer(16, 2, 3, 2).save_weights("m.weights.h5")
    if "--compare-timm" in args:
        args = [*args, "--model", TINY]
    assert cli_module.main(["convert", *args]) == 2
    assert message in capsys.readouterr().err


def test_user_errors_print_one_line(tmp_path):
    """Through the installed entry point: one line, no traceback (the other errors are tested
    in this process, below, where each costs no interpreter start)."""
    assert_user_error(cli("predict", str(tmp_path / "missing.jpg")), "no such file")
    multi_worker = {  # only TensorFlow has the strategy, and Keras' fit does not run under it
        "tensorflow": "Train on several machines with --backend jax",
        "jax": "distribute='multi-worker' is TensorFlow's",
        "torch": "not available on the torch backend",
    }
    train = ["train", "--tfds", "cifar10", "--output", str(tmp_path)]
    assert_user_error(cli(*train, "--distribute", "multi-worker"), multi_worker[BACKEND])


def test_user_errors_name_the_problem(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    def error_of(*args):
        assert cli_module.main(list(args)) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    assert "cannot read image" in error_of("predict", str(broken), "--weights", tiny_checkpoint)
    assert "Unknown model 'resnet50'" in error_of("predict", "--model", "resnet50")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    offline = error_of("predict", "--model", "convmixer_768_32")
    assert "--weights PATH" in offline and "HF_ENDPOINT" in offline
    assert "the ImageNet weights classify 1000 classes, not 10" in error_of(
        "predict", "--classes", "10"
    )
    message = "give the data with --tfds NAME or --data-dir DIR"
    assert message in error_of("train", "--output", str(tmp_path))
    missing = str(tmp_path / "x.safetensors")
    assert "no such file" in error_of("convert", missing, "o.weights.h5", "--model", TINY)
    message = "--all-backends runs every backend; leave out --backend"
    assert message in error_of("benchmark", "--all-backends", "--backend", BACKEND)


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "--top", "0"], "argument --top: must be an integer ≥ 1; received '0'"),
        (["benchmark", "--batch", "0"], "argument --batch: must be an integer ≥ 1"),
        (["benchmark", "--repeats", "x"], "argument --repeats: must be an integer ≥ 1"),
        (["benchmark", "--warmup", "-1"], "argument --warmup: must be an integer ≥ 0"),
        (["benchmark", "--peak-tflops", "0"], "argument --peak-tflops: must be a number > 0"),
        (["train", "--output", "o", "--seed", "-1"], "argument --seed: must be an integer ≥ 0"),
        (["train", "--output", "o", "--steps-per-epoch", "0"], "--steps-per-epoch: must be an"),
        (["train", "--output", "o", "--freeze", "-1"], "--freeze: must be 'all' or an integer"),
    ],
)
def test_flags_out_of_range_are_refused_before_any_work(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_benchmark_refuses_an_image_smaller_than_a_patch(capsys):
    assert cli_module.main(["benchmark", "--model", "convmixer_768_32", "--image-size", "6"]) == 2
    assert "--image-size must be at least convmixer_768_32's patch size, 7; received 6" in (
        capsys.readouterr().err
    )


def test_compare_with_timm_reports_the_deviation(tiny_checkpoint):
    """`convert --compare-timm`'s check, in this process (timm needs the test shim here)."""
    import keras_convmixer
    from keras_convmixer.cli import compare_with_timm

    model = keras_convmixer.ConvMixer(
        16, 2, 3, 2, weights=tiny_checkpoint, classifier_activation=None
    )
    assert compare_with_timm(model, tiny_checkpoint) < 1e-4
    other = keras_convmixer.ConvMixer(16, 2, 3, 2, classifier_activation=None)  # random weights
    assert compare_with_timm(other, tiny_checkpoint) > 1e-2


def test_benchmark_gives_timm_and_keras_the_same_weights():
    import torch
    from timm_shim import import_timm

    from keras_convmixer import benchmark

    assert import_timm() is not None
    weights = benchmark.timm_weights(TINY, seed=1)
    assert any(np.abs(a).max() > 0 for k, a in weights.items() if k.endswith("bias"))
    ours = benchmark.keras_model(TINY, weights)
    reference = benchmark.timm_model(TINY, weights)
    x = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype("float32")
    with torch.no_grad():
        expected = reference.eval()(torch.from_numpy(x)).softmax(-1).numpy()
    np.testing.assert_allclose(
        ours.predict(x.transpose(0, 2, 3, 1), verbose=0), expected, atol=1e-5
    )
    other = benchmark.timm_weights(TINY, seed=2)["stem.0.weight"]
    assert not np.allclose(other, weights["stem.0.weight"])


@pytest.mark.skipif(BACKEND != "torch", reason="timm's side only: once is enough")
@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile on a CPU needs a compiler")
def test_benchmark_compiles_timm_for_both_modes():
    """`--timm-compile` under autocast, the GPU comparison of the performance issue: both
    steps run through graphs that torch.compile made."""
    import torch
    from timm_shim import import_timm

    from keras_convmixer import benchmark

    assert import_timm() is not None
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # not reset by reset()
    weights = benchmark.timm_weights(TINY, seed=1)
    modes = ("inference", "train")
    steps = benchmark.timm_steps(TINY, 2, 32, modes, "mixed_bfloat16", True, weights)
    assert sorted(steps) == [("timm/torch.compile", mode) for mode in modes]
    for step in steps.values():
        step()
    # One graph for each mode: BatchNorm's mode is part of what a graph assumes.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 2


def test_benchmark_steps_take_their_batch_on_the_device(monkeypatch):
    """The timed steps get backend tensors made once, as timm's steps do: NumPy would add a
    host-to-device copy to every timed step on a GPU."""
    from keras_convmixer import benchmark

    model = benchmark.keras_model(TINY)
    seen = []
    monkeypatch.setattr(model, "predict_on_batch", lambda x: seen.append(x))
    monkeypatch.setattr(model, "train_on_batch", lambda x, y: seen.extend((x, y)))
    steps = benchmark.keras_steps(model, 2, 32, ("inference", "train"), jit_compile=False)
    backend = keras.backend.backend()
    for mode in ("inference", "inference", "train"):
        steps[(f"keras/{backend}", mode)]()
    x, again, x_train, y = seen
    assert all(keras.ops.is_tensor(t) for t in seen)
    assert x is again is x_train  # converted once, not at every step
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, model.output_shape[-1])


def test_benchmark_times_one_mode_after_the_other_and_alternates_paths():
    """Inference is timed on weights no training step changes in between (a runtime that keeps
    reordered weights would redo that work at every step), and within a mode the two paths take
    turns, so both see the same machine."""
    from keras_convmixer import benchmark

    calls = []
    keys = [("ours", "inference"), ("ours", "train"), ("timm", "inference"), ("timm", "train")]
    steps = {key: (lambda key=key: calls.append(key)) for key in keys}
    results = benchmark.measure(steps, batch=2, warmup=1, repeats=2)
    inference, train = keys[0::2], keys[1::2]
    assert calls == inference * 4 + train * 4  # first call, warm-up, two repeats
    assert {(r.name, r.mode) for r in results} == set(keys)


def test_benchmark_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = cli(
        "benchmark",
        "--model",
        TINY,
        "--image-size",
        "32",
        "--batch",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "2",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["mode"] for r in report["results"]] == ["inference", "train"]
    assert all(r["images_per_s"] > 0 for r in report["results"])
    assert f"keras/{BACKEND}" in result.stdout


@pytest.mark.skipif(BACKEND != "tensorflow", reason="it runs every backend itself")
def test_benchmark_on_all_backends_prints_one_table(tmp_path):
    out = tmp_path / "all.json"
    settings = ["--model", TINY, "--image-size", "32", "--batch", "2", "--warmup", "0"]
    # "--all": argparse's prefix of --all-backends, which the processes it starts must not see.
    result = cli("benchmark", "--all", *settings, "--repeats", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    runs = json.loads(out.read_text())["runs"]
    assert [run["machine"]["backend"] for run in runs] == ["tensorflow", "jax", "torch"]
    for run in runs:
        backend = run["machine"]["backend"]
        assert [r["name"] for r in run["results"]] == [f"keras/{backend}"] * 2
        assert run["settings"]["batch"] == 2 and run["settings"]["model"] == TINY
    table = result.stdout[result.stdout.index("backend     path") :].splitlines()
    assert [line.split()[:3] for line in table[1:]] == [
        [backend, f"keras/{backend}", mode]
        for backend in ("tensorflow", "jax", "torch")
        for mode in ("inference", "train")
    ]


def test_all_backends_means_those_installed(monkeypatch):
    """On a machine with JAX and PyTorch but no TensorFlow (the GPU image here) --all-backends
    runs the two it has."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "tensorflow" else find_spec(name)
    )
    assert cli_module.installed_backends() == ("jax", "torch")


def test_combined_table_gives_each_keras_path_as_a_multiple_of_timm():
    from keras_convmixer import benchmark

    def report(backend, ours, timm):
        results = [
            benchmark.Result(name, "inference", speed, speed, speed, 1.0, 100.0)
            for name, speed in ((f"keras/{backend}", ours), ("timm", timm))
        ]
        return {
            "settings": {"peak_tflops": None},
            "gmac_per_image": 1.0,
            "machine": {"backend": backend},
            "results": [r.__dict__ for r in results],
        }

    lines = benchmark.combined_table([report("jax", 6.0, 4.0), report("torch", 3.0, 4.0)])
    rows = [line.split() for line in lines.splitlines()[1:]]
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("jax", "keras/jax", "1.50×"),
        ("jax", "timm", "100"),
        ("torch", "keras/torch", "0.75×"),
        ("torch", "timm", "100"),
    ]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="one backend is enough for this minute")
def test_train_on_an_image_folder_then_evaluate(tmp_path):
    x_train, y_train, x_val, y_val = digits_32()
    for split, images, labels in (("train", x_train, y_train), ("val", x_val, y_val)):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = tmp_path / "digits" / split / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i}.png")
    recipe = ["--recipe", "cifar10", "--epochs", "6", "--batch-size", "64", "--lr", "0.01"]
    recipe += ["--no-flip", "--randaugment-magnitude", "6", "--no-mixed-precision"]
    recipe += ["--uint8-images"]  # normalised in the model; model.keras is the model behind
    out = tmp_path / "run"
    data = ["--data-dir", str(tmp_path / "digits")]
    result = cli(
        "train",
        "--model",
        "convmixer_64_4_k5_p2",
        *data,
        *recipe,
        "--seed",
        "0",
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shuffle" not in result.stderr  # Keras' warning for a dataset with shuffle=True
    accuracy = float(result.stdout.strip().splitlines()[-1].split(": ")[1])
    print(f"CLI train on digits folder: held-out accuracy {accuracy:.4f}", file=sys.stderr)
    assert accuracy >= 0.90
    written = {"model.keras", "model.weights.h5", "log.csv", "classes.json", "recipe.json"}
    written |= {"checkpoint.weights.h5", "best.weights.h5"}
    assert written <= set(os.listdir(out))
    # The run's recipe and class names come from recipe.json and classes.json beside the model.
    compare = ["--compare-policy", "mixed_bfloat16"]
    evaluated = cli("evaluate", "--weights", str(out / "model.keras"), *data, *compare)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    *_, scores, agreement = evaluated.stdout.strip().splitlines()
    assert float(scores.split()[1]) == pytest.approx(accuracy, abs=1e-4)
    print(f"CLI evaluate: {agreement}", file=sys.stderr)
    words = agreement.replace(",", "").split()
    assert words[0] == "mixed_bfloat16:" and words[-2:] == [f"({len(x_val)}", "images)"]
    assert float(words[2]) >= 0.85 and float(words[7]) >= 0.95
    images = [tmp_path / "digits" / "val" / f"digit_{y_val[i]}" / f"{i}.png" for i in range(12)]
    predicted = cli("predict", *map(str, images), "--weights", str(out / "model.keras"), "--json")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = list(json.loads(predicted.stdout).values())
    assert sum(row[0]["label"] == f"digit_{y}" for row, y in zip(rows, y_val, strict=False)) >= 10
    keras.saving.load_model(out / "model.keras").load_weights(out / "best.weights.h5")
    model = keras.saving.load_model(out / "model.keras")
    cifar = training.get_recipe("cifar10")
    probs = model.predict((x_val[:12] / 255.0 - np.array(cifar.mean)) / np.array(cifar.std))
    np.testing.assert_allclose([row[0]["score"] for row in rows], probs.max(-1), atol=2e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the library's freeze runs on every backend")
def test_train_freeze_keeps_the_first_blocks_as_loaded(tiny_checkpoint, tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    out, again = tmp_path / "run", tmp_path / "again"
    data = ["--tfds", "cifar10", "--seed", "0"]
    args = ["train", "--model", TINY, "--weights", tiny_checkpoint, *data, "--epochs", "1"]
    args += ["--batch-size", "16", "--image-size", "32", "--no-mixed-precision"]
    with tfds.testing.mock_data(num_examples=32):
        assert cli_module.main([*args, "--freeze", "1", "--output", str(out)]) == 0
        assert cli_module.main([*args, "--freeze", "3", "--output", str(out)]) == 2
        assert "blocks must be at most the model's depth, 2" in capsys.readouterr().err
        # Training a model.keras again: its architecture, recipe.json and frozen layers.
        more = ["train", "--weights", str(out / "model.keras"), *data, "--output", str(again)]
        more += ["--remat"]
        assert cli_module.main(more) == 0
        assert cli_module.main([*more, "--model", TINY]) == 2
        assert "trained on as it is: without --model" in capsys.readouterr().err
    tuned = keras.saving.load_model(out / "model.keras")
    assert (again / "recipe.json").read_text() == (out / "recipe.json").read_text()
    retuned = keras.saving.load_model(again / "model.keras")
    assert [tuned.get_layer(f"block_{i}").remat for i in (0, 1)] == [False, False]
    assert [retuned.get_layer(f"block_{i}").remat for i in (0, 1)] == [True, True]
    for name in ("stem", "block_0"):
        pairs = zip(tuned.get_layer(name).weights, retuned.get_layer(name).weights, strict=True)
        for ours, theirs in pairs:
            np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs), err_msg=ours.path)
    assert not np.array_equal(
        to_numpy(tuned.get_layer("block_1").weights[0]),
        to_numpy(retuned.get_layer("block_1").weights[0]),
    )
    loaded = cli_module.build_model(
        TINY, tiny_checkpoint, include_top=False, input_shape=(32, 32, 3)
    )
    for layer in loaded.layers:
        for ours, theirs in zip(layer.weights, tuned.get_layer(layer.name).weights, strict=True):
            same = np.array_equal(
                keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
            )
            assert same == (layer.name != "block_1"), ours.path


# The scripts only pass their recipe's flags on: each runs once, on a backend of its own.
SCRIPT_BACKENDS = {"cifar10": "tensorflow", "imagenet": "torch"}


@pytest.mark.parametrize("recipe", SCRIPT_BACKENDS)
def test_example_scripts_train_with_their_recipe(recipe, tmp_path, monkeypatch):
    if SCRIPT_BACKENDS[recipe] != BACKEND:
        pytest.skip(f"run once, on the {SCRIPT_BACKENDS[recipe]} backend")
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "run"
    args = ["--model", "convmixer_16_1_k3_p4", "--epochs", "1", "--batch-size", "16"]
    args += ["--image-size", "32", "--no-mixed-precision", "--output", str(out)]
    if recipe == "imagenet":
        args += ["--tfds", "imagenet2012"]  # the CIFAR-10 script names its data set itself
    script = os.path.join(EXAMPLES, f"train_{recipe}.py")
    monkeypatch.setattr(sys, "argv", [script, *args])
    with tfds.testing.mock_data(num_examples=32), pytest.raises(SystemExit) as exit:
        runpy.run_path(script, run_name="__main__")
    assert exit.value.code == 0
    optimizer = keras.saving.load_model(out / "model.keras").optimizer.get_config()
    expected = training.get_recipe(recipe)
    assert optimizer["learning_rate"]["config"]["max_lr"] == pytest.approx(expected.lr)
    assert optimizer["weight_decay"] == pytest.approx(expected.weight_decay)
    assert optimizer["epsilon"] == pytest.approx(expected.adam_epsilon)
    assert optimizer["global_clipnorm"] == pytest.approx(expected.clipnorm)


def test_evaluate_imagenet_weights_says_the_published_top1(hub, monkeypatch, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    published = dataclasses.replace(pretrained.WEIGHTS["convmixer_tiny"], top1=81.37)
    monkeypatch.setitem(pretrained.WEIGHTS, "convmixer_tiny", published)
    args = ["evaluate", "--model", "convmixer_tiny", "--weights", "imagenet"]
    with serve(hub["root"]) as endpoint, tfds.testing.mock_data(num_examples=8):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        assert cli_module.main([*args, "--tfds", "imagenet2012"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("top-1 ")
    assert lines[-1] == "published top-1 on the ImageNet-1k validation set: 0.8137"


@pytest.mark.parametrize("source", ["file", "folder"])
def test_export_gives_the_models_outputs(source, hub, tiny_checkpoint, tmp_path, capsys):
    onnx = BACKEND == "torch"
    out = str(tmp_path / ("m.onnx" if onnx else "served"))
    if source == "file":
        model = keras_convmixer.ConvMixer(16, 2, 3, 2, weights=tiny_checkpoint)
        weights = ["--model", TINY, "--weights", tiny_checkpoint]
    else:  # timm's Hub layout: its config.json names the architecture and the classes
        model = randomize(keras_convmixer.ConvMixer(16, 2, 3, 7, classes=3))  # "convmixer_tiny"
        pretrained.save_timm(model, tmp_path / "folder")
        weights = ["--weights", str(tmp_path / "folder")]
    args = ["export", out, *weights, "--image-size", "32", "--include-preprocessing"]
    assert cli_module.main(args) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}")
    rng = np.random.default_rng(3)
    if onnx:
        import onnxruntime

        session = onnxruntime.InferenceSession(out)
        run = lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]  # noqa: E731
        shapes = [(3, 32, 32, 3), (1, 32, 32, 3)]  # the batch stays open
    else:
        import tensorflow as tf

        served = tf.saved_model.load(out)
        run = lambda x: served.serve(x).numpy()  # noqa: E731
        shapes = [(3, 32, 32, 3), (1, 40, 24, 3)]
    for shape in shapes:
        pixels = rng.uniform(0, 255, size=shape).astype("float32")
        expected = keras.ops.convert_to_numpy(model(keras_convmixer.preprocess_input(pixels)))
        np.testing.assert_allclose(run(pixels), expected, atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="Keras exports LiteRT from TensorFlow")
def test_export_tflite_gives_the_models_outputs(tiny_checkpoint, tmp_path, capsys):
    """A LiteRT file of the model, its batch open; `--quantize` stores int8 weights."""
    import tensorflow as tf

    model = keras_convmixer.ConvMixer(16, 2, 3, 2, weights=tiny_checkpoint)
    x = np.random.default_rng(5).normal(size=(3, 32, 32, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    outputs, sizes = {}, {}
    for flags in ([], ["--quantize"]):
        out = str(tmp_path / f"m{len(flags)}.tflite")
        args = ["export", out, "--model", TINY, "--weights", tiny_checkpoint, "--image-size", "32"]
        assert cli_module.main([*args, *flags]) == 0
        assert capsys.readouterr().out.startswith(f"wrote {out}: images (batch, 32, 32, 3)")
        with warnings.catch_warnings():  # tf.lite.Interpreter: "use ai_edge_litert"
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_path=out)
        (image,), (probs,) = interpreter.get_input_details(), interpreter.get_output_details()
        interpreter.resize_tensor_input(image["index"], x.shape)  # the batch is open
        interpreter.allocate_tensors()
        interpreter.set_tensor(image["index"], x)
        interpreter.invoke()
        outputs[len(flags)], sizes[len(flags)] = (
            interpreter.get_tensor(probs["index"]),
            os.path.getsize(out),
        )
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-4)
    assert sizes[1] < 0.6 * sizes[0]
    np.testing.assert_allclose(outputs[1], expected, rtol=0.1)
    assert not np.allclose(outputs[1], expected, rtol=1e-4)  # the weights were rounded
    assert cli_module.main([args[0], str(tmp_path / "served"), *args[2:], "--quantize"]) == 2
    assert "--quantize is for .tflite files" in capsys.readouterr().err


def test_export_names_the_backend_its_format_needs(tmp_path, capsys):
    wrong = "served" if BACKEND == "torch" else "m.onnx"
    assert cli_module.main(["export", str(tmp_path / wrong)]) == 2
    needed = "--backend tensorflow or jax" if BACKEND == "torch" else "--backend torch"
    assert needed in capsys.readouterr().err
    assert not os.path.exists(tmp_path / wrong)
    if BACKEND != "tensorflow":
        assert cli_module.main(["export", str(tmp_path / "m.tflite")]) == 2
        assert "--backend tensorflow" in capsys.readouterr().err
