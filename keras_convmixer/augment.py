"""The training augmentations, chosen per operation by correctness and measured throughput.

* RandomResizedCrop and horizontal flip: TensorFlow's stateless image ops, per example
  (`tf.image.stateless_sample_distorted_bounding_box` is the Inception crop that timm's
  RandomResizedCrop follows; Keras 3 has no RandomResizedCrop). Stateless ops with per-example
  seeds keep a seeded stream identical under parallel `map`. The crop's antialiased resize
  gives TensorFlow's values (PIL's filters, in float32); for crops that shrink, it runs as two
  passes compiled by XLA (`_compiled_resize`), which took the whole pipeline from 533–608 to
  621–650 images/s on 2 cores from JPEGs (benchmarks/README.md).
* RandAugment: `keras_convmixer.randaugment`, per example: timm's policy for ImageNet (the
  paper's `rand-m9-mstd0.5-inc1`: 15 ops) and torchvision's for CIFAR-10, each op matching
  PIL's output on the same image to one grey level. keras-cv's RandAugment, used before, is
  another policy (10 ops, with contrast, brightness and translation drawn differently); it
  draws from stateful generators that a seeded pipeline had to run one image at a time, and
  alone at 224² it ran at 660–770 images/s on 2 cores against 1,210–1,490 here
  (benchmarks/pipeline.py). Keras 3's `RandAugment` draws one set of ops per call, so on a
  batch every image gets the same ops; mapped per example it ran at 25–44 images/s.
* MixUp, CutMix: `mix` below, timm's batch mode (one λ per batch, each image mixed with its
  mirror in the batch), the reference's default. Keras 3's layers draw a λ per image, pair
  images at random and keep CutMix's box inside the image (timm clips a box around a uniform
  centre and corrects λ); they also draw from stateful generators, so a seeded pipeline had
  to run them one batch at a time, and CutMix took 1.3 ms of a core per image at 224².
* RandomErasing: `random_erasing` below. Keras 3's `RandomErasing` draws N(0, 1) noise for
  every pixel of the batch whether or not an image is erased, which made it the slowest stage
  of the ImageNet pipeline (622 images/s alone at 224² on 2 cores); this one draws noise only
  for the erased boxes' pixels (on average 4.5% of the pixels at p=0.25) and writes each box
  in place, and follows timm's box sampling (10 attempts, first that fits).
* Normalisation: one multiply-add (`normalize`).
* With `uint8_images` (timm's train.py split), normalisation and erasing move into the model:
  `training.InputStage`, Keras ops on the model's device, timm's box sampling as here. There
  it draws noise for every pixel of the batch, which costs an accelerator next to nothing
  (Keras 3's `RandomErasing` would do, but samples its boxes otherwise).
* Evaluation's resize (`data.eval_pipeline`): `resize` below, PIL's bicubic resize to within a
  level, so that evaluation sees the pixels timm's transform makes.

All of these are TensorFlow ops with stateless draws, run inside `tf.data` on every Keras
backend. The two passes over whole batches, normalisation and mixing, are each one loop
compiled by XLA (shapes are fixed there, so it compiles once).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

from keras_convmixer.randaugment import rand_augment, whole_levels
from keras_convmixer.training import ERASING_AREA, ERASING_ATTEMPTS, ERASING_RATIO, Recipe


def decode_rgb(contents) -> tf.Tensor:
    """An encoded image (JPEG, PNG, BMP or GIF's first frame) as uint8 RGB `(height, width, 3)`."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape((None, None, 3))
    return image


def decode_rgb_window(contents, window_of) -> tf.Tensor:
    """The window `(begin, size) = window_of(shape)` of an encoded image, as uint8 RGB. A JPEG's
    shape is read from its header and only the window is decoded, with one pixel more on every
    side: without it libjpeg upsamples the chroma at the window's edges with less context, and
    the edge pixels differed from decoding the whole image (by up to 18 levels); with it the
    window equals the whole image's, cut. Other formats are decoded whole, then cut."""

    def jpeg():
        shape = tf.io.extract_jpeg_shape(contents)
        begin, size = window_of(tf.stack([shape[0], shape[1], 3]))
        start = tf.maximum(begin[:2] - 1, 0)
        stop = tf.minimum(begin[:2] + size[:2] + 1, shape[:2])
        part = tf.io.decode_and_crop_jpeg(contents, tf.concat([start, stop - start], 0), 3)
        return tf.slice(part, tf.concat([begin[:2] - start, [0]], 0), size)

    def other():
        image = decode_rgb(contents)
        return tf.slice(image, *window_of(tf.shape(image)))

    image = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    image.set_shape((None, None, 3))
    return image


# PIL's resampling filters (torchvision resizes PIL images with them, in timm's pipelines):
# their support, in input pixels at scale 1.
SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}
PRECISION_BITS = 22  # of PIL's fixed-point weights for 8-bit images
BLOCK = 16  # outputs per matrix product
# Sizes are rounded up to these multiples, so that the matrix products take few distinct
# shapes: oneDNN prepares a kernel for each new shape, which doubled the time of a resize
# when every crop had its own.
SIDE_MULTIPLE, WINDOW_MULTIPLE = 16, 8


