"""ConvMixer's two layers, written with `keras.layers` and `keras.ops` only.

The numerics follow the PyTorch reference (timm's `convmixer.py`, locuslab/convmixer) so that
converted checkpoints give the same outputs:

* BatchNorm uses PyTorch's `eps=1e-5`; PyTorch's `momentum=0.1` weighs the *new* batch, Keras'
  `momentum` weighs the *old* statistics, so it becomes 0.9. Keras' defaults (1e-3, 0.99) would
  shift every pretrained output.
* The activation comes before BatchNorm everywhere; GELU is the exact (erf) form, which is what
  `keras.activations.gelu` computes by default (`keras.ops.gelu` defaults to the tanh form).
* Every convolution has a bias; the depthwise convolution pads "same" (for even kernels both
  PyTorch and Keras put the extra pixel after); only the depthwise part has the residual.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from keras_convmixer.checks import check_bool, check_positive_int
from keras_convmixer.distribute import sync_batch_norm
from keras_convmixer.kernels import (
    add_residual,
    batch_norm,
    batch_norm_training,
    cast,
    depthwise_conv2d,
    depthwise_residual,
    fast_activation,
    folded_batch_norm,
    fuses_depthwise_residual,
    global_average_pool,
    patch_conv2d,
    pointwise_conv2d,
    update_moving_statistics,
)

BATCH_NORM = {"epsilon": 1e-5, "momentum": 0.9}
PACKAGE = "keras_convmixer"


def get_activation(activation: str | Callable, name: str = "activation") -> Callable:
    """Resolves a Keras activation identifier, naming the argument when it is unknown."""
    try:
        fn = keras.activations.get(activation)
    except (ValueError, TypeError):
        fn = None
    if fn is None or not callable(fn):
        raise ValueError(
            f"{name} must be a Keras activation name (e.g. 'gelu', 'relu') or a callable. "
            f"Received: {name}={activation!r}"
        )
    return fn


def check_data_format(data_format: str | None) -> str:
    """`data_format`, or Keras' global image data format when it is None."""
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "data_format must be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}"
        )
    return data_format


