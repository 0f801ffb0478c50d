"""RandAugment as timm and torchvision define it, one image at a time, with stateless draws.

Two policies, as data (`POLICIES`):

* `"timm"`: timm's `rand-m{M}-mstd{S}-inc1`, the paper's ImageNet setting (M 9, S 0.5): 15
  ops; each of the chosen ops is applied with probability `rate` (timm: 0.5) at a magnitude
  drawn from N(M, S) and clipped to [0, 10]; geometric ops fill with the ImageNet mean colour.
* `"torchvision"`: torchvision's `RandAugment(num_ops, magnitude)`, which
  locuslab/convmixer-cifar10 uses: 14 ops with the identity, always applied, the magnitude a
  bin of 0..30, black fill, nearest-neighbour sampling.

The reference pipelines run these ops with PIL on uint8 images. Here images are float32 with
whole values in [0, 255], and every op rounds, truncates and clips as PIL does, so that op by
op the results match PIL's (tests/test_randaugment.py compares each op with timm's). One
difference: timm resamples its geometric ops bilinearly or bicubically at random; here they
are always bilinear, the cheaper of the two (a bicubic sample would gather 16 pixels).

Each image draws its own ops, magnitudes and signs from a stateless seed, and only the drawn
ops run (`tf.switch_case`), so RandAugment costs what the drawn ops cost and a seeded stream
repeats under parallel `map`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import tensorflow as tf

from keras_convmixer.training import RANDAUGMENT_MAX_MAGNITUDE

Image = tf.Tensor  # float32 (height, width, 3), whole values in [0, 255]


def whole_levels(image: Image) -> Image:
    """Rounded and clipped to [0, 255], as a uint8 image holds it."""
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


# TensorFlow's CPU kernels are slow at `tf.where` and at broadcasting along a trailing axis of
# 3 (each about 0.8 ms of a core on a 224² image against 0.1 for an elementwise op), and at
# tiling values computed at run time, so the ops below select with 0/1 masks in arithmetic,
# tile per-channel constants (folded before the pipeline runs) and work on the channels as
# rows where per-channel values are computed.


def _select(mask, chosen: Image, other: Image) -> Image:
    """`tf.where(mask, chosen, other)` for whole-valued images: exact."""
    return other + tf.cast(mask, tf.float32) * (chosen - other)


def tile_channels(values, images) -> tf.Tensor:
    """Per-channel `values` tiled to `(height, width, channels)` of `images` (one image or a
    batch), to multiply or add without a trailing-axis broadcast."""
    multiples = tf.concat([tf.shape(images)[-3:-1], [1]], axis=0)
    return tf.tile(tf.reshape(tf.cast(values, tf.float32), (1, 1, -1)), multiples)


def _blend(degenerate: Image, image: Image, factor) -> Image:
    """PIL's `Image.blend(degenerate, image, factor)`, which `ImageEnhance` runs: truncated."""
    return tf.floor(tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0))