def _filter_weights(distance, bicubic):
    """PIL's triangle filter, or its cubic one (a = -0.5) where `bicubic`, in PIL's order of
    operations."""
    x = tf.abs(distance)
    triangle = tf.maximum(1.0 - x, 0.0)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    cubic = tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))
    return tf.where(bicubic, cubic, triangle)


def _ceil_div(value, divisor: int):
    return (value + divisor - 1) // divisor


def _round_up(value, multiple: int):
    return _ceil_div(value, multiple) * multiple


def _filter_span(in_size, scale, outputs, bicubic):
    """PIL's `precompute_coeffs` bounds for the output pixels `outputs` (indices, broadcast
    against `scale`, input over output size): the filter's stretch (the scale when shrinking,
    else 1), its centres on the input, and the first and past-the-last input pixels below
    `in_size` that it covers. In `scale`'s dtype."""
    stretch = tf.maximum(scale, 1.0)
    support = tf.where(bicubic, SUPPORT["bicubic"], SUPPORT["bilinear"])
    support = tf.cast(support, scale.dtype) * stretch
    centres = (tf.cast(outputs, scale.dtype) + 0.5) * scale
    first = tf.maximum(tf.cast(centres - support + 0.5, tf.int32), 0)
    stop = tf.minimum(tf.cast(centres + support + 0.5, tf.int32), in_size)
    return stretch, centres, first, stop


def _resampling_windows(in_sizes, out_sizes, extents, bicubic):
    """PIL's weights (`precompute_coeffs`) for both axes at once, `BLOCK` outputs at a time:
    the input rows of each block's window `(2, blocks, length)`, below `extents`, and the
    weights `(2, blocks, BLOCK, length)`. The filter is widened by the scale when shrinking,
    cut at the image's edges and renormalised, in float64, then made PIL's fixed-point
    integers (over 2**22, which float32 holds)."""
    scale = tf.cast(in_sizes, tf.float64) / tf.cast(out_sizes, tf.float64)
    blocks = _ceil_div(tf.reduce_max(out_sizes), BLOCK)
    stretch, centres, first, stop = _filter_span(
        in_sizes[:, None], scale[:, None], tf.range(blocks * BLOCK)[None, :], bicubic
    )
    starts = first[:, ::BLOCK]
    ends = tf.reduce_max(tf.reshape(stop, (2, blocks, BLOCK)), axis=2)
    length = _round_up(tf.reduce_max(ends - starts), WINDOW_MULTIPLE)
    taps = starts[:, :, None] + tf.range(length)  # (2, blocks, length)
    each = tf.reshape(tf.repeat(taps, BLOCK, axis=1), (2, blocks * BLOCK, length))
    distance = (tf.cast(each, tf.float64) - centres[:, :, None] + 0.5) * (1.0 / stretch[:, :, None])
    inside = (each >= first[:, :, None]) & (each < stop[:, :, None])
    weights = tf.where(inside, _filter_weights(distance, bicubic), tf.zeros_like(distance))
    # Outputs past the end of the shorter side (blocks are the longer side's) have none.
    weights = tf.math.divide_no_nan(weights, tf.reduce_sum(weights, axis=2, keepdims=True))
    one = 2.0**PRECISION_BITS
    fixed = tf.where(weights < 0, tf.math.ceil(weights * one - 0.5), tf.floor(weights * one + 0.5))
    weights = tf.cast(tf.reshape(fixed / one, (2, blocks, BLOCK, length)), tf.float32)
    return tf.minimum(taps, extents[:, None, None] - 1), weights


