"""The training augmentations, chosen per operation by correctness and measured throughput.

* RandomResizedCrop and horizontal flip: TensorFlow's stateless image ops, per example
  (`tf.image.stateless_sample_distorted_bounding_box` is the Inception crop that timm's
  RandomResizedCrop follows; Keras 3 has no RandomResizedCrop). Stateless ops with per-example
  seeds keep a seeded stream identical under parallel `map`.
* RandAugment: keras-cv's, on batches. It draws the ops per image and supports timm's magnitude
  noise (`magnitude_stddev`). Keras 3's `RandAugment` draws one set of ops per call, so on a
  batch every image gets the same ops; mapped per example it runs every candidate op and keeps
  one: 33 images/s against keras-cv's 956 at 224² on this project's 2-core CPU
  (benchmarks/pipeline.py). Its two shears skip an identity resampling (`_single_axis_shears`).
  It is keras-cv's policy, not a port of timm's: 10 ops (AutoContrast, Equalize, Solarize
  with its addition, Color, Contrast, Brightness, ShearX/Y, TranslateX/Y) where timm's `rand`
  has 15 (also Invert, Rotate, Posterize, Sharpness, and SolarizeAdd on its own). Color,
  Solarize and the shears draw their magnitude from N(m, std) as timm does; Contrast,
  Brightness and Translate draw uniformly up to m: a contrast factor in [0.1, 1.9], an
  additive brightness shift up to ±0.9·255 (timm's is multiplicative), a translation up to
  ±0.9 of the size with a reflected fill (timm: ±0.405 with the mean colour) at m = 0.9.
  Its magnitude samplers are seeded stateful ops: under a global seed (a seeded pipeline, or
  `keras.utils.set_random_seed`) each sampler's sequence of draws restarts every epoch. Which
  image gets which draw still changes, since the op choices come from generators.
* MixUp, CutMix: Keras 3's layers, on batches. They draw a weight (and box) per image, as
  timm's "elem" mode does (timm's default draws one per batch).
* RandomErasing: `random_erasing` below, the one op written here. Keras 3's `RandomErasing`
  draws N(0, 1) noise for every pixel of the batch whether or not an image is erased, which
  made it the slowest stage of the ImageNet pipeline (622 images/s alone at 224² on 2 cores);
  this one draws noise only for the erased boxes' pixels (on average 4.5% of the pixels at
  p=0.25) and writes them with one scatter, and follows timm's box sampling (10 attempts,
  first that fits).
* Normalisation: one multiply-add with tiled constants (`normalize`).

All of these run inside `tf.data` on every Keras backend (Keras switches its preprocessing
layers to TensorFlow ops there).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from keras_convmixer.training import Recipe


def random_resized_crop(image, seed, size: int, scale, ratio):
    """A random crop of `scale` area and `ratio` aspect (log-uniform), resized to `size`² with
    bilinear or bicubic interpolation drawn at random (timm's "random" interpolation)."""
    crop_seed, method_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if tuple(scale) == (1.0, 1.0) and tuple(ratio) == (1.0, 1.0):
        crop = image
    else:
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=crop_seed,
            min_object_covered=0.0,
            aspect_ratio_range=ratio,
            area_range=scale,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        crop = tf.slice(image, begin, crop_size)
    if crop.shape[0] == size and crop.shape[1] == size:
        return tf.cast(crop, tf.float32)
    bicubic = tf.random.stateless_uniform([], method_seed) < 0.5
    return tf.cond(
        bicubic,
        lambda: tf.image.resize(crop, (size, size), method="bicubic", antialias=True),
        lambda: tf.image.resize(crop, (size, size), method="bilinear", antialias=True),
    )


def example_transform(recipe: Recipe):
    """Per-example training transform: `(uint8 image, seed) -> float32 image in [0, 255]`."""

    def transform(image, seed):
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = random_resized_crop(image, crop_seed, recipe.image_size, recipe.scale, recipe.ratio)
        if recipe.flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        image = tf.clip_by_value(image, 0.0, 255.0)
        image.set_shape((recipe.image_size, recipe.image_size, 3))
        return image

    return transform


PIPELINE_PARTS = ("examples", "batches", "randaugment", "mixup", "cutmix")


def part_seed(seed: int | None, part: str) -> int | None:
    """The seed of one random part of a pipeline (one of `PIPELINE_PARTS`), derived from the
    pipeline's `seed` so that the parts draw independently; None without a seed. In
    [1, 2**31): keras-cv's vectorized layers take `seed=0` as no seed and draw from
    TensorFlow's global generator, which `tf.random.set_seed` does not seed; Keras' seed
    generators on the PyTorch backend hold int32."""
    if seed is None:
        return None
    derived = np.random.SeedSequence([seed, PIPELINE_PARTS.index(part)]).generate_state(1)[0]
    return int(derived) % 2**31 or 1


def random_erasing(images, probability: float, seed, area=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3)):
    """timm's RandomErasing in "pixel" mode on a batch of normalised channels-last images: with
    `probability`, one box of `area` (fraction of the image, uniform) and `ratio` (height / width,
    log-uniform) is filled with per-pixel N(0, 1) noise. Of 10 drawn boxes the first that fits
    inside the image is used; if none fits, the image is kept. `seed`: a stateless seed (two
    integers); the same seed erases the same way."""
    attempts = 10
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
    # Only the boxes' pixels are written: their (image, row, column) indices, then one scatter
    # (0.3 against 0.47 ms of one core per 224² image for a per-image loop with padded masks).
    erased = tf.cast(tf.where(erase)[:, 0], tf.int32)
    box_h, box_w, top, left = (tf.gather(v, erased) for v in (box_h, box_w, top, left))
    pixels = tf.ragged.range(box_h * box_w)
    owner = tf.cast(pixels.value_rowids(), tf.int32)
    pixel, width_of = pixels.flat_values, tf.gather(box_w, owner)
    index = tf.stack(
        [
            tf.gather(erased, owner),
            tf.gather(top, owner) + pixel // width_of,
            tf.gather(left, owner) + pixel % width_of,
        ],
        axis=1,
    )
    noise = tf.random.stateless_normal(
        [tf.shape(pixel)[0], tf.shape(images)[3]], next(draws), dtype=images.dtype
    )
    return tf.tensor_scatter_nd_update(images, index, noise)


