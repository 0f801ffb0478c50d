"""Checkpoint conversion: parity with timm, key layouts, errors, and the `weights="imagenet"` path
against a loopback HTTP server."""

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import randomize, save_safetensors, serve, timm_convmixer, to_numpy
from timm_shim import import_timm

import keras_convmixer
from keras_convmixer import pretrained
from keras_convmixer.model import VARIANTS

torch = pytest.importorskip("torch")


def sequential_layout(state_dict, depth, prefix="module."):
    """The original locuslab/convmixer key layout (nn.Sequential numbering)."""
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "stem":
            new = ".".join(parts[1:])
        elif parts[0] == "blocks":
            new = ".".join([str(int(parts[1]) + 3)] + parts[2:])
        else:  # head
            new = ".".join([str(depth + 5)] + parts[1:])
        renamed[prefix + new] = value
    return renamed


def timm_outputs(reference, x):
    with torch.no_grad():
        return reference.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


def logits_deviation(ours, reference, x):
    return float(np.max(np.abs(to_numpy(ours.predict(x, verbose=0)) - timm_outputs(reference, x))))


def random_images(size, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_safetensors_matches_timm(tmp_path, activation):
    reference = timm_convmixer(32, 3, 5, 4, activation)
    path = save_safetensors(reference, tmp_path / "model.safetensors")
    model = keras_convmixer.ConvMixer(
        32, 3, 5, 4, activation, classes=10, classifier_activation=None, weights=path
    )
    assert logits_deviation(model, reference, random_images(32)) <= 1e-4


@pytest.mark.parametrize("suffix", [".pth", ".pth.tar", ".bin"])
def test_torch_files_in_both_layouts(tmp_path, suffix):
    reference = timm_convmixer(24, 2, 4, 3, "relu")
    state = reference.state_dict()
    timm_file = tmp_path / f"timm{suffix}"
    torch.save(state, timm_file)
    original = tmp_path / f"original{suffix}"
    torch.save(
        {"state_dict": sequential_layout(state, 2), "epoch": 3, "args": argparse.Namespace(lr=0.1)},
        original,
    )
    x = random_images(27)
    for path in (timm_file, original):
        model = keras_convmixer.ConvMixer(
            24, 2, 4, 3, "relu", classes=10, classifier_activation=None, weights=str(path)
        )
        assert logits_deviation(model, reference, x) <= 1e-4


def test_features_without_top_match_timm_forward_features(tmp_path):
    reference = timm_convmixer(32, 2, 7, 4)
    path = save_safetensors(reference, tmp_path / "model.safetensors")
    model = keras_convmixer.ConvMixer(32, 2, 7, 4, include_top=False, weights=path)
    x = random_images(40)
    expected = reference.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    expected = expected.detach().numpy().transpose(0, 2, 3, 1)
    assert np.max(np.abs(to_numpy(model.predict(x, verbose=0)) - expected)) <= 1e-4


def test_channels_first_model_loads_the_same_checkpoint(tmp_path):
    reference = timm_convmixer(16, 2, 3, 2)
    path = save_safetensors(reference, tmp_path / "model.safetensors")
    model = keras_convmixer.ConvMixer(
        16,
        2,
        3,
        2,
        classes=10,
        classifier_activation=None,
        weights=path,
        data_format="channels_first",
        input_shape=(3, None, None),
    )
    x = random_images(12)
    expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    out = to_numpy(model.predict(x.transpose(0, 3, 1, 2), verbose=0))
    assert np.max(np.abs(out - expected)) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["convmixer_1536_20", "convmixer_768_32", "convmixer_1024_20"])
def test_real_variant_shapes_match_timm(tmp_path, variant):
    v = VARIANTS[variant]
    reference = timm_convmixer(v.dim, v.depth, v.kernel_size, v.patch_size, v.activation, 1000)
    path = save_safetensors(reference, tmp_path / "model.safetensors")
    model = keras_convmixer.ConvMixer(
        v.dim,
        v.depth,
        v.kernel_size,
        v.patch_size,
        v.activation,
        classifier_activation=None,
        weights=path,
        input_shape=(64, 64, 3),
    )
    deviation = logits_deviation(model, reference, random_images(64, batch=1))
    print(f"{keras.backend.backend()} {variant}: max |Δlogit| = {deviation:.2e}")
    assert deviation <= 1e-4