def _resample_rows(image, rows, weights, out_size):
    """`image` `(h, w, 3)` resampled along its first axis to `out_size` rows (the windows'
    `rows` and `weights` of `_resampling_windows`), rounded half up to whole levels and
    clipped, as PIL stores each pass."""
    shape = tf.shape(image)
    windows = tf.gather(tf.reshape(image, (shape[0], -1)), rows)
    levels = tf.clip_by_value(tf.floor(tf.matmul(weights, windows) + 0.5), 0.0, 255.0)
    return tf.reshape(levels, (-1, shape[1], 3))[:out_size]


def _resample_columns(image, rows, weights, out_size):
    columns = _resample_rows(tf.transpose(image, (1, 0, 2)), rows, weights, out_size)
    return tf.transpose(columns, (1, 0, 2))


def resize(image, height, width, bicubic=True) -> tf.Tensor:
    """An RGB image `(h, w, 3)` (whole levels in [0, 255]) resized to `(height, width)` as
    PIL 13 resizes an 8-bit image (`Image.resize`, which torchvision runs in timm's
    transforms): antialiased bilinear or bicubic (`bicubic`, a bool or a boolean tensor), in
    two passes each rounded to whole levels, the height first where it shrinks by more than
    twice as many pixels as the width, else the width first (PIL before 13: always the width
    first). float32, PIL's weights; float32 sums of PIL's fixed-point products round a level
    apart from PIL's on up to 2.5% of the pixels (tests/test_data.py). A window of an image
    is resized alike when cut first: PIL's `box` argument would filter across its edges.

    Each pass takes `BLOCK` outputs at a time from one window of consecutive input rows, as
    a batch of small matrix products. In `tf.data` it ran as fast as TensorFlow's
    antialiased resize (`ScaleAndTranslate`), which differs from PIL's by up to 5 levels on
    15% of the pixels (intermediate passes kept unrounded, unclipped, in another order)."""
    shape = tf.shape(image)[:2]
    outs = tf.stack([height, width])
    padded = _round_up(shape, SIDE_MULTIPLE)  # the rows and columns the products see
    image = tf.pad(
        tf.cast(image, tf.float32), [[0, padded[0] - shape[0]], [0, padded[1] - shape[1]], [0, 0]]
    )
    rows, weights = _resampling_windows(shape, outs, padded, bicubic)
    # Each axis's own blocks: the windows were made for the longer side's.
    blocks = [_ceil_div(size, BLOCK) for size in (height, width)]
    by_height = (rows[0, : blocks[0]], weights[0, : blocks[0]], height)
    by_width = (rows[1, : blocks[1]], weights[1, : blocks[1]], width)
    shrink = shape[0] - height
    height_first = (shrink > 0) & (shrink > 2 * (shape[1] - width))
    resized = tf.cond(
        height_first,
        lambda: _resample_columns(_resample_rows(image, *by_height), *by_width),
        lambda: _resample_rows(_resample_columns(image, *by_width), *by_height),
    )
    return tf.reshape(resized, (height, width, 3))


# Shrinking crops up to this many pixels a side (nearly all of ImageNet's) are resized by
# `_compiled_resize`, padded to a multiple of `COMPILED_MULTIPLE` on each side: XLA compiles
# each padded shape once, so at most 8 × 8 + 8 programs. Larger crops take TensorFlow's kernel.
COMPILED_LIMIT, COMPILED_MULTIPLE = 512, 64


@functools.partial(tf.function, jit_compile=True)
def _antialiased_pass(image, in_size, out_size: int, bicubic, columns: bool):
    """`image` resampled along its rows (`columns`: its columns) to `out_size`, with PIL's
    filter widened by the scale when shrinking, as TensorFlow's antialiased resize, in
    float32. Along that axis only the first `in_size` pixels hold the picture, the rest are
    padding. Each output row is a weighted sum of whole input rows: one loop over gathered rows,
    which XLA compiles once for each shape of `image`."""
    if columns:
        image = tf.transpose(image, (1, 0, 2))
    padded = tf.shape(image)[0]
    # Taps an output reads: enough for the widest filter this padded size can need. Derived
    # from the shape only, so that XLA knows it when compiling.
    taps = 2 * tf.maximum(_ceil_div(2 * padded, out_size), 2) + 1
    scale = tf.cast(in_size, tf.float32) / out_size
    stretch, centres, first, stop = _filter_span(in_size, scale, tf.range(out_size), bicubic)
    rows = first[:, None] + tf.range(taps)
    distance = (tf.cast(rows, tf.float32) - centres[:, None] + 0.5) / stretch
    weights = tf.where(rows < stop[:, None], _filter_weights(distance, bicubic), 0.0)
    weights /= tf.reduce_sum(weights, axis=1, keepdims=True)
    windows = tf.gather(tf.cast(image, tf.float32), tf.minimum(rows, padded - 1))
    resampled = tf.reduce_sum(weights[:, :, None, None] * windows, axis=1)
    return tf.transpose(resampled, (1, 0, 2)) if columns else resampled


