"""The training augmentations, each taken from a maintained library, chosen per operation.

* RandomResizedCrop and horizontal flip: TensorFlow's stateless image ops, per example
  (`tf.image.stateless_sample_distorted_bounding_box` is the Inception crop that timm's
  RandomResizedCrop follows; Keras 3 has no RandomResizedCrop). Stateless ops with per-example
  seeds keep a seeded stream identical under parallel `map`.
* RandAugment: keras-cv's, on batches. It draws the ops per image and supports timm's magnitude
  noise (`magnitude_stddev`). Keras 3's `RandAugment` draws one set of ops per call, so on a
  batch every image gets the same ops; mapped per example it runs every candidate op and keeps
  one: 33 images/s against keras-cv's 956 at 224² on this project's 2-core CPU
  (benchmarks/pipeline.py).
* RandomErasing, MixUp, CutMix: Keras 3's layers, on batches. They draw boxes and weights per
  image. RandomErasing runs after normalisation with `value_range=(0, 1)`, which makes its
  fill per-pixel N(0, 1): timm's "pixel" mode. Its `factor` is given as a (p, p) pair, since a
  single number p means "a probability drawn from (0, p)". It draws noise for every pixel of
  the batch, which makes it the slowest stage of the ImageNet pipeline (326 images/s alone at
  224² on 2 cores, against 1,192 for CutMix and 4,959 for MixUp).

All of these run inside `tf.data` on every Keras backend (Keras switches its preprocessing
layers to TensorFlow ops there).
"""

from __future__ import annotations

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
        self.erasing = None
        if recipe.erasing_prob > 0:
            self.erasing = keras.layers.RandomErasing(
                factor=(recipe.erasing_prob, recipe.erasing_prob), value_range=(0, 1), seed=seed
            )
        self.mixup = (
            keras.layers.MixUp(recipe.mixup_alpha, seed=seed) if recipe.mixup_alpha else None
        )
        self.cutmix = (
            keras.layers.CutMix(recipe.cutmix_alpha, seed=seed) if recipe.cutmix_alpha else None
        )
        self.switch_seed = seed

    def __call__(self, images, labels):
        recipe = self.recipe
        if self.randaugment is not None:
            images = self.randaugment(images, training=True)
        images = normalize(tf.cast(images, tf.float32), recipe.mean, recipe.std)
        if self.erasing is not None:
            images = self.erasing(images, training=True)
        labels = smooth_labels(tf.cast(labels, tf.float32), recipe.label_smoothing)
        return self._mix(images, labels)

    def _mix(self, images, labels):
        def apply(layer):
            mixed = layer({"images": images, "labels": labels}, training=True)
            return mixed["images"], mixed["labels"]

        if self.mixup and self.cutmix:
            use_cutmix = tf.random.uniform([], seed=self.switch_seed) < self.recipe.mix_switch_prob
            return tf.cond(use_cutmix, lambda: apply(self.cutmix), lambda: apply(self.mixup))
        if self.mixup or self.cutmix:
            return apply(self.mixup or self.cutmix)
        return images, labels