def test_mismatched_checkpoint_lists_keys_and_names_the_variant(tmp_path):
    reference = timm_convmixer(16, 2, 5, 2)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    with pytest.raises(ValueError, match=r"Missing keys: \['blocks.1.1.bias'\]"):
        pretrained.to_keras_arrays({k: v for k, v in state.items() if k != "blocks.1.1.bias"}, 2)
    with pytest.raises(ValueError, match=r"Unexpected keys: \['blocks.1"):
        pretrained.to_keras_arrays(state, 1)
    path = save_safetensors(reference, tmp_path / "k5.safetensors")
    with pytest.raises(
        ValueError,
        match=r"block_0/depthwise/kernel: model \(3, 3, 16, 1\), weights \(5, 5, 16, 1\)",
    ):
        keras_convmixer.ConvMixer(16, 2, 3, 2, classes=10, weights=path)
    with pytest.raises(ValueError, match="They classify 10 classes: pass classes=10. Shape"):
        keras_convmixer.ConvMixer(16, 2, 5, 2, weights=path)  # 1000 classes by default
    shapes = {
        k: np.zeros(v.shape, "float32")
        for k, v in timm_convmixer(768, 32, 7, 7, "relu", 1000).state_dict().items()
    }
    with pytest.raises(ValueError, match="look like convmixer_768_32"):
        pretrained.to_keras_arrays(shapes, 20)


def test_unknown_file_type_is_rejected(tmp_path):
    path = tmp_path / "weights.onnx"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="Unknown checkpoint type"):
        keras_convmixer.ConvMixer(8, 1, 3, 2, weights=str(path))


# --- weights="imagenet" against a loopback server -------------------------------------------


def tiny_imagenet_model(**kwargs):
    kwargs.setdefault("classifier_activation", None)
    return keras_convmixer.ConvMixer(16, 2, 3, 7, weights="imagenet", **kwargs)


def cache_files():
    folder = pretrained.cache_dir()
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_imagenet_downloads_verifies_converts_and_caches(hub, monkeypatch):
    x = random_images(16)
    with serve(hub["root"]) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        model = tiny_imagenet_model()
    assert logits_deviation(model, hub["reference"], x) <= 1e-4
    assert cache_files() == ["convmixer_tiny.in1k.npz"]
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # server gone: the cache serves
    again = tiny_imagenet_model()
    np.testing.assert_array_equal(to_numpy(again(x)), to_numpy(model(x)))
    headless = tiny_imagenet_model(include_top=False, pooling="avg", input_shape=(20, 20, 3))
    assert headless.output_shape == (None, 16)


def test_imagenet_wrong_hash_caches_nothing(hub, monkeypatch):
    bad = dataclasses.replace(pretrained.WEIGHTS["convmixer_tiny"], sha256="0" * 64)
    monkeypatch.setitem(pretrained.WEIGHTS, "convmixer_tiny", bad)
    with serve(hub["root"]) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        with pytest.raises(ValueError, match=f"sha256 {hub['sha256']}, expected 0000"):
            tiny_imagenet_model()
    assert cache_files() == []


def test_imagenet_truncated_download_is_an_error(hub, monkeypatch):
    with serve(hub["root"], truncate=True) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        with pytest.raises(OSError, match="Could not download"):
            tiny_imagenet_model()
    assert cache_files() == []


def test_imagenet_truncated_file_without_hash_is_an_error(hub, monkeypatch):
    unhashed = dataclasses.replace(pretrained.WEIGHTS["convmixer_tiny"], sha256=None)
    monkeypatch.setitem(pretrained.WEIGHTS, "convmixer_tiny", unhashed)
    path = hub["root"] / "timm" / "convmixer_tiny.in1k" / "resolve" / "main" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with serve(hub["root"]) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        with pytest.raises(ValueError, match="is unusable: .* is not a readable .safetensors file"):
            tiny_imagenet_model()
    assert cache_files() == []


