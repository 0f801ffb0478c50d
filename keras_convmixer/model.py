"""The ConvMixer functional model: one builder, a variants table, thin named constructors.

Reference: [Patches Are All You Need?](https://arxiv.org/abs/2201.09792)
(Trockman & Kolter, TMLR 2022).
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np
from keras import layers

from keras_convmixer import imagenet
from keras_convmixer.checks import check_positive_int
from keras_convmixer.kernels import tune_xla_cpu
from keras_convmixer.layers import (
    ConvMixerBlock,
    GlobalAveragePooling,
    PatchEmbedding,
    check_data_format,
    get_activation,
)

POOLINGS = (None, "avg", "max")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named ConvMixer configuration."""

    dim: int
    depth: int
    kernel_size: int
    patch_size: int
    activation: str
    classes: int = 1000
    image_size: int = 224


VARIANTS: dict[str, Variant] = {
    "convmixer_1536_20": Variant(1536, 20, kernel_size=9, patch_size=7, activation="gelu"),
    "convmixer_768_32": Variant(768, 32, kernel_size=7, patch_size=7, activation="relu"),
    "convmixer_1024_20": Variant(1024, 20, kernel_size=9, patch_size=14, activation="gelu"),
    # The CIFAR-10 recipe of locuslab/convmixer-cifar10: 594,186 trainable parameters.
    "convmixer_256_8": Variant(
        256, 8, kernel_size=5, patch_size=2, activation="gelu", classes=10, image_size=32
    ),
}


MODEL_NAME = re.compile(r"convmixer_(\d+)_(\d+)(?:_k(\d+))?(?:_p(\d+))?(?:_(gelu|relu))?")


def variant_from_name(name: str) -> Variant:
    """A named variant, or one spelled `convmixer_{dim}_{depth}[_k{kernel}][_p{patch}][_relu]`
    (kernel 9, patch 7 and GELU by default), e.g. `convmixer_256_8_k5_p2`."""
    if name in VARIANTS:
        return VARIANTS[name]
    match = MODEL_NAME.fullmatch(name)
    if not match:
        raise ValueError(
            f"Unknown model {name!r}: use one of {', '.join(VARIANTS)} or "
            "convmixer_DIM_DEPTH[_kKERNEL][_pPATCH][_relu]"
        )
    dim, depth, kernel, patch, activation = match.groups()
    return Variant(int(dim), int(depth), int(kernel or 9), int(patch or 7), activation or "gelu")


def create_model(name: str, /, **kwargs) -> keras.Model:
    """A ConvMixer by name, like `timm.create_model`: `create_model("convmixer_768_32",
    weights="imagenet")`, or a spelled-out size such as `"convmixer_256_8_k5_p2"`.

    Args:
        name: str. See `variant_from_name`.
        **kwargs: any `ConvMixer` argument but the shape ones; `classes` defaults to the
            checkpoint's where it says, else the variant's (10 for convmixer_256_8, else 1000).
    """
    v = variant_from_name(name)
    if kwargs.get("classes") is None:
        published = _published_classes(kwargs.get("weights"), kwargs.get("include_top", True))
        kwargs["classes"] = published or v.classes
    kwargs.setdefault("name", name)
    return ConvMixer(v.dim, v.depth, v.kernel_size, v.patch_size, v.activation, **kwargs)


def _published_classes(weights, include_top: bool) -> int | None:
    """The class count that `weights` publish (`pretrained.published_classes`); None for a
    model without a classifier."""
    from keras_convmixer import pretrained  # imported here: it imports this module

    return pretrained.published_classes(weights) if include_top else None


def find_variant(dim, depth, kernel_size, patch_size) -> str | None:
    """The name of the variant with this shape, or None."""
    for name, v in VARIANTS.items():
        if (v.dim, v.depth, v.kernel_size, v.patch_size) == (dim, depth, kernel_size, patch_size):
            return name
    return None


def _check_input_shape(input_shape, patch_size: int, data_format: str) -> tuple:
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            "input_shape must be a tuple of 3 entries, (height, width, channels) for "
            "channels_last or (channels, height, width) for channels_first. "
            f"Received: input_shape={input_shape!r}"
        )
    channel_index = -1 if data_format == "channels_last" else 0
    channels = input_shape[channel_index]
    spatial = [d for i, d in enumerate(input_shape) if i != channel_index % 3]
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(
            f"input_shape must have a positive channel count in position {channel_index} "
            f"for {data_format}. Received: input_shape={tuple(input_shape)!r}"
        )
    for side in spatial:
        if side is None:
            continue
        if isinstance(side, bool) or not isinstance(side, int) or side < patch_size:
            raise ValueError(
                f"input_shape must be at least one patch ({patch_size}×{patch_size}) in height "
                f"and width, or None. Received: input_shape={tuple(input_shape)!r} with "
                f"patch_size={patch_size}"
            )
    return tuple(input_shape)