def _compiled_resize(crop, size: int, bicubic):
    """`crop` (uint8, at most `COMPILED_LIMIT` a side) antialiased to `size`², as
    `tf.image.resize(..., antialias=True)` to 0.01 of a level, in two compiled passes."""
    shape = tf.shape(crop)[:2]
    padded = _round_up(shape, COMPILED_MULTIPLE)
    image = tf.pad(crop, [[0, padded[0] - shape[0]], [0, padded[1] - shape[1]], [0, 0]])
    rows = _antialiased_pass(image, shape[0], size, bicubic, False)
    return _antialiased_pass(rows, shape[1], size, bicubic, True)


def random_resized_crop(image, seed, size: int, scale, ratio):
    """A random crop of `scale` area and `ratio` aspect (log-uniform), resized to `size`² with
    bilinear or bicubic interpolation drawn at random (timm's "random" interpolation).
    `image`: uint8, or an encoded image (a string), of which only the crop is decoded.
    The resize gives TensorFlow's antialiased values (PIL's filters in float32, not PIL's
    8-bit rounding: augmentation needs no pixel parity, and `resize`, PIL's for evaluation,
    made the pipeline about 10% slower). Crops that shrink on some axis take
    `_compiled_resize` up to `COMPILED_LIMIT` a side, TensorFlow's kernel above."""
    crop_seed, method_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

    def window_of(shape):
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=crop_seed,
            min_object_covered=0.0,
            aspect_ratio_range=ratio,
            area_range=scale,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        return begin, crop_size

    encoded = image.dtype == tf.string
    if tuple(scale) == (1.0, 1.0) and tuple(ratio) == (1.0, 1.0):
        crop = decode_rgb(image) if encoded else image
    else:
        crop = (
            decode_rgb_window(image, window_of)
            if encoded
            else tf.slice(image, *window_of(tf.shape(image)))
        )
    if crop.shape[0] == size and crop.shape[1] == size:
        return tf.cast(crop, tf.float32)
    bicubic = tf.random.stateless_uniform([], method_seed) < 0.5

    def resized(method, antialias):
        return lambda: tf.image.resize(crop, (size, size), method=method, antialias=antialias)

    def by_method(antialias):
        return lambda: tf.cond(
            bicubic, resized("bicubic", antialias), resized("bilinear", antialias)
        )

    # A crop that grows on both axes has nothing to antialias: TensorFlow's plain kernels give
    # the antialiased values (bilinear's to float rounding, bicubic's to 0.2 of a level: it
    # reads its weights from a table) at about half the time. A crop of the size already is
    # kept (resizing it returns it unchanged, at a cost).
    shape = tf.shape(crop)[:2]
    image = tf.cond(
        tf.reduce_all(shape == size),
        lambda: tf.cast(crop, tf.float32),
        lambda: tf.cond(
            tf.reduce_all(shape <= size),
            by_method(False),
            lambda: tf.cond(
                tf.reduce_all(shape <= COMPILED_LIMIT),
                lambda: _compiled_resize(crop, size, bicubic),
                by_method(True),
            ),
        ),
    )
    # Said statically (the cond's branches differ), so that RandAugment's constants fold.
    return tf.ensure_shape(image, (size, size, 3))


def example_transform(recipe: Recipe):
    """Per-example training transform: `(uint8 or encoded image, seed) -> uint8 image` (rounded
    after the resize, as PIL's uint8 images are): crop, flip, RandAugment. uint8 is a quarter of the
    bytes to batch; `batch_transform` converts."""

    def transform(image, seed):
        crop_seed, flip_seed, policy_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3)
        )
        image = random_resized_crop(image, crop_seed, recipe.image_size, recipe.scale, recipe.ratio)
        image = whole_levels(image)
        if recipe.flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if recipe.randaugment_ops > 0:
            image = rand_augment(
                image,
                policy_seed,
                recipe.randaugment_policy,
                recipe.randaugment_ops,
                recipe.randaugment_magnitude,
                recipe.randaugment_std,
                recipe.randaugment_rate,
                recipe.mean,
            )
        image.set_shape((recipe.image_size, recipe.image_size, 3))
        return tf.cast(image, tf.uint8)

    return transform