def test_imagenet_without_network_says_what_to_do(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(OSError, match="Pass weights=PATH .* or set HF_ENDPOINT"):
        tiny_imagenet_model()
    assert cache_files() == []


def test_two_processes_loading_at_once_end_with_one_good_file(hub, tmp_path):
    script = textwrap.dedent(
        f"""
        import hashlib, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np
        import keras_convmixer
        from keras_convmixer import pretrained
        from keras_convmixer.model import VARIANTS, Variant
        VARIANTS["convmixer_tiny"] = Variant(16, 2, 3, 7, "gelu")
        pretrained.WEIGHTS["convmixer_tiny"] = pretrained.Checkpoint(
            "convmixer_tiny.in1k", "model.safetensors", {hub["sha256"]!r}, 0.0)
        model = keras_convmixer.ConvMixer(16, 2, 3, 7, weights="imagenet")
        print(float(np.sum(model.get_weights()[0])))
        """
    )
    with serve(hub["root"]) as endpoint:
        env = {**os.environ, "HF_ENDPOINT": endpoint, "KERAS_HOME": os.environ["KERAS_HOME"]}
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", script],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    assert results[0][0].splitlines()[-1] == results[1][0].splitlines()[-1]
    assert cache_files() == ["convmixer_tiny.in1k.npz"]
    with np.load(os.path.join(pretrained.cache_dir(), "convmixer_tiny.in1k.npz")) as data:
        assert len(data.files) == 6 + 2 * 12 + 2  # stem, two blocks, head: every variable


def test_imagenet_backbone_under_a_new_classifier(hub, monkeypatch):
    """`weights="imagenet", classes=10`: the backbone loads, the classifier is new (timm's
    `pretrained=True, num_classes=10`)."""
    with serve(hub["root"]) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        full = tiny_imagenet_model()
    tuned = tiny_imagenet_model(classes=10)
    for layer in full.layers:
        ours = [to_numpy(w) for w in tuned.get_layer(layer.name).weights]
        if layer.name == "predictions":
            assert [w.shape for w in ours] == [(16, 10), (10,)]
            np.testing.assert_array_equal(ours[1], np.zeros(10))  # the fresh Dense's bias
        else:
            for theirs, mine in zip(layer.weights, ours, strict=True):
                np.testing.assert_array_equal(to_numpy(theirs), mine, err_msg=theirs.path)


def test_hub_layout_checkpoint_brings_its_class_count(hub, tmp_path, monkeypatch):
    """A checkpoint in timm's Hub layout says its class count (config.json): the model takes
    it by default, and another `classes` gives the backbone under a new classifier, as timm's
    `create_model("hf-hub:…", pretrained=True, num_classes=N)`. A bare file fits whole."""
    model = randomize(keras_convmixer.ConvMixer(16, 2, 3, 7, classes=3))  # "convmixer_tiny"
    folder = hub["root"] / "someone" / "flowers" / "resolve" / "main"
    pretrained.save_timm(model, folder, label_names=["daisy", "rose", "tulip"])
    with serve(hub["root"]) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        from_hub = keras_convmixer.ConvMixer(16, 2, 3, 7, weights="hf://someone/flowers")
        tuned = keras_convmixer.create_model(
            "convmixer_tiny", weights="hf://someone/flowers", classes=5
        )
    from_folder = keras_convmixer.ConvMixer(16, 2, 3, 7, weights=str(folder))
    for loaded in (from_hub, from_folder):
        assert loaded.output_shape == (None, 3)
        for ours, theirs in zip(model.weights, loaded.weights, strict=True):
            np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs), err_msg=ours.path)
    assert tuned.output_shape == (None, 5)
    for ours, theirs in zip(model.weights[:-2], tuned.weights[:-2], strict=True):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs), err_msg=ours.path)
    np.testing.assert_array_equal(to_numpy(tuned.get_layer("predictions").bias), np.zeros(5))
    bare = tmp_path / "flowers.safetensors"
    bare.write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="They classify 3 classes: pass classes=3"):
        keras_convmixer.ConvMixer(16, 2, 3, 7, weights=str(bare), classes=5)


def test_imagenet_rules(hub):
    with pytest.raises(ValueError, match="needs activation='gelu'"):
        keras_convmixer.ConvMixer(16, 2, 3, 7, activation="relu", weights="imagenet")
    with pytest.raises(ValueError, match="needs 3 input channels"):
        tiny_imagenet_model(include_top=False, input_shape=(None, None, 1))
    with pytest.raises(ValueError, match="weights='imagenet' exists for"):
        keras_convmixer.ConvMixer(16, 2, 5, 7, weights="imagenet")
    assert cache_files() == []