def normalize(images, mean, std):
    """`(x / 255 - mean) / std` per channel, for channels-last images in [0, 255], as one
    multiply-add with the per-channel constants tiled to the image's (height, width, channels).
    TensorFlow's CPU kernels broadcast a trailing axis of 3 slowly: 0.55 against 0.17 ms of
    one core per 224² image (the difference is ~1e-7, float32 rounding)."""
    mean, std = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
    multiples = tf.concat([tf.shape(images)[-3:-1], [1]], axis=0)

    def tiled(per_channel):
        return tf.tile(tf.reshape(per_channel, (1, 1, -1)), multiples)

    return images * tiled(1.0 / (255.0 * std)) + tiled(-mean / std)


def smooth_labels(one_hot, smoothing: float):
    """Label smoothing: `(1 - ε) y + ε / K`."""
    classes = tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)
    return one_hot * (1.0 - smoothing) + smoothing / classes


def _single_axis_shears(randaugment) -> None:
    """keras-cv's policy shears along one axis with the other axis' factor a constant 0, which
    still runs a second, identity resampling (3.7 against 1.9 ms of one core per 224² image):
    the zero factor is dropped, which keras-cv's `RandomShear` takes as "no shear there"."""
    from keras_cv.layers import RandomShear

    for layer in randaugment.layers:
        if isinstance(layer, RandomShear):
            for axis in ("x_factor", "y_factor"):
                if getattr(getattr(layer, axis), "value", None) == 0:
                    setattr(layer, axis, None)


def _one_image_at_a_time(randaugment) -> None:
    """keras-cv's RandAugment maps over the batch with `tf.map_fn`, whose iterations (10 at a
    time in a graph) draw from the layers' shared stateful generators in whatever order the
    threads reach them, so a seeded stream varied: images of a batch swapped their draws in 8
    of 20 repeats of 32 images at 64². One iteration at a time makes the order fixed (0 of
    30). A seeded ImageNet pipeline at 224² runs at 338–400 images/s on 2 cores this way,
    against 397–411 with 10 iterations (unseeded: 442–494)."""

    def sequential_map(func, inputs):
        return tf.map_fn(func, inputs, parallel_iterations=1)

    randaugment._map_fn = sequential_map


class BatchAugmenter:
    """The batch-level part of a recipe: RandAugment, normalisation, RandomErasing, smoothing,
    then MixUp or CutMix (one of them per batch). `(images in [0, 255], one-hot labels, seed) ->
    (normalised images, soft labels)`.

    `seed` (two integers, one pair per batch) keys the stateless draws: the erased boxes and
    the MixUp/CutMix switch. keras-cv's and Keras' layers draw from their own generators,
    seeded by the constructor's `seed`. A seeded stateful op such as `tf.random.uniform(seed=s)`
    would not do here: inside `tf.data` it restarts with every new iterator, so every epoch
    would erase and switch exactly as the first.
    """

    def __init__(self, recipe: Recipe, seed: int | None = None):
        self.recipe = recipe
        self.randaugment = None
        if recipe.randaugment_ops > 0:
            import keras_cv

            self.randaugment = keras_cv.layers.RandAugment(
                value_range=(0, 255),
                augmentations_per_image=recipe.randaugment_ops,
                magnitude=recipe.randaugment_magnitude,
                magnitude_stddev=recipe.randaugment_std,
                rate=recipe.randaugment_rate,
                seed=part_seed(seed, "randaugment"),
            )
            _single_axis_shears(self.randaugment)
            if seed is not None:
                _one_image_at_a_time(self.randaugment)
        self.mixup = (
            keras.layers.MixUp(recipe.mixup_alpha, seed=part_seed(seed, "mixup"))
            if recipe.mixup_alpha
            else None
        )
        self.cutmix = (
            # A (low, high) factor is the range alpha is drawn from; a single number x would
            # mean "alpha uniform in (0, x)", not timm's fixed alpha.
            keras.layers.CutMix((recipe.cutmix_alpha,) * 2, seed=part_seed(seed, "cutmix"))
            if recipe.cutmix_alpha
            else None
        )

    def __call__(self, images, labels, seed):
        recipe = self.recipe
        erasing_seed, switch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if self.randaugment is not None:
            images = self.randaugment(images, training=True)
        images = normalize(tf.cast(images, tf.float32), recipe.mean, recipe.std)
        if recipe.erasing_prob > 0:
            images = random_erasing(images, recipe.erasing_prob, erasing_seed)
        labels = smooth_labels(tf.cast(labels, tf.float32), recipe.label_smoothing)
        return self._mix(images, labels, switch_seed)

    def _mix(self, images, labels, seed):
        def apply(layer):
            mixed = layer({"images": images, "labels": labels}, training=True)
            return mixed["images"], mixed["labels"]

        if self.mixup and self.cutmix:
            use_cutmix = tf.random.stateless_uniform([], seed) < self.recipe.mix_switch_prob
            return tf.cond(use_cutmix, lambda: apply(self.cutmix), lambda: apply(self.mixup))
        if self.mixup or self.cutmix:
            return apply(self.mixup or self.cutmix)
        return images, labels