def ConvMixer(
    dim: int,
    depth: int,
    kernel_size: int = 9,
    patch_size: int = 7,
    activation="gelu",
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    input_shape: tuple | None = None,
    pooling: str | None = None,
    classes: int | None = None,
    classifier_activation="softmax",
    include_preprocessing: bool = False,
    data_format: str | None = None,
    depthwise_impl: str = "auto",
    remat: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Builds a ConvMixer ([Patches Are All You Need?](https://arxiv.org/abs/2201.09792)).

    The model is fully convolutional: any input at least one patch in size works, and the
    head is global average pooling followed by a Dense layer.

    Args:
        dim: int. Hidden width (channels after the patch embedding).
        depth: int. Number of ConvMixer blocks.
        kernel_size: int. Side of the depthwise kernels. Defaults to 9.
        patch_size: int. Side of the patches of the stem. Defaults to 7.
        activation: str or callable. Defaults to `"gelu"` (exact, erf form).
        include_top: bool. Whether to end with the classifier. Defaults to True.
        weights: `None` (random), `"imagenet"` (the published checkpoint of the variant with
            this shape), the path of a weights file: Keras `.weights.h5`/`.keras`, timm
            `.safetensors`, or PyTorch `.pth`/`.pth.tar`/`.bin` (needs torch), or such a file
            on the Hugging Face Hub, `"hf://OWNER/REPO[@REV][/FILE]"` (FILE defaults to
            `model.safetensors`, timm's). Defaults to None.
        input_tensor: optional Keras tensor to use as the model's input.
        input_shape: optional `(height, width, channels)` (`(channels, height, width)` for
            channels_first); height and width may be None. Defaults to `(None, None, 3)`.
        pooling: `None`, `"avg"` or `"max"`: global pooling of the features when
            `include_top=False` (None keeps the feature map). Defaults to None.
        classes: int. Number of classes of the classifier. Defaults to the checkpoint's
            where it says (1000 for `"imagenet"`; `num_classes` of timm's config.json for a
            Hub repository or folder), else 1000. With another count than the checkpoint's,
            the backbone is loaded and the classifier starts from its initialisation, for
            fine-tuning (timm's `pretrained=True, num_classes=N`).
        classifier_activation: activation of the classifier; `None` returns logits.
            Defaults to `"softmax"`. The classifier computes in float32 under mixed precision.
        include_preprocessing: bool. If True the model takes RGB in [0, 255] and applies
            `keras_convmixer.preprocess_input` itself. Defaults to False (inputs already
            normalised with the ImageNet mean and std, like timm's model).
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        depthwise_impl: `"auto"`, `"native"` or `"shift"`: how depthwise convolutions run
            (same numbers; see `keras_convmixer.kernels`). Defaults to `"auto"`.
        remat: bool. Gradient checkpointing (timm's `set_grad_checkpointing`): in training,
            each block's activations are computed again in the backward pass rather than
            kept, for 20–40% more time a step. Same numbers. Defaults to False.
        name: str. Model name. Defaults to `convmixer_{dim}_{depth}`.

    Returns:
        A `keras.Model`.

    Example:
    ```python
    model = keras_convmixer.ConvMixer(256, 8, kernel_size=5, patch_size=2, classes=10)
    logits = model(np.zeros((1, 32, 32, 3)))
    ```
    """
    dim = check_positive_int("dim", dim)
    depth = check_positive_int("depth", depth)
    kernel_size = check_positive_int("kernel_size", kernel_size)
    patch_size = check_positive_int("patch_size", patch_size)
    get_activation(activation)
    data_format = check_data_format(data_format)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}. Received: pooling={pooling!r}")
    if include_top:
        if classes is None:
            classes = _published_classes(weights, include_top) or 1000
        classes = check_positive_int("classes", classes)
        get_activation(classifier_activation, "classifier_activation")
    if input_shape is None:
        input_shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)
    input_shape = _check_input_shape(input_shape, patch_size, data_format)

    from keras_convmixer import pretrained  # imported here: it imports this module

    pretrained.check_weights_argument(
        weights,
        dim=dim,
        depth=depth,
        kernel_size=kernel_size,
        patch_size=patch_size,
        activation=activation,
        input_shape=input_shape,
        data_format=data_format,
    )

    tune_xla_cpu(keras.config.dtype_policy().compute_dtype)
    if input_tensor is None:
        inputs = keras.Input(shape=input_shape, name="image")
    elif keras.backend.is_keras_tensor(input_tensor):
        inputs = input_tensor
    else:
        inputs = keras.Input(tensor=input_tensor, shape=input_shape, name="image")

    x = inputs
    if include_preprocessing:
        x = preprocessing_layer(data_format)(x)
    x = PatchEmbedding(dim, patch_size, activation, data_format=data_format, name="stem")(x)
    for i in range(depth):
        x = ConvMixerBlock(
            dim,
            kernel_size,
            activation,
            data_format=data_format,
            depthwise_impl=depthwise_impl,
            remat=remat,
            name=f"block_{i}",
        )(x)
    if include_top:
        x = GlobalAveragePooling(data_format=data_format, name="avg_pool")(x)
        x = layers.Dense(
            classes,
            activation=classifier_activation,
            dtype=_head_dtype(),
            name="predictions",
        )(x)
    elif pooling == "avg":
        x = GlobalAveragePooling(data_format=data_format, name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(data_format=data_format, name="max_pool")(x)

    model_inputs = inputs if input_tensor is None else keras.utils.get_source_inputs(inputs)
    model = keras.Model(model_inputs, x, name=name or f"convmixer_{dim}_{depth}")
    pretrained.load_weights(model, weights, include_top=include_top)
    return model


def _head_dtype() -> str | None:
    """float32 under a mixed-precision policy, so logits and softmax come out in float32."""
    policy = keras.config.dtype_policy()
    return "float32" if policy.compute_dtype in ("float16", "bfloat16") else None


def preprocessing_layer(data_format: str) -> layers.Normalization:
    """A layer computing `(x / 255 - mean) / std` on RGB in [0, 255].

    Keras' `Normalization` takes a *variance*: pass std², not std.
    """
    mean = np.asarray(imagenet.MEAN) * 255.0
    std = np.asarray(imagenet.STD) * 255.0
    axis = -1 if data_format == "channels_last" else 1
    return layers.Normalization(axis=axis, mean=mean, variance=std**2, name="preprocessing")


def _named_constructor(variant_name: str, public_name: str):
    v = VARIANTS[variant_name]

    def constructor(
        include_top: bool = True,
        weights: str | None = None,
        input_tensor=None,
        input_shape: tuple | None = None,
        pooling: str | None = None,
        classes: int | None = None,
        classifier_activation="softmax",
        include_preprocessing: bool = False,
        data_format: str | None = None,
        depthwise_impl: str = "auto",
        remat: bool = False,
        name: str = variant_name,
    ) -> keras.Model:
        return create_model(
            variant_name,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            include_preprocessing=include_preprocessing,
            data_format=data_format,
            depthwise_impl=depthwise_impl,
            remat=remat,
            name=name,
        )

    constructor.__name__ = constructor.__qualname__ = public_name
    constructor.__doc__ = (
        f"ConvMixer-{v.dim}/{v.depth} (kernel {v.kernel_size}, patch {v.patch_size}, "
        f"{v.activation.upper()}); {v.classes} classes by default, or the checkpoint's.\n\n"
        "Same arguments as `keras_convmixer.ConvMixer`, less the shape ones.\n\n"
        f"Example:\n```python\nmodel = keras_convmixer.{public_name}()\n```\n"
    )
    return constructor


ConvMixer1536_20 = _named_constructor("convmixer_1536_20", "ConvMixer1536_20")
ConvMixer768_32 = _named_constructor("convmixer_768_32", "ConvMixer768_32")
ConvMixer1024_20 = _named_constructor("convmixer_1024_20", "ConvMixer1024_20")
ConvMixer256_8 = _named_constructor("convmixer_256_8", "ConvMixer256_8")


def block_count(model: keras.Model) -> int:
    """The number of ConvMixer blocks of `model`; an error for a model without any."""
    depth = sum(isinstance(layer, ConvMixerBlock) for layer in model.layers)
    if depth == 0:
        raise ValueError(
            "model must be a ConvMixer built by keras_convmixer (it has no ConvMixerBlock). "
            f"Received: model={model.name!r}"
        )
    return depth


def feature_extractor(model: keras.Model, blocks=None) -> keras.Model:
    """A model sharing `model`'s layers that returns the stem's and blocks' outputs as a dict.

    The original model is unchanged: the new model reuses its layers and weights.

    Args:
        model: a model built by `keras_convmixer`.
        blocks: iterable of block indices (negative ones count from the end), or None for
            every block. Defaults to None.

    Returns:
        A `keras.Model` whose outputs are `{"stem": ..., "block_0": ..., ...}`.
    """
    depth = block_count(model)
    indices = range(depth) if blocks is None else list(blocks)
    outputs = {"stem": model.get_layer("stem").output}
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -depth <= i < depth:
            raise ValueError(
                f"blocks must hold block indices in [-{depth}, {depth}). "
                f"Received: blocks={blocks!r}"
            )
        outputs[f"block_{i % depth}"] = model.get_layer(f"block_{i % depth}").output
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_features")