def _gray(image: Image) -> Image:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point), in all 3 channels.
    A product with a 3×3 matrix of equal columns: exact, as every sum stays below 2**24."""
    weights = tf.tile(tf.constant([[19595.0], [38470.0], [7471.0]]), [1, 3])
    luma = tf.matmul(tf.reshape(image, (-1, 3)), weights)
    return tf.reshape(tf.floor((luma + 32768.0) / 65536.0), tf.shape(image))


def identity(image: Image, _=None) -> Image:
    return image


def auto_contrast(image: Image, _=None) -> Image:
    """Each channel stretched from its [min, max] to [0, 255]; a flat channel is kept.
    Computed on the channels as rows (`(3, pixels)`): the reductions and the per-channel
    scale then run along the fast axis (0.40 against 0.85 ms of a core at 224²)."""
    planes = tf.transpose(tf.reshape(image, (-1, 3)))
    low = tf.reduce_min(planes, axis=1, keepdims=True)
    high = tf.reduce_max(planes, axis=1, keepdims=True)
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1.0), 1.0)
    offset = tf.where(high > low, -low * scale, 0.0)
    stretched = tf.clip_by_value(tf.floor(planes * scale + offset), 0.0, 255.0)
    return tf.reshape(tf.transpose(stretched), tf.shape(image))


def equalize(image: Image, _=None) -> Image:
    """PIL's `ImageOps.equalize`: per channel, a lookup table from the cumulative histogram."""
    # One histogram per channel: channel c counts in bins 256 c .. 256 c + 255.
    values = tf.cast(image + tile_channels([0.0, 256.0, 512.0], image), tf.int32)
    histogram = tf.reshape(tf.math.bincount(values, minlength=768, maxlength=768), (3, 256))
    used = histogram > 0
    last = 255 - tf.argmax(tf.reverse(tf.cast(used, tf.int32), [1]), axis=1, output_type=tf.int32)
    last_count = tf.gather(histogram, last, batch_dims=1)
    step = (tf.reduce_sum(histogram, axis=1) - last_count) // 255
    below = tf.cumsum(histogram, axis=1, exclusive=True)
    lut = (step[:, None] // 2 + below) // tf.maximum(step[:, None], 1)
    keep = (tf.reduce_sum(tf.cast(used, tf.int32), axis=1) <= 1) | (step == 0)
    lut = tf.where(keep[:, None], tf.range(256)[None, :], tf.minimum(lut, 255))
    return tf.cast(tf.gather(tf.reshape(lut, [-1]), values), tf.float32)


def invert(image: Image, _=None) -> Image:
    return 255.0 - image


def posterize(image: Image, bits) -> Image:
    """Keeps the `bits` most significant bits (8 or more: unchanged, 0: black)."""
    unit = 2.0 ** (8.0 - tf.clip_by_value(tf.cast(bits, tf.float32), 0.0, 8.0))
    return tf.floor(image * (1.0 / unit)) * unit


def solarize(image: Image, threshold) -> Image:
    return _select(image < threshold, image, 255.0 - image)


def solarize_add(image: Image, add, threshold: float = 128.0) -> Image:
    return _select(image < threshold, tf.minimum(image + add, 255.0), image)


def color(image: Image, factor) -> Image:
    return _blend(_gray(image), image, factor)


def contrast(image: Image, factor) -> Image:
    """Blended with a flat image of the grey level's rounded mean."""
    return _blend(tf.floor(tf.reduce_mean(_gray(image)) + 0.5), image, factor)


def brightness(image: Image, factor) -> Image:
    return _blend(0.0, image, factor)


def sharpness(image: Image, factor) -> Image:
    """Blended with PIL's SMOOTH filter (3×3, centre 5, others 1, over 13; the border
    pixels kept as they are). The filter is summed from shifted slices: TensorFlow's CPU
    depthwise convolution of 3 channels took 4.2 against 0.8 ms of a core at 224²."""
    columns = image[:-2] + image[1:-1] + image[2:]
    box = columns[:, :-2] + columns[:, 1:-1] + columns[:, 2:]
    inner = whole_levels((box + 4.0 * image[1:-1, 1:-1]) * (1.0 / 13.0))
    middle = tf.concat([image[1:-1, :1], inner, image[1:-1, -1:]], axis=1)
    smooth = tf.concat([image[:1], middle, image[-1:]], axis=0)
    return _blend(smooth, image, factor)


def affine(image: Image, matrix, fill, interpolation: str = "BILINEAR") -> Image:
    """PIL's `Image.transform(size, AFFINE, matrix)`: the output pixel centred at (x, y) takes
    the input at (a x + b y + c, d x + e y + f), in coordinates where pixel centres sit at
    half-integers, and `fill` (one value per channel) where that lies outside the input.
    As PIL does, sampling near the edges repeats the edge pixels, and the result truncates.

    The samples are gathered from the image's pixels, with `fill` as one more, rather than
    warped by TensorFlow's projective transform: at 224² inside `tf.data`, 1.6–2.3 against
    2.6–3.9 ms of a core for a rotation. A matrix whose second (first) row is the identity, in
    Python numbers, keeps whole rows (columns), whose samples need two neighbours rather than
    four: a shear, 0.9–1.2 against 1.9–3.2 ms.
    """
    a, b, c, d, e, f = (v if _is_number(v) else tf.cast(v, tf.float32) for v in matrix)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    size_x, size_y = _size(image)

    def source(channels: int):
        """Where each output pixel samples, in (height, width, channels): computed at that
        shape from folded constants, as TensorFlow broadcasts along a trailing axis slowly."""
        extent = tf.stack([height, width, channels])
        x = tf.broadcast_to(tf.reshape(tf.range(size_x) + 0.5, (1, -1, 1)), extent)
        y = tf.broadcast_to(tf.reshape(tf.range(size_y) + 0.5, (-1, 1, 1)), extent)
        return a * x + b * y + c, d * x + e * y + f

    source_x, source_y = source(1)
    inside = (source_x >= 0) & (source_x < size_x) & (source_y >= 0) & (source_y < size_y)
    table = tf.concat(
        [tf.reshape(image, (-1, 3)), tf.reshape(tf.cast(fill, tf.float32), (1, 3))], 0
    )

    def tap(row, column):
        """The pixels at whole coordinates; `fill` for every tap of an output pixel whose source
        lies outside, so that it blends to `fill`."""
        index = tf.cast(row, tf.int32) * width + tf.cast(column, tf.int32)
        return tf.reshape(tf.gather(table, tf.where(inside, index, height * width)), shape)

    if interpolation == "NEAREST":
        return tap(tf.floor(source_y), tf.floor(source_x))

    def split(coordinate, size):
        """Index coordinate (centres at whole numbers) clamped to the image: whole, fraction."""
        index = tf.clip_by_value(coordinate - 0.5, 0.0, size - 1.0)
        whole = tf.floor(index)
        return whole, index - whole

    column, _ = split(source_x, size_x)
    row, _ = split(source_y, size_y)
    right, below = tf.minimum(column + 1.0, size_x - 1.0), tf.minimum(row + 1.0, size_y - 1.0)
    x3, y3 = source(3)
    across, down = split(x3, size_x)[1], split(y3, size_y)[1]
    first = tap(row, column)
    if _known((a, b, c), (1, 0, 0)):  # whole columns
        return tf.floor(first + down * (tap(below, column) - first))
    top = first + across * (tap(row, right) - first)
    if _known((d, e, f), (0, 1, 0)):  # whole rows
        return tf.floor(top)
    bottom_left = tap(below, column)
    bottom = bottom_left + across * (tap(below, right) - bottom_left)
    return tf.floor(top + down * (bottom - top))


def _is_number(value) -> bool:
    return isinstance(value, (int, float))


def _known(values: tuple, expected: tuple) -> bool:
    """Whether `values` are Python numbers equal to `expected`, known before tracing."""
    return all(_is_number(v) for v in values) and values == expected


def _size(image: Image):
    shape = tf.cast(tf.shape(image), tf.float32)
    return shape[1], shape[0]  # width, height


def shear_x(image: Image, factor, **kwargs) -> Image:
    return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), **kwargs)