PIPELINE_PARTS = ("examples", "batches")


def part_seed(seed: int | None, part: str) -> int | None:
    """The seed of one random part of a pipeline (one of `PIPELINE_PARTS`), derived from the
    pipeline's `seed` so that the parts draw independently; None without a seed. In
    [1, 2**31), since a seed of 0 reads as "no seed" in some of TensorFlow's ops."""
    if seed is None:
        return None
    derived = np.random.SeedSequence([seed, PIPELINE_PARTS.index(part)]).generate_state(1)[0]
    return int(derived) % 2**31 or 1


def random_erasing(images, probability: float, seed):
    """timm's RandomErasing in "pixel" mode on a batch of normalised channels-last images: with
    `probability`, one box of `ERASING_AREA` (fraction of the image, uniform) and
    `ERASING_RATIO` (height / width, log-uniform) is filled with per-pixel N(0, 1) noise. Of
    `ERASING_ATTEMPTS` drawn boxes the first that fits inside the image is used; if none fits,
    the image is kept. `seed`: a stateless seed (two integers); the same seed erases the same
    way. `training.InputStage` erases alike in the model."""
    attempts, area, ratio = ERASING_ATTEMPTS, ERASING_AREA, ERASING_RATIO
    batch = tf.shape(images)[0]
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    total = tf.cast(height * width, tf.float32)

    draws = iter(tf.unstack(tf.random.experimental.stateless_split(seed, 6)))

    def uniform(shape, low=0.0, high=1.0):
        return tf.random.stateless_uniform(shape, next(draws), low, high)

    target = uniform([batch, attempts], *area) * total
    aspect = tf.exp(uniform([batch, attempts], *map(math.log, ratio)))
    box_h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (box_h < height) & (box_w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    box_h, box_w = tf.gather(box_h, first, batch_dims=1), tf.gather(box_w, first, batch_dims=1)
    erase = (uniform([batch]) < probability) & tf.reduce_any(fits, axis=1)
    top = tf.cast(uniform([batch]) * tf.cast(height - box_h + 1, tf.float32), tf.int32)
    left = tf.cast(uniform([batch]) * tf.cast(width - box_w + 1, tf.float32), tf.int32)
    # Each erased image's box is written in place, one slice update per image (0.12 against
    # 0.42 ms of one core per 224² image for one scatter of every box pixel's indices).
    erased = tf.cast(tf.where(erase)[:, 0], tf.int32)
    noise_seeds = tf.random.experimental.stateless_split(next(draws), batch)
    channels = tf.shape(images)[3]

    def erase_box(step, images):
        i = erased[step]
        noise = tf.random.stateless_normal(
            [1, box_h[i], box_w[i], channels], noise_seeds[i], dtype=images.dtype
        )
        begin = tf.stack([i, top[i], left[i], 0])
        end = begin + tf.shape(noise)
        return step + 1, tf.raw_ops.TensorStridedSliceUpdate(
            input=images, begin=begin, end=end, strides=tf.ones([4], tf.int32), value=noise
        )

    _, images = tf.while_loop(lambda step, _: step < tf.size(erased), erase_box, (0, images))
    return images


def normalize(images, mean, std):
    """`(x / 255 - mean) / std` per channel, for channels-last images (one or a batch, any real
    or integer dtype) with values in [0, 255]: float32."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return _scale_and_shift(images, 1.0 / (255.0 * std), -mean / std)


@functools.partial(tf.function, jit_compile=True)
def _scale_and_shift(images, scale, shift):
    """`images * scale + shift` as XLA's one fused loop, which converts the dtype on the way."""
    return tf.cast(images, tf.float32) * scale + shift


def smooth_labels(one_hot, smoothing: float):
    """Label smoothing: `(1 - ε) y + ε / K`."""
    classes = tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)
    return one_hot * (1.0 - smoothing) + smoothing / classes


