"""The training augmentations, chosen per operation by correctness and measured throughput.

* RandomResizedCrop and horizontal flip: TensorFlow's stateless image ops, per example
  (`tf.image.stateless_sample_distorted_bounding_box` is the Inception crop that timm's
  RandomResizedCrop follows; Keras 3 has no RandomResizedCrop). Stateless ops with per-example
  seeds keep a seeded stream identical under parallel `map`.
* RandAugment: keras-cv's, on batches. It draws the ops per image and supports timm's magnitude
  noise (`magnitude_stddev`). Keras 3's `RandAugment` draws one set of ops per call, so on a
  batch every image gets the same ops; mapped per example it runs every candidate op and keeps
  one: 33 images/s against keras-cv's 956 at 224² on this project's 2-core CPU
  (benchmarks/pipeline.py).
* MixUp, CutMix: Keras 3's layers, on batches. They draw a weight (and box) per image, as
  timm's "elem" mode does (timm's default draws one per batch).
* RandomErasing: `random_erasing` below, the one op written here. Keras 3's `RandomErasing`
  draws N(0, 1) noise for every pixel of the batch whether or not an image is erased, which
  made it the slowest stage of the ImageNet pipeline (622 images/s alone at 224² on 2 cores);
  this one draws noise only inside the erased boxes (on average 4.5% of the pixels at p=0.25),
  and follows timm's box sampling (10 attempts, first that fits).

All of these run inside `tf.data` on every Keras backend (Keras switches its preprocessing
layers to TensorFlow ops there).
"""

from __future__ import annotations

import math

import keras
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


def op_seeds(seed: int | None, count: int) -> list[int | None]:
    """`count` distinct op-level seeds derived from `seed` (all None without one): stateful
    random ops of one graph that share an op seed draw the same numbers."""
    if seed is None:
        return [None] * count
    return [(seed * 1_000_003 + i + 1) % 2**31 for i in range(count)]


def random_erasing(
    images, probability: float, area=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), seed: int | None = None
):
    """timm's RandomErasing in "pixel" mode on a batch of normalised channels-last images: with
    `probability`, one box of `area` (fraction of the image, uniform) and `ratio` (height / width,
    log-uniform) is filled with per-pixel N(0, 1) noise. Of 10 drawn boxes the first that fits
    inside the image is used; if none fits, the image is kept."""
    attempts = 10
    batch = tf.shape(images)[0]
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    total = tf.cast(height * width, tf.float32)

    draws = iter(op_seeds(seed, 6))

    def uniform(shape, low=0.0, high=1.0, dtype=tf.float32):
        return tf.random.uniform(shape, low, high, dtype=dtype, seed=next(draws))

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
    noise_seeds = uniform([batch, 2], 0, 2**31 - 1, tf.int32)

    def erase_one(args):
        image, erase, top, left, h, w, noise_seed = args

        def erased():
            noise = tf.random.stateless_normal([h, w, tf.shape(image)[2]], noise_seed)
            padding = [[top, height - top - h], [left, width - left - w], [0, 0]]
            inside = tf.pad(tf.ones([h, w, 1], tf.bool), padding)
            return tf.where(inside, tf.pad(noise, padding), image)

        return tf.cond(erase, erased, lambda: image)

    return tf.map_fn(
        erase_one,
        (images, erase, top, left, box_h, box_w, noise_seeds),
        fn_output_signature=tf.TensorSpec(images.shape[1:], images.dtype),
    )


def normalize(images, mean, std):
    """`(x / 255 - mean) / std` per channel, for channels-last images in [0, 255]."""
    return (images / 255.0 - tf.constant(mean)) / tf.constant(std)


def smooth_labels(one_hot, smoothing: float):
    """Label smoothing: `(1 - ε) y + ε / K`."""
    classes = tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)
    return one_hot * (1.0 - smoothing) + smoothing / classes


class BatchAugmenter:
    """The batch-level part of a recipe: RandAugment, normalisation, RandomErasing, smoothing,
    then MixUp or CutMix (one of them per batch). `(images in [0, 255], one-hot labels) ->
    (normalised images, soft labels)`."""

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
                seed=seed,
            )
        self.mixup = (
            keras.layers.MixUp(recipe.mixup_alpha, seed=seed) if recipe.mixup_alpha else None
        )
        self.cutmix = (
            # A (low, high) factor is the range alpha is drawn from; a single number x would
            # mean "alpha uniform in (0, x)", not timm's fixed alpha.
            keras.layers.CutMix((recipe.cutmix_alpha,) * 2, seed=seed)
            if recipe.cutmix_alpha
            else None
        )
        self.seed = seed

    def __call__(self, images, labels):
        recipe = self.recipe
        if self.randaugment is not None:
            images = self.randaugment(images, training=True)
        images = normalize(tf.cast(images, tf.float32), recipe.mean, recipe.std)
        if recipe.erasing_prob > 0:
            images = random_erasing(images, recipe.erasing_prob, seed=self.seed)
        labels = smooth_labels(tf.cast(labels, tf.float32), recipe.label_smoothing)
        return self._mix(images, labels)

    def _mix(self, images, labels):
        def apply(layer):
            mixed = layer({"images": images, "labels": labels}, training=True)
            return mixed["images"], mixed["labels"]

        if self.mixup and self.cutmix:
            use_cutmix = tf.random.uniform([], seed=self.seed) < self.recipe.mix_switch_prob
            return tf.cond(use_cutmix, lambda: apply(self.cutmix), lambda: apply(self.mixup))
        if self.mixup or self.cutmix:
            return apply(self.mixup or self.cutmix)
        return images, labels