def shear_y(image: Image, factor, **kwargs) -> Image:
    return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), **kwargs)


def translate_x(image: Image, pixels, **kwargs) -> Image:
    return _translate(image, pixels, 1, **kwargs)


def translate_y(image: Image, pixels, **kwargs) -> Image:
    return _translate(image, pixels, 0, **kwargs)


def _translate(image: Image, pixels, axis: int, fill, interpolation: str = "BILINEAR") -> Image:
    """`affine` for a shift of `pixels` along `axis` (0: rows, 1: columns), from slices of the
    image rather than gathered pixels (0.45–0.6 against 0.9–1.2 ms of a core at 224²; 2.5 as
    TensorFlow's projective transform): the same samples, the edge pixels repeated, `fill`
    where the source lies outside."""
    pixels = tf.cast(pixels, tf.float32)
    size = tf.shape(image)[axis]
    source = tf.cast(tf.range(size), tf.float32) + 0.5 + pixels  # where `affine` samples
    start = tf.reduce_sum(tf.cast(source < 0.0, tf.int32))
    stop = tf.reduce_sum(tf.cast(source < tf.cast(size, tf.float32), tf.int32))

    def on_axis(value, elsewhere):
        dims = [elsewhere] * 3
        dims[axis] = value
        return tf.stack(dims)

    edged = tf.pad(image, [[1, 1] if d == axis else [0, 0] for d in range(3)], mode="SYMMETRIC")

    def taken(offset):
        """Indices start..stop-1 of the output from index + offset of the image."""
        first = tf.clip_by_value(start + offset + 1, 0, size + 2 - (stop - start))  # if empty
        return tf.slice(edged, on_axis(first, 0), on_axis(stop - start, -1))

    if interpolation == "NEAREST":
        moved = taken(tf.cast(tf.floor(pixels + 0.5), tf.int32))
    else:
        whole = tf.floor(pixels)
        offset, part = tf.cast(whole, tf.int32), pixels - whole
        low = taken(offset)
        moved = tf.floor(low + part * (taken(offset + 1) - low))
    height, width = tf.unstack(tf.shape(image)[:2])
    colour = tf.reshape(tf.cast(fill, tf.float32), (1, 1, 3))

    def filled(count):
        extent = [height, width, 1]
        extent[axis] = count
        return tf.tile(colour, tf.stack(extent))

    return tf.concat([filled(start), moved, filled(size - stop)], axis)


