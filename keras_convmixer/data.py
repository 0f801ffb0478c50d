"""Input pipelines: `tf.data.Dataset`s of (image, label) for training and evaluation.

Sources give uint8 RGB images and integer labels: any TensorFlow Datasets name
(`from_tfds`), an image folder in the ImageNet layout (`from_folder`), or arrays
(`from_arrays`). Each can give one process's part only (`shard=(num_shards, index)`), read
and decoded by that process alone. With `decode=False` the first two give the encoded files
instead, which the pipelines decode: training then decodes only the part of a JPEG that its
random crop keeps. `train_pipeline` and `eval_pipeline` turn them into
batches of normalised float32 images and one-hot (training: smoothed and mixed) labels for
`model.fit`, on any Keras backend.
"""

from __future__ import annotations

import numbers
import os

import tensorflow as tf

from keras_convmixer.augment import (
    batch_transform,
    decode_rgb,
    example_transform,
    normalize,
    part_seed,
    resize,
)
from keras_convmixer.checks import check_bool, check_non_negative_int, check_positive_int
from keras_convmixer.training import Recipe, get_recipe

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def from_tfds(
    name: str,
    split: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    shuffle_files: bool = False,
    shard: tuple[int, int] | None = None,
    decode: bool = True,
) -> tuple[tf.data.Dataset, int]:
    """A TensorFlow Datasets split as (uint8 image, int label) and its number of classes.

    Args:
        name: e.g. `"cifar10"`, `"cifar100"`, `"imagenette"`, `"imagenet2012"`.
        split: e.g. `"train"`, `"test"`, `"validation"`, `"train[:90%]"`.
        data_dir: where tfds keeps data. Defaults to tfds' own default.
        manual_dir: folder holding manually downloaded archives (`imagenet2012`).
        shuffle_files: bool. Shuffle the files when reading. Defaults to False.
        shard: `(num_shards, index)`: read only part `index` of the split cut in `num_shards`
            even parts (`tfds.even_splits`; sizes differ by one at most). Defaults to None.
        decode: bool. False: the images as tfds stores them, encoded (PNG, JPEG) strings,
            for `train_pipeline` and `eval_pipeline` to decode. Defaults to True.
    """
    import tensorflow_datasets as tfds

    if shard is not None:
        count, index = _check_shard(shard)
        split = tfds.even_splits(split, n=count)[index]

    kwargs = {}
    if not decode:
        image_key = tfds.builder(name, data_dir=data_dir).info.supervised_keys[0]
        kwargs["decoders"] = {image_key: tfds.decode.SkipDecoding()}
    if manual_dir:
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)
        }
    dataset, info = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        as_supervised=True,
        with_info=True,
        shuffle_files=shuffle_files,
        **kwargs,
    )
    return dataset, info.features["label"].num_classes


def folder_classes(root: str) -> list[str]:
    """The class folder names of `root`, sorted (their index is the label)."""
    if not os.path.isdir(root):
        raise ValueError(f"Image folder not found: {root}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root} has no class folders; expected {root}/<class>/<image files>")
    return classes


def from_folder(
    root: str,
    split: str,
    classes: list[str] | None = None,
    shard: tuple[int, int] | None = None,
    decode: bool = True,
) -> tuple[tf.data.Dataset, list[str]]:
    """Images in `root/split/<class>/*` (the ImageNet layout) as (uint8 image, int label).

    Args:
        root: the data folder.
        split: a sub-folder, e.g. `"train"` or `"val"`.
        classes: class names in label order. Defaults to the sorted folder names of `split`.
        shard: `(num_shards, index)`: only every `num_shards`-th image from the `index`-th on
            (in class order, so every part holds every class). Defaults to None.
        decode: bool. False: the files' contents (strings), for `train_pipeline` and
            `eval_pipeline` to decode; training then decodes only the crop of a JPEG.
            Defaults to True.

    Returns:
        The dataset and the class names.
    """
    folder = os.path.join(root, split)
    if classes is not None and not (
        isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes)
    ):
        raise ValueError(
            "classes must be None or a list of class folder names in label order. "
            f"Received: classes={classes!r}"
        )
    classes = classes or folder_classes(folder)
    paths, labels = [], []
    for label, name in enumerate(classes):
        directory = os.path.join(folder, name)
        if not os.path.isdir(directory):
            continue
        for file in sorted(os.listdir(directory)):
            if file.lower().endswith(IMAGE_SUFFIXES):
                paths.append(os.path.join(directory, file))
                labels.append(label)
    if not paths:
        raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}) under {folder}/<class>/")
    paths, labels = _keep_part(shard, paths, labels)

    def load(path, label):
        contents = tf.io.read_file(path)
        return (decode_rgb(contents) if decode else contents), label

    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    return dataset.map(load, num_parallel_calls=AUTOTUNE), classes


