"""The depthwise convolution of a ConvMixer block, in two formulations with the same numbers.

* `"native"`: `keras.ops.depthwise_conv`, i.e. the backend's grouped convolution. Fast in
  TensorFlow's (oneDNN) kernels, PyTorch's, and on GPUs.
* `"shift"`: k² shifted multiply-adds over a padded input. XLA's CPU backend runs grouped
  convolutions as a generic loop (measured: 410 ms forward for one 7×7 layer of ConvMixer-768/32
  at batch 8, against 24 ms for this form, which XLA fuses into one elementwise loop), so this
  is the form to use whenever XLA compiles for a CPU.

`"auto"` picks `"shift"` where XLA compiles for a CPU (the JAX backend on CPU, and TensorFlow
inside an XLA-compiled function on CPU), and `"native"` everywhere else.
"""

from __future__ import annotations

import keras
from keras import ops


def same_padding(kernel_size: int) -> tuple[int, int]:
    """(before, after) padding of a stride-1 "same" convolution; the extra pixel goes after."""
    before = (kernel_size - 1) // 2
    return before, kernel_size - 1 - before


def _xla_on_cpu() -> bool:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "tensorflow":
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util

        graph = tf.compat.v1.get_default_graph()
        in_xla = control_flow_util.GraphOrParentsInXlaContext(graph)
        return in_xla and not tf.config.list_logical_devices("GPU")
    return False


def _shift_add(x, kernel, data_format: str):
    k = kernel.shape[0]
    before, after = same_padding(k)
    spatial = (1, 2) if data_format == "channels_last" else (2, 3)
    pad = [[0, 0]] * 4
    for axis in spatial:
        pad[axis] = [before, after]
    padded = ops.pad(x, pad)
    weights = kernel[:, :, :, 0]  # (k, k, C)
    if data_format == "channels_first":
        weights = weights[:, :, :, None, None]
    out = None
    for i in range(k):
        for j in range(k):
            stop_i = i - (k - 1) or None
            stop_j = j - (k - 1) or None
            if data_format == "channels_last":
                window = padded[:, i:stop_i, j:stop_j, :]
            else:
                window = padded[:, :, i:stop_i, j:stop_j]
            term = window * weights[i, j]
            out = term if out is None else out + term
    return out


def depthwise_conv2d(x, kernel, bias, data_format: str = "channels_last", impl: str = "auto"):
    """Stride-1 "same" depthwise convolution plus bias.

    Args:
        x: 4D tensor in `data_format`.
        kernel: `(k, k, channels, 1)`, the layout of `keras.layers.DepthwiseConv2D`.
        bias: `(channels,)`.
        data_format: `"channels_last"` or `"channels_first"`.
        impl: `"auto"`, `"native"` or `"shift"` (see the module docstring).
    """
    kernel = ops.cast(kernel, x.dtype)
    bias = ops.cast(bias, x.dtype)
    if impl == "auto":
        impl = "shift" if _xla_on_cpu() else "native"
    if impl == "shift":
        out = _shift_add(x, kernel, data_format)
    else:
        out = ops.depthwise_conv(x, kernel, strides=1, padding="same", data_format=data_format)
    if data_format == "channels_first":
        bias = ops.reshape(bias, (-1, 1, 1))
    return out + bias
