"""An independent NumPy ConvMixer forward pass, written from the paper's equations (float64)."""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def relu(x):
    return np.maximum(x, 0.0)


def batch_norm(x, gamma, beta, mean, var, eps=1e-5):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _windows(x, k, stride, pad):
    x = np.pad(x, ((0, 0), pad, pad, (0, 0)))
    return sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]


def conv(x, kernel, bias, stride=1):
    """Valid convolution, NHWC, kernel (k, k, in, out)."""
    w = _windows(x, kernel.shape[0], stride, (0, 0))
    return np.einsum("nhwcij,ijco->nhwo", w, kernel) + bias


def depthwise_same(x, kernel, bias):
    """Stride-1 'same' depthwise convolution; PyTorch puts the extra pixel after."""
    k = kernel.shape[0]
    pad = ((k - 1) // 2, k - 1 - (k - 1) // 2)
    w = _windows(x, k, 1, pad)
    return np.einsum("nhwcij,ijc->nhwc", w, kernel[:, :, :, 0]) + bias


def _value(variable):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable.value), "float64")


def _bn(layer):
    return [_value(v) for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]


def forward(model, x, activation, depth, include_top=True):
    """Runs the ConvMixer equations on NHWC float64 input with the Keras model's weights.

    Returns the logits (or the last feature map) and a dict of the stem's and blocks' outputs.
    """
    act = {"gelu": gelu, "relu": relu}[activation]
    stem = model.get_layer("stem")
    z = act(conv(x, _value(stem.conv.kernel), _value(stem.conv.bias), stride=stem.patch_size))
    z = batch_norm(z, *_bn(stem.norm))
    features = {"stem": z}
    for i in range(depth):
        block = model.get_layer(f"block_{i}")
        y = act(depthwise_same(z, _value(block.depthwise.kernel), _value(block.depthwise.bias)))
        z = batch_norm(y, *_bn(block.depthwise_norm)) + z
        y = act(conv(z, _value(block.pointwise.kernel), _value(block.pointwise.bias)))
        z = batch_norm(y, *_bn(block.pointwise_norm))
        features[f"block_{i}"] = z
    if not include_top:
        return z, features
    head = model.get_layer("predictions")
    return z.mean(axis=(1, 2)) @ _value(head.kernel) + _value(head.bias), features