def from_arrays(images, labels, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """(uint8 images `(N, H, W, 3)`, int labels `(N,)`) as a dataset; with
    `shard=(num_shards, index)`, every `num_shards`-th pair from the `index`-th on."""
    return tf.data.Dataset.from_tensor_slices(_keep_part(shard, images, labels))


def _keep_part(shard: tuple[int, int] | None, *sequences) -> tuple:
    """Every `num_shards`-th item of each sequence from the `index`-th on; all without a shard."""
    if shard is None:
        return sequences
    count, index = _check_shard(shard)
    return tuple(sequence[index::count] for sequence in sequences)


def _rgb_pairs(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` checked to give (image, integer label) pairs, grey images made RGB (as decoding
    an encoded grey image does, and as timm's loader converts them). Images: `(height, width,
    3)` RGB or `(height, width, 1)` grey, integer or float; or encoded files (strings)."""
    spec = dataset.element_spec
    image, label = spec if isinstance(spec, tuple) and len(spec) == 2 else (None, None)
    is_tensor = isinstance(image, tf.TensorSpec) and isinstance(label, tf.TensorSpec)
    encoded = is_tensor and image.dtype == tf.string and image.shape.rank == 0
    pixels = (
        is_tensor
        and (image.dtype.is_integer or image.dtype.is_floating)
        and image.shape.rank == 3
        and image.shape[-1] in (1, 3, None)
    )
    if not ((encoded or pixels) and label.dtype.is_integer and label.shape.rank == 0):
        raise ValueError(
            "dataset must give (image, label) pairs: images of shape (height, width, 3) (RGB) or "
            "(height, width, 1) (grey), or encoded image files (strings); labels as integer "
            f"class indices (scalars). Received: dataset.element_spec={spec}"
        )
    if pixels and image.shape[-1] == 1:
        return dataset.map(
            lambda x, y: (tf.image.grayscale_to_rgb(x), y), num_parallel_calls=AUTOTUNE
        )
    return dataset


def _check_shard(shard) -> tuple[int, int]:
    valid = (
        isinstance(shard, (tuple, list))
        and len(shard) == 2
        and all(isinstance(v, numbers.Integral) for v in shard)
        and 0 <= shard[1] < shard[0]
    )
    if not valid:
        raise ValueError(
            "shard must be (num_shards, index) with num_shards ≥ 1 and 0 ≤ index < num_shards. "
            f"Received: shard={shard}"
        )
    return int(shard[0]), int(shard[1])


def train_pipeline(
    dataset: tf.data.Dataset,
    num_classes: int,
    recipe: str | Recipe = "imagenet",
    batch_size: int | None = None,
    seed: int | None = None,
    shuffle_buffer: int = 10_000,
    cache: bool = False,
    batches: int | None = None,
    initial_epoch: int = 0,
    uint8_images: bool = False,
    **overrides,
) -> tf.data.Dataset:
    """Shuffled, augmented, batched training data: (normalised float32 images, soft labels).

    Args:
        dataset: (uint8 image, int label) pairs, or (encoded image, int label): of a JPEG
            only the random crop is decoded, the same pixels as decoding it whole. Grey
            images `(height, width, 1)` are made RGB.
        num_classes: int. Length of the label vectors.
        recipe: `"imagenet"`, `"cifar10"` or a `Recipe`; `**overrides` replace its fields.
        batch_size: int. Defaults to the recipe's (per replica × replicas is the caller's
            choice under a distribution strategy).
        seed: int. Same seed, same stream (shuffle, crops, RandAugment, erasing, mixing);
            epochs still differ. Defaults to None (not reproducible).
        shuffle_buffer: int. Shuffle buffer size. Defaults to 10,000.
        cache: bool. Cache the source's images (decoded or encoded, as it gives them) in
            memory. Defaults to False.
        batches: int. Only the first `batches` batches of each epoch, the number that every
            process can feed when each feeds its own part (`distribute.Setup`). Defaults to
            None (all).
        initial_epoch: int. The epoch that a resumed run starts at
            (`training.resumed_epoch(output_dir)`). With a seed, the first pass over the
            dataset is then that epoch's (shuffle and draws), so a run resumed by
            `BackupAndRestore` sees the batches the uninterrupted run saw. Each pass over the
            dataset is one epoch; not for a `.repeat()`ed pipeline. Defaults to 0.
        uint8_images: bool. timm's train.py split: the images stay uint8 in [0, 255] (mixed
            and rounded), a quarter of the bytes, and the model normalises and erases them
            on its device: `training.with_input_stage(model, recipe)`. Defaults to False.
    """
    check_positive_int("num_classes", num_classes)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    check_positive_int("shuffle_buffer", shuffle_buffer)
    check_non_negative_int("seed", seed, or_none=True)
    if batches is not None:
        check_positive_int("batches", batches)
    check_non_negative_int("initial_epoch", initial_epoch)
    check_bool("uint8_images", uint8_images)
    recipe = get_recipe(recipe, **overrides)
    batch_size = batch_size or recipe.batch_size
    examples = int(dataset.cardinality())  # negative: infinite or unknown
    if 0 <= examples < batch_size:
        raise ValueError(
            f"batch_size ({batch_size}) is more than the {examples} examples of dataset: "
            "training keeps whole batches only, so there would be none."
        )
    if cache:
        dataset = dataset.cache()
    dataset = _rgb_pairs(dataset)
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # Stateless seeds, one pair per example and one per batch, drawn anew every epoch.
    example_seeds, batch_seeds = (
        tf.data.Dataset.random(seed=part_seed(seed, part), rerandomize_each_iteration=True).batch(2)
        for part in ("examples", "batches")
    )
    transform = example_transform(recipe)

    def per_example(example, seed_pair):
        image, label = example
        return transform(image, seed_pair), tf.one_hot(label, num_classes)

    dataset = tf.data.Dataset.zip((dataset, example_seeds)).map(
        per_example, num_parallel_calls=AUTOTUNE, deterministic=seed is not None
    )
    dataset = tf.data.Dataset.zip((dataset.batch(batch_size, drop_remainder=True), batch_seeds))
    if batches is not None:
        dataset = dataset.take(batches)
    transform_batch = batch_transform(recipe, uint8_images)
    dataset = dataset.map(
        lambda batch, seed_pair: transform_batch(*batch, seed_pair),
        num_parallel_calls=AUTOTUNE,
        deterministic=seed is not None,
    )
    return _one_draw_per_pass(dataset, initial_epoch).prefetch(AUTOTUNE)


def _one_draw_per_pass(dataset: tf.data.Dataset, passes_done: int) -> tf.data.Dataset:
    """`dataset` such that its shuffle and seed streams move on once per pass read, and
    `passes_done` passes on already. Each new iterator of `dataset` draws their next seeds, even
    one made and never read: Keras' TensorFlow backend makes one at the end of each epoch of
    known length and makes another at the next epoch's start. Made inside `flat_map`, the
    iterator exists from the first element on."""
    for _ in range(passes_done):
        iter(dataset)  # draws the seeds only: no element is read
    cardinality = dataset.cardinality()
    lazy = tf.data.Dataset.from_tensors(0).flat_map(lambda _: dataset)
    if cardinality != tf.data.UNKNOWN_CARDINALITY:  # flat_map hides it: said again
        lazy = lazy.apply(tf.data.experimental.assert_cardinality(cardinality))
    return lazy


def eval_pipeline(
    dataset: tf.data.Dataset,
    num_classes: int,
    recipe: str | Recipe = "imagenet",
    batch_size: int = 128,
    cache: bool = False,
    pad_to: int = 1,
    batches: int | None = None,
    uint8_images: bool = False,
    **overrides,
) -> tf.data.Dataset:
    """Evaluation batches as timm's evaluation transform makes them: the shorter side resized
    to `image_size / crop_pct` (bicubic, as PIL resizes: `augment.resize`), a centred
    `image_size` crop, normalisation; one-hot labels. The last batch may be short.
    `dataset`: (uint8 or encoded image, int label) pairs; grey images are made RGB.

    `pad_to`: when above 1, a short last batch is filled up to a multiple of it with zeros
    (images of the mean colour, empty labels) of sample weight 0, and the batches are
    (images, labels, weights). JAX data parallelism needs batches that split evenly over the
    devices (and processes): `distribute.Setup.eval_pad_to` gives the multiple. Weighted
    metrics such as accuracy are then exact; Keras averages the loss over the padded batch,
    so it reads low by the fraction of padding.

    `batches`: add whole batches of such padding until there are this many. When each process
    feeds its own part of the data, every process must run as many evaluation steps
    (`distribute.Setup.eval_batches` gives the count). Needs `pad_to=batch_size`.

    `uint8_images`: the images before normalisation, uint8, for a model that normalises them
    itself (`training.with_input_stage`).
    """
    check_positive_int("num_classes", num_classes)
    check_positive_int("batch_size", batch_size)
    check_positive_int("pad_to", pad_to)
    check_bool("uint8_images", uint8_images)
    if batches is not None:
        check_positive_int("batches", batches)
        if pad_to != batch_size:
            raise ValueError(
                "batches needs whole padded batches: pad_to=batch_size. "
                f"Received: batches={batches}, pad_to={pad_to}, batch_size={batch_size}"
            )
    recipe = get_recipe(recipe, **overrides)
    size = recipe.image_size
    resize_to = int(size / recipe.crop_pct)

    def transform(image, label):
        if image.dtype == tf.string:
            image = decode_rgb(image)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = resize_to / tf.reduce_min(shape)
        new_shape = tf.cast(tf.math.floor(shape * scale + 1e-4), tf.int32)
        new_shape = tf.maximum(new_shape, resize_to)
        image = resize(image, new_shape[0], new_shape[1])
        # torchvision's CenterCrop: half the margin, rounded half to even as Python rounds.
        top, left = tf.unstack(tf.cast(tf.round((new_shape - size) / 2), tf.int32))
        image = image[top : top + size, left : left + size]
        image.set_shape((size, size, 3))
        if uint8_images:
            return tf.cast(image, tf.uint8), tf.one_hot(label, num_classes)
        return normalize(image, recipe.mean, recipe.std), tf.one_hot(label, num_classes)

    if cache:
        dataset = dataset.cache()
    dataset = _rgb_pairs(dataset).map(transform, num_parallel_calls=AUTOTUNE).batch(batch_size)
    if pad_to > 1:
        dataset = dataset.map(lambda images, labels: _pad_batch(images, labels, pad_to, batch_size))
    if batches is not None:
        dataset = _pad_batch_count(dataset, batches)
    return dataset.prefetch(AUTOTUNE)


def _pad_batch_count(dataset: tf.data.Dataset, batches: int) -> tf.data.Dataset:
    """`dataset` followed by batches of zeros (weight 0) up to `batches` batches."""
    count = int(dataset.cardinality())
    if count == tf.data.UNKNOWN_CARDINALITY:
        raise ValueError("batches needs a dataset of known length (its cardinality is unknown)")
    if count > batches:
        raise ValueError(
            f"batches must be at least the {count} batches of the data. Received: batches={batches}"
        )
    empty = tuple(tf.zeros(spec.shape, spec.dtype) for spec in dataset.element_spec)
    return dataset.concatenate(tf.data.Dataset.from_tensors(empty).repeat(batches - count))


def _pad_batch(images, labels, multiple: int, batch_size: int):
    """(images, labels) -> (images, labels, weights), filled up to a multiple of `multiple`
    with zeros of weight 0. Padded to whole batches (`multiple` is the batch
    size), the batches say their size statically: Keras' per-process sharding reads it."""
    size = tf.shape(images)[0]
    missing = (multiple - size % multiple) % multiple
    static = batch_size if multiple == batch_size else None

    def padded(values):
        values = tf.pad(values, [[0, missing]] + [[0, 0]] * (len(values.shape) - 1))
        return tf.ensure_shape(values, [static, *values.shape[1:]])

    return padded(images), padded(labels), padded(tf.ones([size]))