def test_hub_addresses_download_once_and_load(hub, monkeypatch):
    """`hf://OWNER/REPO` (timm's model.safetensors) and `hf://OWNER/REPO/FILE`, e.g. a
    fine-tuned 10-class checkpoint saved by torch."""
    tuned = timm_convmixer(16, 2, 3, 7, classes=10, seed=4)
    folder = hub["root"] / "someone" / "convmixer-digits" / "resolve" / "main"
    folder.mkdir(parents=True)
    torch.save(tuned.state_dict(), folder / "pytorch_model.bin")
    x = random_images(16)
    build = functools.partial(keras_convmixer.ConvMixer, 16, 2, 3, 7, classifier_activation=None)
    with serve(hub["root"]) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        published = build(weights="hf://timm/convmixer_tiny.in1k")
        digits = build(weights="hf://someone/convmixer-digits/pytorch_model.bin", classes=10)
    assert logits_deviation(published, hub["reference"], x) <= 1e-4
    assert logits_deviation(digits, tuned, x) <= 1e-4
    hub_cache = os.path.join(pretrained.cache_dir(), "hub")
    assert sorted(os.listdir(os.path.join(hub_cache, "someone", "convmixer-digits", "main"))) == [
        "pytorch_model.bin"
    ]
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # server gone: the cache serves
    again = build(weights="hf://timm/convmixer_tiny.in1k")
    np.testing.assert_array_equal(to_numpy(again(x)), to_numpy(published(x)))


def test_hub_revisions_are_pinned(hub, monkeypatch):
    """`hf://OWNER/REPO@REVISION` loads that commit's file, whatever main holds now; a
    revision with "/" in its name is written URL-encoded, a pull request's ref also as it is."""
    repo = hub["root"] / "someone" / "convmixer-digits" / "resolve"
    old, new, proposed = (timm_convmixer(16, 2, 3, 7, classes=10, seed=s) for s in (5, 6, 7))
    for revision, model in (("3f2a9c1", old), ("main", new), ("refs/pr/3", proposed)):
        (repo / revision).mkdir(parents=True)
        save_safetensors(model, repo / revision / "model.safetensors")
    build = functools.partial(
        keras_convmixer.ConvMixer, 16, 2, 3, 7, classes=10, classifier_activation=None
    )
    with serve(hub["root"]) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        pinned = build(weights="hf://someone/convmixer-digits@3f2a9c1")
        latest = build(weights="hf://someone/convmixer-digits@main/model.safetensors")
        pull = build(weights="hf://someone/convmixer-digits@refs/pr/3")
    encoded = build(weights="hf://someone/convmixer-digits@refs%2Fpr%2F3/model.safetensors")
    x = random_images(16)
    assert logits_deviation(pinned, old, x) <= 1e-4
    assert logits_deviation(latest, new, x) <= 1e-4
    assert logits_deviation(pull, proposed, x) <= 1e-4
    np.testing.assert_array_equal(to_numpy(encoded(x)), to_numpy(pull(x)))  # from the cache
    cache = os.path.join(pretrained.cache_dir(), "hub", "someone", "convmixer-digits")
    assert sorted(os.listdir(cache)) == ["3f2a9c1", "main", "refs%2Fpr%2F3"]


def test_hub_address_errors(hub, monkeypatch):
    bad = (
        "hf://just-a-name",
        "hf://owner/repo/../../outside",
        "hf://a/b/",
        "hf://a/b@..",
        "hf://a/b@%2E%2E",
        "hf://a/b@v1%2F..%2F..",
        "hf://a/b@",
    )
    for address in bad:
        with pytest.raises(ValueError, match=r"named hf://OWNER/REPO\[@REVISION\]\[/FILE\]"):
            keras_convmixer.ConvMixer(16, 2, 3, 7, weights=address)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(OSError, match="Could not download hf://timm/nothing-here from http"):
        keras_convmixer.ConvMixer(16, 2, 3, 7, weights="hf://timm/nothing-here")
    cache = os.path.join(pretrained.cache_dir(), "hub", "timm", "nothing-here", "main")
    assert os.listdir(cache) == []


