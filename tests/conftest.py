"""Shared test helpers. The backend comes from KERAS_BACKEND (one pytest process per backend)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
from timm_shim import import_timm

import keras_convmixer

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