def mix(images, labels, seed, mixup_alpha: float, cutmix_alpha: float, switch_prob: float):
    """timm's Mixup in its default "batch" mode: one λ ~ Beta(α, α) for the whole batch, image
    i mixed with image n-1-i (the batch reversed), the labels with the same λ. With both α
    above 0, CutMix is chosen with probability `switch_prob`, else MixUp. CutMix pastes the
    same box of the reversed batch into every image: sides √(1-λ) of the image's, around a
    uniform centre, clipped to the image; λ becomes the share of the image outside the box.
    `seed`: a stateless seed (two integers). uint8 images are blended in float32 and rounded
    back to uint8, as timm's collate for its on-device normalisation does."""
    switch_seed, weight_seed, box_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = tf.random.stateless_uniform([], switch_seed) < switch_prob
    else:
        use_cutmix = tf.constant(cutmix_alpha > 0)
    alpha = tf.where(use_cutmix, float(cutmix_alpha), float(mixup_alpha))
    gammas = tf.random.stateless_gamma([2], weight_seed, alpha)
    weight = gammas[0] / (gammas[0] + gammas[1])  # Beta(α, α)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    side = tf.sqrt(1.0 - weight)
    sizes = tf.stack([height, width])
    centre = tf.random.stateless_uniform([2], box_seed) * tf.cast(sizes, tf.float32)
    centre = tf.minimum(tf.cast(centre, tf.int32), sizes - 1)  # uniform in [0, size)
    box = []
    for size, middle in ((height, centre[0]), (width, centre[1])):
        cut = tf.cast(tf.cast(size, tf.float32) * side, tf.int32)
        box += [tf.clip_by_value(middle - cut // 2, 0, size)]
        box += [tf.clip_by_value(middle + (cut + 1) // 2, 0, size)]
    area = tf.cast((box[1] - box[0]) * (box[3] - box[2]), tf.float32)
    weight = tf.where(use_cutmix, 1.0 - area / tf.cast(height * width, tf.float32), weight)
    images = _mixed_images(images, use_cutmix, weight, tf.stack(box))
    labels = weight * labels + (1.0 - weight) * tf.reverse(labels, [0])
    return images, labels


@functools.partial(tf.function, jit_compile=True)
def _mixed_images(images, use_cutmix, weight, box):
    """Each image with the batch reversed: `box` (top, bottom, left, right) of it pasted in
    (`use_cutmix`), or blended, `weight` of the image's own; uint8 images rounded back to
    uint8. One fused XLA loop: TensorFlow's own kernels took 0.23 against 0.06 ms of a core per
    224² image, making a pass for each op."""
    dtype = images.dtype
    images = tf.cast(images, tf.float32)
    reversed_images = tf.reverse(images, [0])
    rows = tf.range(tf.shape(images)[1])[:, None]
    cols = tf.range(tf.shape(images)[2])[None, :]
    inside = (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])
    pasted = tf.where(inside[:, :, None], reversed_images, images)
    blended = reversed_images + weight * (images - reversed_images)
    mixed = tf.where(use_cutmix, pasted, blended)
    return tf.cast(tf.round(mixed), dtype) if dtype == tf.uint8 else mixed


def batch_transform(recipe: Recipe, uint8_images: bool = False):
    """The batch-level part of a recipe: `(uint8 images, one-hot labels, seed) ->
    (normalised images, soft labels)`: normalisation, RandomErasing, label smoothing, then
    MixUp or CutMix. With `uint8_images`, timm's train.py split: the images stay uint8, mixed
    and rounded, and `training.InputStage` normalises and erases them in the model. `seed` (two
    integers, one pair per batch) keys every draw: all of them are stateless, so a seeded stream
    repeats under parallel `map`. (A seeded stateful op such as `tf.random.uniform(seed=s)`
    would not do: inside `tf.data` it restarts with every new iterator, so every epoch would
    erase and mix exactly as the first.)"""

    def transform(images, labels, seed):
        erasing_seed, mixing_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if not uint8_images:
            images = normalize(images, recipe.mean, recipe.std)
            if recipe.erasing_prob > 0:
                images = random_erasing(images, recipe.erasing_prob, erasing_seed)
        labels = smooth_labels(tf.cast(labels, tf.float32), recipe.label_smoothing)
        if recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0:
            images, labels = mix(
                images,
                labels,
                mixing_seed,
                recipe.mixup_alpha,
                recipe.cutmix_alpha,
                recipe.mix_switch_prob,
            )
        return images, labels

    return transform