def rotate(image: Image, degrees, **kwargs) -> Image:
    """PIL's `Image.rotate(degrees)`: counter-clockwise about the image's centre."""
    width, height = _size(image)
    angle = -tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    matrix = (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    return affine(image, matrix, **kwargs)


@dataclasses.dataclass(frozen=True)
class Op:
    """One op of a policy: `apply(image, argument)` and the argument for a magnitude and a
    sign (±1; ops without direction ignore it); `geometric` ops take the fill and sampling."""

    apply: Callable
    argument: Callable = lambda magnitude, sign, image: 0.0
    geometric: bool = False


def _enhance_increasing(magnitude, sign, _):
    return tf.maximum(0.1, 1.0 + sign * magnitude / 10.0 * 0.9)


def _torchvision_enhance(magnitude, sign, _):
    return 1.0 + sign * magnitude / 30.0 * 0.9


def _relative(magnitude, sign, image, axis: int):
    """timm: a translation of up to 0.45 of the width (axis 0) or height (axis 1)."""
    return sign * magnitude / 10.0 * 0.45 * _size(image)[axis]


def _torchvision_translation(magnitude, sign, image, axis: int):
    """torchvision: whole pixels, up to 150/331 of the side, the other way round from timm."""
    return -sign * tf.floor(magnitude / 30.0 * 150.0 / 331.0 * _size(image)[axis])


TIMM_OPS: dict[str, Op] = {
    "AutoContrast": Op(auto_contrast),
    "Equalize": Op(equalize),
    "Invert": Op(invert),
    "Rotate": Op(rotate, lambda m, s, _: s * m / 10.0 * 30.0, geometric=True),
    "PosterizeIncreasing": Op(posterize, lambda m, s, _: 4.0 - tf.floor(m / 10.0 * 4.0)),
    "SolarizeIncreasing": Op(solarize, lambda m, s, _: 256.0 - tf.floor(m / 10.0 * 256.0)),
    "SolarizeAdd": Op(solarize_add, lambda m, s, _: tf.floor(m / 10.0 * 110.0)),
    "ColorIncreasing": Op(color, _enhance_increasing),
    "ContrastIncreasing": Op(contrast, _enhance_increasing),
    "BrightnessIncreasing": Op(brightness, _enhance_increasing),
    "SharpnessIncreasing": Op(sharpness, _enhance_increasing),
    "ShearX": Op(shear_x, lambda m, s, _: s * m / 10.0 * 0.3, geometric=True),
    "ShearY": Op(shear_y, lambda m, s, _: s * m / 10.0 * 0.3, geometric=True),
    "TranslateXRel": Op(translate_x, functools.partial(_relative, axis=0), geometric=True),
    "TranslateYRel": Op(translate_y, functools.partial(_relative, axis=1), geometric=True),
}

TORCHVISION_OPS: dict[str, Op] = {
    "Identity": Op(identity),
    "ShearX": Op(shear_x, lambda m, s, _: s * m / 30.0 * 0.3, geometric=True),
    "ShearY": Op(shear_y, lambda m, s, _: s * m / 30.0 * 0.3, geometric=True),
    "TranslateX": Op(
        translate_x, functools.partial(_torchvision_translation, axis=0), geometric=True
    ),
    "TranslateY": Op(
        translate_y, functools.partial(_torchvision_translation, axis=1), geometric=True
    ),
    "Rotate": Op(rotate, lambda m, s, _: s * m, geometric=True),
    "Brightness": Op(brightness, _torchvision_enhance),
    "Color": Op(color, _torchvision_enhance),
    "Contrast": Op(contrast, _torchvision_enhance),
    "Sharpness": Op(sharpness, _torchvision_enhance),
    "Posterize": Op(posterize, lambda m, s, _: 8.0 - tf.round(m / 7.5)),
    "Solarize": Op(solarize, lambda m, s, _: 255.0 - m * 8.5),
    "AutoContrast": Op(auto_contrast),
    "Equalize": Op(equalize),
}


@dataclasses.dataclass(frozen=True)
class Policy:
    """A RandAugment policy: its ops, the geometric ops' fill (None: the dataset's mean
    colour) and sampling. Its largest magnitude is in `training.RANDAUGMENT_MAX_MAGNITUDE`,
    with the names, which the command line and recipe checks read without TensorFlow."""

    ops: dict[str, Op]
    fill: tuple[float, float, float] | None
    interpolation: str


POLICIES: dict[str, Policy] = {
    "timm": Policy(TIMM_OPS, None, "BILINEAR"),
    "torchvision": Policy(TORCHVISION_OPS, (0.0, 0.0, 0.0), "NEAREST"),
}


def rand_augment(
    image: Image,
    seed,
    policy: str,
    num_ops: int,
    magnitude: float,
    magnitude_std: float = 0.0,
    rate: float = 1.0,
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
) -> Image:
    """`num_ops` ops of `policy` drawn with replacement, each applied with probability `rate`
    at a magnitude from N(`magnitude`, `magnitude_std`) clipped to [0, the policy's largest],
    each with a random sign. `seed`: a stateless seed (two integers). `mean`: the dataset's
    mean colour in [0, 1], the timm policy's fill."""
    chosen = POLICIES[policy]
    ops = list(chosen.ops.values())
    fill = chosen.fill or tuple(float(round(255 * m)) for m in mean)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    which = tf.random.stateless_uniform([num_ops], seeds[0], 0, len(ops), tf.int32)
    applied = tf.random.stateless_uniform([num_ops], seeds[1]) < rate
    levels = magnitude + magnitude_std * tf.random.stateless_normal([num_ops], seeds[2])
    levels = tf.clip_by_value(levels, 0.0, RANDAUGMENT_MAX_MAGNITUDE[policy])
    signs = tf.where(tf.random.stateless_uniform([num_ops], seeds[3]) < 0.5, -1.0, 1.0)

    def branch(op: Op, image, level, sign):
        kwargs = {"fill": fill, "interpolation": chosen.interpolation} if op.geometric else {}

        def run():
            # Every op keeps the shape; said statically, the next op's constants fold.
            return tf.ensure_shape(
                op.apply(image, op.argument(level, sign, image), **kwargs), image.shape
            )

        return run

    draws = (tf.unstack(d, num=num_ops) for d in (which, applied, levels, signs))
    for op_index, is_applied, level, sign in zip(*draws, strict=True):
        branches = [branch(op, image, level, sign) for op in ops]
        branches.append(branch(Op(identity), image, level, sign))  # not applied
        image = tf.switch_case(tf.where(is_applied, op_index, len(ops)), branches)
    return image
