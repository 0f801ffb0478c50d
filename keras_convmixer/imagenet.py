"""ImageNet pre- and post-processing, matching timm's evaluation of the pretrained ConvMixers.

Inputs are RGB images with values in [0, 255]. timm's eval transform for these checkpoints is:
resize the shorter side to `int(224 / 0.96) = 233` with bicubic interpolation, centre-crop 224,
scale to [0, 1], subtract the ImageNet mean and divide by the ImageNet std.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np
from keras import ops

from keras_convmixer.checks import check_positive_int
from keras_convmixer.layers import check_data_format

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.96
IMAGE_SIZE = 224


def _channel_shape(data_format: str | None) -> tuple[int, ...]:
    """Broadcast shape of per-channel constants: channels are axis -1 or axis -3."""
    return (3,) if check_data_format(data_format) == "channels_last" else (3, 1, 1)


def preprocess_input(x, data_format: str | None = None, mean=MEAN, std=STD):
    """Normalises RGB images in [0, 255] the way the pretrained weights expect.

    Computes `(x / 255 - mean) / std` per channel, by default with the ImageNet mean
    (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

    Args:
        x: float array or tensor of RGB images, `(..., H, W, 3)` or `(..., 3, H, W)`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        mean, std: per-channel values for images in [0, 1], e.g. a training recipe's.

    Returns:
        The normalised images, same shape; a NumPy array for NumPy input.
    """
    shape = _channel_shape(data_format)
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    axis = -len(shape)
    if len(x.shape) < len(shape) or x.shape[axis] not in (3, None):
        where = "last" if axis == -1 else "third from last"
        raise ValueError(
            f"preprocess_input expects RGB images with 3 channels on the {where} axis "
            f"({check_data_format(data_format)}). Received: x.shape={tuple(x.shape)}"
        )
    mean = np.reshape(np.asarray(mean, "float32"), shape)
    std = np.reshape(np.asarray(std, "float32"), shape)
    if isinstance(x, np.ndarray):
        return ((x.astype("float32") / 255.0 - mean) / std).astype("float32")
    x = ops.cast(x, "float32")
    return (x / 255.0 - mean) / std


@functools.cache
def class_names() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes in model output order, as (WordNet id, lemmas) pairs.

    Shipped with the package (from WordNet via timm's class list) so nothing is downloaded.
    """
    text = resources.files("keras_convmixer").joinpath("imagenet_classes.json").read_text()
    return tuple((wnid, name) for wnid, name in json.loads(text))


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """The `top` classes of each row of `preds`, as (WordNet id, short name, score), best first.

    Args:
        preds: `(batch, 1000)` scores (probabilities or logits).
        top: int. How many classes per image. Defaults to 5.
    """
    check_positive_int("top", top)
    preds = np.asarray(ops.convert_to_numpy(preds))
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "decode_predictions expects a batch of ImageNet scores of shape (batch, 1000). "
            f"Received: preds.shape={preds.shape}"
        )
    names = class_names()
    results = []
    for row in preds:
        order = np.argsort(-row, kind="stable")[:top]
        results.append([(names[i][0], short_name(names[i][1]), float(row[i])) for i in order])
    return results


def short_name(lemmas: str) -> str:
    """The first WordNet lemma of a class, e.g. "tabby" for "tabby, tabby cat"."""
    return lemmas.split(",")[0].strip()


def eval_transform(image, image_size: int = IMAGE_SIZE, crop_pct: float = CROP_PCT):
    """timm's evaluation transform: shorter side to `int(image_size / crop_pct)` (bicubic),
    then a centred `image_size` crop. Values stay in the input's range; no normalisation.

    Args:
        image: one RGB image, `(H, W, 3)` array or tensor (channels last); a grey one,
            `(H, W)` or `(H, W, 1)`, is made RGB first.
        image_size: int. Output side. Defaults to 224.
        crop_pct: float in (0, 1]. Defaults to 0.96, so the shorter side becomes 233.

    Returns:
        A float32 `(image_size, image_size, 3)` array.
    """
    check_positive_int("image_size", image_size)
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1]. Received: crop_pct={crop_pct!r}")
    from PIL import Image

    array = np.asarray(ops.convert_to_numpy(image))
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1):
        array = np.repeat(array.reshape(array.shape[:2] + (1,)), 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            "eval_transform expects one RGB image (H, W, 3), or a grey one (H, W) or (H, W, 1). "
            f"Received shape {array.shape}"
        )
    height, width = array.shape[:2]
    short = int(image_size / crop_pct)
    # torchvision's Resize(int): the shorter side becomes `short`, the longer one is truncated.
    if height <= width:
        size = (int(short * width / height), short)  # PIL wants (width, height)
    else:
        size = (short, int(short * height / width))
    if array.dtype == np.uint8:  # the path timm takes: PIL's 8-bit bicubic
        resized = np.asarray(Image.fromarray(array).resize(size, Image.BICUBIC))
    else:
        channels = [
            Image.fromarray(array[..., c].astype("float32"), mode="F").resize(size, Image.BICUBIC)
            for c in range(3)
        ]
        resized = np.stack([np.asarray(c) for c in channels], axis=-1)
    top = int(round((resized.shape[0] - image_size) / 2.0))
    left = int(round((resized.shape[1] - image_size) / 2.0))
    return resized[top : top + image_size, left : left + image_size].astype("float32")