def test_checkpoint_url_honours_hf_endpoint(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert pretrained.checkpoint_url("convmixer_768_32") == (
        "https://huggingface.co/timm/convmixer_768_32.in1k/resolve/main/model.safetensors"
    )
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example/")
    assert pretrained.checkpoint_url("convmixer_1024_20").startswith(
        "http://mirror.example/timm/convmixer_1024_20_ks9_p14.in1k/"
    )


# --- Keras → timm ----------------------------------------------------------------------------


@pytest.mark.parametrize("include_top", [True, False])
def test_timm_state_dict_loads_strictly_into_timm_and_back(tmp_path, include_top):
    from safetensors.torch import load_file

    ConvMixer = import_timm().models.convmixer.ConvMixer  # noqa: N806

    head = {"classes": 7} if include_top else {"include_top": False, "pooling": "avg"}
    model = randomize(
        keras_convmixer.ConvMixer(16, 2, 3, 2, "relu", classifier_activation=None, **head)
    )
    path = str(tmp_path / "model.safetensors")
    assert pretrained.save_timm(model, path) == [path]
    reference = ConvMixer(16, 2, 3, 2, num_classes=7 if include_top else 0, act_layer=torch.nn.ReLU)
    reference.load_state_dict(load_file(path), strict=True)
    x = random_images(16)
    assert logits_deviation(model, reference, x) < 1e-5
    back = keras_convmixer.ConvMixer(
        16, 2, 3, 2, "relu", classifier_activation=None, weights=path, **head
    )
    for ours, theirs in zip(model.weights, back.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs), err_msg=ours.path)


def test_hub_folder_builds_in_timm_and_loads_from_the_hub(tmp_path, monkeypatch):
    """A folder in timm's hub layout: `timm.create_model` builds and loads it from its
    config.json; uploaded, `weights="hf://OWNER/REPO"` loads it."""
    timm = import_timm()
    model = randomize(
        keras_convmixer.ConvMixer1024_20(
            classes=3, input_shape=(56, 56, 3), classifier_activation=None
        )
    )
    folder = tmp_path / "hub" / "someone" / "convmixer-flowers" / "resolve" / "main"
    names = ["daisy", "rose", "tulip"]
    written = pretrained.save_timm(model, folder, label_names=names)
    assert [os.path.basename(f) for f in written] == ["model.safetensors", "config.json"]
    reference = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert reference.pretrained_cfg["label_names"] == names
    assert tuple(reference.pretrained_cfg["input_size"]) == (3, 56, 56)
    assert reference.pretrained_cfg["crop_pct"] == 0.96
    x = random_images(56)
    expected = timm_outputs(reference, x)
    assert np.max(np.abs(to_numpy(model.predict(x, verbose=0)) - expected)) < 1e-4
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with serve(tmp_path / "hub") as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        loaded = keras_convmixer.ConvMixer1024_20(
            classes=3, classifier_activation=None, weights="hf://someone/convmixer-flowers"
        )
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


def test_config_json_only_where_timm_has_the_architecture(tmp_path):
    relu_1536 = keras_convmixer.ConvMixer(1536, 20, 9, 7, "relu", input_shape=(7, 7, 3))
    other = keras_convmixer.ConvMixer(16, 2, 3, 2)
    assert pretrained.timm_architecture(relu_1536) is None  # timm's 1536/20 is GELU
    assert pretrained.timm_architecture(other) is None
    assert pretrained.save_timm(other, tmp_path / "other") == [
        str(tmp_path / "other" / "model.safetensors")
    ]
    registered = keras_convmixer.ConvMixer768_32(classes=2, input_shape=(7, 7, 3))
    assert pretrained.timm_architecture(registered) == "convmixer_768_32"
    inverse = pretrained.variant_of_timm_architecture
    assert inverse("convmixer_1024_20_ks9_p14") == "convmixer_1024_20"
    assert inverse("convmixer_768_32") == "convmixer_768_32" and inverse("resnet50") is None
    with pytest.raises(ValueError, match="label_names must name each of the model's 2 classes"):
        pretrained.save_timm(registered, tmp_path / "registered", label_names=["cat"])
    features = keras_convmixer.ConvMixer768_32(
        include_top=False, pooling="max", input_shape=(7, 7, 3)
    )
    pretrained.save_timm(features, tmp_path / "features")
    with open(tmp_path / "features" / "config.json") as f:
        config = json.load(f)
    assert (config["global_pool"], config["num_classes"]) == ("max", 0)
