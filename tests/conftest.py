"""Shared test helpers. The backend comes from KERAS_BACKEND (one pytest process per backend)."""

import contextlib
import functools
import http.server
import os
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
from timm_shim import import_timm

import keras_convmixer
from keras_convmixer import pretrained
from keras_convmixer.model import VARIANTS, Variant

BACKEND = keras.backend.backend()


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Random weights with non-trivial BatchNorm statistics, so a mapping bug shows in outputs."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape, name = tuple(variable.shape), variable.path.split("/")[-1]
        if name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("beta", "moving_mean", "bias"):
            value = rng.normal(0.0, 0.2, shape)
        else:  # kernels: fan-in scaled so activations stay O(1)
            fan_in = int(np.prod(shape[:-1])) if name == "kernel" else 1
            if len(shape) == 4 and shape[-1] == 1:  # depthwise (k, k, C, 1)
                fan_in = shape[0] * shape[1]
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        variable.assign(value.astype("float32"))
    return model


def small_model(activation="gelu", kernel_size=3, patch_size=2, **kwargs) -> keras.Model:
    kwargs.setdefault("classes", 5)
    kwargs.setdefault("classifier_activation", None)
    model = keras_convmixer.ConvMixer(
        16, 3, kernel_size=kernel_size, patch_size=patch_size, activation=activation, **kwargs
    )
    return randomize(model)


def to_numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def assert_erased_as_timm(erased, changed):
    """Checks a batch erased by timm's RandomErasing at probability 0.25 in pixel mode:
    `changed` (images, height, width) marks the pixels that changed, `erased` the images."""
    chosen = np.flatnonzero(changed.any(axis=(1, 2)))
    assert 0.21 < len(chosen) / len(changed) < 0.29
    rows, cols = changed.any(axis=2).sum(axis=1)[chosen], changed.any(axis=1).sum(axis=1)[chosen]
    np.testing.assert_array_equal(changed[chosen].sum(axis=(1, 2)), rows * cols)  # one box
    area, ratio = rows * cols / changed[0].size, rows / cols
    assert area.min() >= 0.02 - 0.01 and area.max() <= 1 / 3 + 0.02 and area.mean() > 0.12
    # Sides are rounded from an aspect in [0.3, 1 / 0.3], log-uniform.
    assert ((rows - 0.5) / (cols + 0.5)).max() <= 1 / 0.3
    assert ((rows + 0.5) / (cols - 0.5)).min() >= 0.3
    assert ratio.min() < 0.4 and ratio.max() > 2.5 and abs(np.log(ratio).mean()) < 0.1
    noise = erased[changed]
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01  # per-pixel N(0, 1)


@pytest.fixture
def dtype_policy():
    """Sets a global dtype policy for one test and restores float32 afterwards."""
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy("float32")


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def timm_convmixer(dim, depth, kernel_size, patch_size, activation="gelu", classes=10, seed=0):
    """timm's ConvMixer with random weights and randomised BatchNorm statistics, in eval mode."""
    import torch

    timm = import_timm()
    from timm.models.convmixer import ConvMixer

    torch.manual_seed(seed)
    act = {"gelu": torch.nn.GELU, "relu": torch.nn.ReLU}[activation]
    model = ConvMixer(dim, depth, kernel_size, patch_size, num_classes=classes, act_layer=act)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
    assert timm is not None
    return model.eval()


def save_safetensors(model, path):
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(path))
    return str(path)


# --- weights="imagenet" against a loopback server -------------------------------------------

TINY = Variant(16, 2, kernel_size=3, patch_size=7, activation="gelu")


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = False

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        data = source.read()
        outputfile.write(data[: len(data) // 2] if self.truncate else data)


@contextlib.contextmanager
def serve(directory, truncate=False):
    """Serves `directory` over HTTP on 127.0.0.1 (its address is yielded); `truncate` sends
    half of each file."""
    handler = type("Handler", (_Handler,), {"truncate": truncate})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A timm-format checkpoint of a tiny variant published on a loopback 'hub'."""
    reference = timm_convmixer(16, 2, 3, 7, classes=1000, seed=3)
    root = tmp_path / "hub"
    folder = root / "timm" / "convmixer_tiny.in1k" / "resolve" / "main"
    folder.mkdir(parents=True)
    path = save_safetensors(reference, folder / "model.safetensors")
    digest = pretrained.sha256(path)
    monkeypatch.setitem(VARIANTS, "convmixer_tiny", TINY)
    monkeypatch.setitem(
        pretrained.WEIGHTS,
        "convmixer_tiny",
        pretrained.Checkpoint("convmixer_tiny.in1k", "model.safetensors", digest, 0.0),
    )
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return {"root": root, "reference": reference, "sha256": digest}