class _ConvActNorm(layers.Layer):
    """Shared plumbing: activation and data format, sub-layers in the layer's dtype policy."""

    def __init__(self, dim: int, activation, data_format: str | None, **kwargs):
        super().__init__(**kwargs)
        self.dim = check_positive_int("dim", dim)
        self.activation = get_activation(activation)
        self.data_format = check_data_format(data_format)
        self.channel_axis = -1 if self.data_format == "channels_last" else 1

    def _sublayer_args(self, name: str) -> dict:
        # `trainable` too: a frozen layer loaded from a .keras file is made with
        # trainable=False, which `Layer.__init__` does not pass on to later sub-layers.
        return {"dtype": self.dtype_policy, "trainable": self.trainable, "name": name}

    def _norm(self, name: str) -> layers.BatchNormalization:
        # Synchronised across replicas under a TensorFlow strategy: global-batch statistics.
        return layers.BatchNormalization(
            axis=self.channel_axis,
            synchronized=sync_batch_norm(),
            **self._sublayer_args(name),
            **BATCH_NORM,
        )

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "dim": self.dim,
            "activation": keras.activations.serialize(self.activation),
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbedding(_ConvActNorm):
    """ConvMixer's stem: z0 = BN(σ(Conv2D(dim, kernel=patch_size, stride=patch_size)(x))).

    Args:
        dim: int. Number of output channels (the model's hidden width).
        patch_size: int. Side of the square, non-overlapping patches.
        activation: str or callable. Defaults to `"gelu"` (exact).
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
    """

    def __init__(self, dim: int, patch_size: int, activation="gelu", data_format=None, **kwargs):
        super().__init__(dim, activation, data_format, **kwargs)
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.conv = layers.Conv2D(
            dim,
            patch_size,
            strides=patch_size,
            padding="valid",
            data_format=self.data_format,
            **self._sublayer_args("conv"),
        )
        self.norm = self._norm("norm")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.norm.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        conv = self.conv
        activation = fast_activation(self.activation)
        patches = patch_conv2d(
            inputs, conv.kernel, conv.bias, self.patch_size, activation, self.data_format
        )
        return batch_norm(self.norm, patches, training)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvMixerBlock(_ConvActNorm):
    """One ConvMixer block.

    z' = BN(σ(DepthwiseConv2D(kernel_size, padding="same")(z))) + z
    out = BN(σ(Conv2D(dim, 1)(z')))

    Args:
        dim: int. Number of channels in and out.
        kernel_size: int. Side of the depthwise kernel (even sizes pad like PyTorch).
        activation: str or callable. Defaults to `"gelu"` (exact).
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        depthwise_impl: `"auto"`, `"native"` or `"shift"`. How the depthwise convolution runs;
            all give the same numbers (see `keras_convmixer.kernels`). Defaults to `"auto"`.
        remat: bool. Gradient checkpointing: in training, keep only the block's input for the
            backward pass and compute the block again there (`keras.remat`), which saves
            memory for a forward pass's time. Same numbers. Defaults to False.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        activation="gelu",
        data_format=None,
        depthwise_impl: str = "auto",
        remat: bool = False,
        **kwargs,
    ):
        super().__init__(dim, activation, data_format, **kwargs)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        if depthwise_impl not in ("auto", "native", "shift"):
            raise ValueError(
                "depthwise_impl must be 'auto', 'native' or 'shift'. "
                f"Received: depthwise_impl={depthwise_impl!r}"
            )
        self.depthwise_impl = depthwise_impl
        self.remat = check_bool("remat", remat)
        self.depthwise = layers.DepthwiseConv2D(
            kernel_size,
            padding="same",
            data_format=self.data_format,
            **self._sublayer_args("depthwise"),
        )
        self.depthwise_norm = self._norm("depthwise_norm")
        self.pointwise = layers.Conv2D(
            dim, 1, data_format=self.data_format, **self._sublayer_args("pointwise")
        )
        self.pointwise_norm = self._norm("pointwise_norm")

    def build(self, input_shape):
        for layer in (self.depthwise, self.depthwise_norm, self.pointwise, self.pointwise_norm):
            layer.build(input_shape)

    def call(self, inputs, training=None):
        if not (training and self.remat):
            return self._mix(inputs, lambda norm, x: batch_norm(norm, x, training), not training)
        # What is computed again must not update the moving statistics a second time (Keras'
        # `RematScope` does, on PyTorch): it returns the batch's, and they are applied here.
        trained = [norm for norm in (self.depthwise_norm, self.pointwise_norm) if norm.trainable]
        out, *statistics = keras.remat(lambda x: self._mix_for_training(x, trained))(inputs)
        for norm, mean, variance in zip(trained, statistics[::2], statistics[1::2], strict=True):
            update_moving_statistics(norm, mean, variance)
        return out

    def _mix_for_training(self, inputs, trained: list) -> tuple:
        """The block in training, free of side effects: `(output, mean, variance, ...)`, the
        batch statistics of each BatchNorm in `trained` (the others run in inference mode)."""
        statistics = []

        def normalize(norm, x):
            if norm not in trained:
                return batch_norm(norm, x, training=False)
            out, mean, variance = batch_norm_training(norm, x)
            statistics.extend((mean, variance))
            return out

        out = self._mix(inputs, normalize)
        return (out, *statistics)

    def _mix(self, inputs, normalize, inference: bool = False):
        """The block's equations, with `normalize(norm, x)` for each BatchNorm; `inference`:
        both BatchNorms normalise with their moving statistics."""
        depthwise = (self.depthwise.kernel, self.depthwise.bias)
        activation = fast_activation(self.activation)
        if inference and fuses_depthwise_residual(self.depthwise_impl, self.data_format):
            folded = folded_batch_norm(self.depthwise_norm)
            x = depthwise_residual(inputs, *depthwise, activation, *folded)
        else:
            mixed = depthwise_conv2d(
                inputs, *depthwise, activation, self.data_format, self.depthwise_impl
            )
            x = add_residual(normalize(self.depthwise_norm, mixed), inputs)
            # `x` may be float32 under mixed precision (see `depthwise_conv2d`): one rounding,
            # which the fused form makes in its loop.
            x = cast(x, inputs.dtype)
        mixed = pointwise_conv2d(
            x, self.pointwise.kernel, self.pointwise.bias, activation, self.data_format
        )
        return normalize(self.pointwise_norm, mixed)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "kernel_size": self.kernel_size,
            "depthwise_impl": self.depthwise_impl,
            "remat": self.remat,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlobalAveragePooling(layers.GlobalAveragePooling2D):
    """Keras' `GlobalAveragePooling2D`, computed by `kernels.global_average_pool` (the same
    mean, in the form XLA's CPU backend runs well)."""

    def call(self, inputs):
        return global_average_pool(inputs, self.data_format, self.keepdims)
