"""Input pipelines on tfds mock data and on an image folder the test writes."""

import functools
import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import assert_erased_as_timm
from PIL import Image

from keras_convmixer import augment, data, training

LOW = (0 - 0.485) / 0.229  # smallest normalised value (black, red channel)
HIGH = (1 - 0.406) / 0.225  # largest (white, blue channel)


def first_batch(dataset):
    images, labels = next(iter(dataset))
    return images.numpy(), labels.numpy()


def recipe_without_crop_flip_or_randaugment(image_size: int, **overrides):
    """The ImageNet recipe where only the batch stages a test leaves on change the images."""
    return training.get_recipe(
        "imagenet",
        image_size=image_size,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip=False,
        randaugment_ops=0,
        **overrides,
    )


@pytest.fixture
def cifar():
    with tfds.testing.mock_data(num_examples=64):
        dataset, classes = data.from_tfds("cifar10", "train")
        yield dataset, classes


def test_tfds_train_pipeline_shapes_ranges_and_soft_labels(cifar):
    dataset, classes = cifar
    assert classes == 10
    no_erasing = data.train_pipeline(
        dataset, classes, "imagenet", batch_size=16, seed=0, image_size=48, erasing_prob=0.0
    )
    images, labels = first_batch(no_erasing)
    assert images.shape == (16, 48, 48, 3) and images.dtype == np.float32
    assert images.min() >= LOW - 1e-4 and images.max() <= HIGH + 1e-4
    assert labels.shape == (16, 10)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert labels.min() >= 0.1 / 10 - 1e-6  # smoothing mass ε/K on every class


def test_label_smoothing_mass_is_exact_without_mixing(cifar):
    dataset, classes = cifar
    plain = data.train_pipeline(
        dataset,
        classes,
        "imagenet",
        batch_size=8,
        seed=0,
        image_size=32,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        erasing_prob=0.0,
        randaugment_ops=0,
    )
    _, labels = first_batch(plain)
    assert sorted(set(np.round(labels.ravel(), 6))) == [pytest.approx(0.01), pytest.approx(0.91)]
    assert (np.round(labels, 6) == 0.91).sum(axis=1).tolist() == [1] * 8


def test_mixing_makes_soft_labels(cifar):
    dataset, classes = cifar
    mixed = data.train_pipeline(
        dataset, classes, "imagenet", batch_size=32, seed=0, image_size=32, label_smoothing=0.0
    )
    _, labels = first_batch(mixed)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert ((labels > 1e-3) & (labels < 1 - 1e-3)).any()  # some rows mix two classes


@pytest.mark.parametrize("seed", [0, 7])
def test_same_seed_same_stream_and_epochs_differ(cifar, seed):
    """Seed 0 too: derived seeds of 0 would read as no seed in some layers."""
    dataset, classes = cifar

    def make():
        return data.train_pipeline(
            dataset, classes, "imagenet", batch_size=8, seed=seed, image_size=32
        )

    a, b = make(), make()
    first_a, first_b = first_batch(a), first_batch(b)
    np.testing.assert_array_equal(first_a[0], first_b[0])
    np.testing.assert_array_equal(first_a[1], first_b[1])
    second_epoch = first_batch(a)  # a new iterator is a new epoch
    assert np.abs(second_epoch[0] - first_a[0]).max() > 0.1


@pytest.mark.parametrize("seed", [7, None])
def test_erasing_and_the_mix_switch_draw_anew_every_epoch(seed):
    """Seeded stateful ops (`tf.random.uniform(seed=s)`) restart with every `tf.data` iterator:
    drawn that way, every epoch erased the same boxes and switched MixUp/CutMix in the same
    batches as the first, with a pipeline seed or with only a global one."""
    keras.utils.set_random_seed(5)
    recipe = recipe_without_crop_flip_or_randaugment(8, label_smoothing=0.0)

    def two_epochs(labels, **overrides):  # black (0) and white (1) images, 16 batches of 8
        images = np.broadcast_to(labels[:, None, None, None] * 255, (128, 8, 8, 3))
        dataset = data.from_arrays(images.astype(np.uint8), labels)
        dataset = data.train_pipeline(dataset, 2, recipe, batch_size=8, seed=seed, **overrides)
        return [np.stack([x.numpy() for x, _ in dataset]) for _ in range(2)]

    # Erasing alone, on identical images: only the erased boxes can differ.
    first, second = two_epochs(np.zeros(128, int), mixup_alpha=0.0, cutmix_alpha=0.0)
    assert (first != first[0, 0, 0, 0]).any()  # boxes were erased
    assert not np.array_equal(first, second)

    # Mixing alone: CutMix leaves two values in some image of a batch, MixUp one in each.
    def cutmix_batches(epoch):
        spread = epoch.max(axis=(2, 3)) - epoch.min(axis=(2, 3))
        return (spread > 1e-3).any(axis=(1, 2))

    first, second = two_epochs(np.arange(128) % 2, erasing_prob=0.0)
    assert 0 < cutmix_batches(first).sum() < 16
    assert (cutmix_batches(first) != cutmix_batches(second)).any()


def test_augmentation_differs_between_images_of_a_batch():
    """The same image eight times: crops, flips and RandAugment must differ per image."""
    image = np.asarray(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    )
    dataset = data.from_arrays(np.stack([image] * 8), np.zeros(8, "int64"))
    recipe = training.get_recipe(
        "imagenet", image_size=32, mixup_alpha=0.0, cutmix_alpha=0.0, erasing_prob=0.0
    )
    images, _ = first_batch(data.train_pipeline(dataset, 2, recipe, batch_size=8, seed=0))
    distinct = {images[i].tobytes() for i in range(8)}
    assert len(distinct) == 8
    # Every image gets two ops; two images come out the same only if both drew the same two of
    # the ops without a magnitude (AutoContrast, Equalize, Invert): chance 0.04 for each image.
    only_randaugment = training.get_recipe(
        recipe, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, image_size=40, randaugment_rate=1.0
    )
    images, _ = first_batch(data.train_pipeline(dataset, 2, only_randaugment, batch_size=8, seed=0))
    assert len({images[i].tobytes() for i in range(8)}) >= 7


def test_random_erasing_probability():
    dataset = data.from_arrays(np.full((512, 16, 16, 3), 128, np.uint8), np.zeros(512, "int64"))
    recipe = recipe_without_crop_flip_or_randaugment(16, mixup_alpha=0.0, cutmix_alpha=0.0)
    images, _ = first_batch(data.train_pipeline(dataset, 2, recipe, batch_size=512, seed=0))
    constant = (128 / 255 - np.array(recipe.mean)) / np.array(recipe.std)
    erased = np.abs(images - constant).reshape(512, -1).max(axis=1) > 1e-4
    assert 0.17 < erased.mean() < 0.33  # p = 0.25


def test_random_erasing_boxes_and_noise_follow_timm():
    source = tf.fill((2000, 40, 30, 3), 10.0)
    images = augment.random_erasing(source, 0.25, [3, 0]).numpy()
    assert (source.numpy() == 10.0).all()  # boxes are written in place only into its own copy
    assert_erased_as_timm(images, (images != 10.0).any(axis=-1))
    untouched = tf.fill((3, 8, 8, 3), 10.0)  # no image erased: nothing to scatter
    np.testing.assert_array_equal(
        augment.random_erasing(untouched, 0.0, [0, 0]).numpy(), untouched.numpy()
    )


def test_uint8_images_are_the_pipelines_images_before_normalisation(cifar):
    """timm's train.py split: the same crops and mixing, rounded to uint8, without
    normalisation or erasing, which the model's InputStage does."""
    dataset, classes = cifar
    recipe = training.get_recipe("imagenet", image_size=32)
    pipelines = [
        data.train_pipeline(dataset, classes, recipe, batch_size=32, seed=5, **options)
        for options in ({"erasing_prob": 0.0}, {"uint8_images": True})
    ]
    (normalised, labels), (whole, uint8_labels) = map(first_batch, pipelines)
    assert whole.dtype == np.uint8
    np.testing.assert_array_equal(uint8_labels, labels)
    assert (labels.max(axis=1) < 0.9).any()  # mixed: MixUp or CutMix took part
    levels = (normalised * np.array(recipe.std) + np.array(recipe.mean)) * 255
    assert np.abs(levels - whole).max() <= 0.5 + 1e-3  # nothing erased
    images, _ = first_batch(data.eval_pipeline(dataset, classes, recipe, batch_size=8))
    eight, _ = first_batch(data.eval_pipeline(dataset, classes, recipe, 8, uint8_images=True))
    assert eight.dtype == np.uint8
    levels = (images * np.array(recipe.std) + np.array(recipe.mean)) * 255
    np.testing.assert_allclose(levels, eight, atol=1e-3)
    with pytest.raises(ValueError, match="uint8_images must be True or False. Received"):
        data.train_pipeline(dataset, classes, recipe, uint8_images=1)


def test_mixing_uint8_images_rounds_the_blend():
    images = tf.random.stateless_uniform((6, 9, 7, 3), (4, 2), maxval=256, dtype=tf.int32)
    images = tf.cast(images, tf.uint8)
    labels = tf.one_hot(tf.range(6), 6)
    kinds = set()
    for seed in range(12):
        pair = tf.constant([seed, 1], tf.int64)
        whole, _ = augment.mix(images, labels, pair, 0.5, 0.5, 0.5)
        mixed, _ = augment.mix(tf.cast(images, tf.float32), labels, pair, 0.5, 0.5, 0.5)
        assert whole.dtype == tf.uint8
        np.testing.assert_array_equal(whole.numpy(), np.round(mixed.numpy()))
        kinds.add(bool((mixed.numpy() % 1 != 0).any()))  # MixUp leaves fractions to round
    assert kinds == {True, False}


def test_mixing_follows_timms_batch_mode():
    """One λ per batch, image i mixed with image n-1-i: MixUp blends whole images, CutMix
    pastes one box (the same in every image) and λ is the share outside it; Beta(α, α) weights
    with E[λ(1-λ)] = α / (2(2α + 1)) = 0.125 at α = 0.5; CutMix in about half the batches."""
    count, size = 8, (12, 10)
    images = tf.random.stateless_uniform((count, *size, 3), (1, 2), maxval=255.0)
    reversed_images = images.numpy()[::-1]
    labels = tf.one_hot(tf.range(count), count)
    mixup_weights, cutmix_batches = [], 0
    for seed in range(300):
        mixed, soft = augment.mix(images, labels, tf.constant([seed, 3], tf.int64), 0.5, 0.5, 0.5)
        mixed, soft = mixed.numpy(), soft.numpy()
        weight = soft[0, 0]
        np.testing.assert_allclose(np.diag(soft), weight, atol=1e-6)
        np.testing.assert_allclose(np.diag(soft[:, ::-1]), 1 - weight, atol=1e-6)
        pasted = (mixed == reversed_images).all(axis=-1) & (mixed != images.numpy()).any(axis=-1)
        if pasted.any():  # CutMix: a box of the reversed batch, the same in every image
            cutmix_batches += 1
            box = pasted[0]
            rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
            assert box.sum() == len(rows) * len(cols) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
            assert (pasted == box).all()
            np.testing.assert_array_equal(mixed[:, ~box], images.numpy()[:, ~box])
            assert weight == pytest.approx(1 - box.sum() / (size[0] * size[1]), abs=1e-6)
        elif weight < 1 - 1e-6:  # MixUp
            expected = weight * images.numpy() + (1 - weight) * reversed_images
            np.testing.assert_allclose(mixed, expected, atol=1e-3)
            mixup_weights.append(weight)
    # Half of the batches less those whose box is under a pixel (λ > 0.99: ~6%).
    assert 110 < cutmix_batches < 170
    weights = np.array(mixup_weights)
    assert 0.10 < (weights * (1 - weights)).mean() < 0.15


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("cutmix_alpha", -1.0, r"cutmix_alpha must be in \[0.0, inf\]"),
        ("erasing_prob", -0.1, r"erasing_prob must be in \[0.0, 1.0\]"),
        ("epochs", 0, "epochs must be a positive integer. Received: epochs=0"),
        ("image_size", 32.0, "image_size must be a positive integer"),
        ("batch_size", True, "batch_size must be a positive integer"),
        ("lr", -0.01, "lr must be > 0. Received: lr=-0.01"),
        ("crop_pct", 1.5, r"crop_pct must be in \(0, 1.0\]"),
        ("clipnorm", 0.0, "clipnorm must be None or > 0"),
        ("weight_decay", -1e-5, "weight_decay must be in"),
        ("scale", (0.5, 0.2), r"scale must be \(low, high\) with 0 < low ≤ high ≤ 1.0"),
        ("ratio", (1.0,), r"ratio must be \(low, high\) with 0 < low ≤ high\. Received"),
        ("mean", (0.5, 0.5), r"mean must be 3 numbers \(R, G, B\)\. Received"),
        ("std", (0.2, 0.0, 0.2), r"std must be 3 numbers \(R, G, B\), each > 0"),
    ],
)
def test_recipe_values_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        training.get_recipe("imagenet", **{field: value})
    training.get_recipe("imagenet", image_size=np.int64(32), scale=[0.5, 1.0])  # also allowed


def eight_images():
    return data.from_arrays(np.zeros((8, 16, 16, 3), np.uint8), np.arange(8) % 2)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_classes": 0}, r"num_classes must be a positive integer. Received: num_classes=0"),
        ({"num_classes": 2.5}, "num_classes must be a positive integer"),
        ({"batch_size": 0}, r"batch_size must be a positive integer. Received: batch_size=0"),
        ({"shuffle_buffer": 0}, "shuffle_buffer must be a positive integer"),
        ({"seed": -1}, r"seed must be None or an integer ≥ 0. Received: seed=-1"),
        ({"batch_size": 9}, r"batch_size \(9\) is more than the 8 examples of dataset"),
    ],
)
def test_train_pipeline_arguments_are_checked(arguments, message):
    arguments = {"num_classes": 2, "batch_size": 4, **arguments}
    with pytest.raises(ValueError, match=message):
        data.train_pipeline(eight_images(), recipe="cifar10", **arguments)


def test_eval_pipeline_arguments_are_checked():
    for arguments in ({"num_classes": 0}, {"batch_size": 0}):
        name = next(iter(arguments))
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            data.eval_pipeline(eight_images(), **{"num_classes": 2, **arguments})
    # Evaluation keeps a short batch, and an endless source trains with any batch size.
    assert len(list(data.eval_pipeline(eight_images(), 2, "cifar10", batch_size=9))) == 1
    endless = data.train_pipeline(eight_images().repeat(), 2, "cifar10", batch_size=9)
    assert endless.cardinality() == tf.data.INFINITE_CARDINALITY
    next(iter(endless))
    # A known length stays known through the pipeline (`fit`'s progress bar, steps_per_epoch).
    assert data.train_pipeline(eight_images(), 2, "cifar10", batch_size=3).cardinality() == 2


def small_eval_pipeline(source, **options):
    """Two classes of 8×8 images, no resizing: only the batching and padding act."""
    return data.eval_pipeline(source, 2, "cifar10", image_size=8, crop_pct=1.0, **options)


def test_eval_pipeline_pads_the_last_batch_with_zero_weights():
    source = data.from_arrays(np.full((11, 8, 8, 3), 200, np.uint8), np.arange(11) % 2)

    def pipeline(pad_to):
        return small_eval_pipeline(source, batch_size=4, pad_to=pad_to)

    batches = [[t.numpy() for t in batch] for batch in pipeline(2)]
    assert [len(images) for images, _, _ in batches] == [4, 4, 4]  # 3 padded to 4
    images, labels, weights = batches[-1]
    np.testing.assert_array_equal(weights, [1, 1, 1, 0])
    assert not images[3].any() and not labels[3].any() and images[2].min() > 0.5
    assert all(w.all() for _, _, w in batches[:2])
    whole = pipeline(4)  # whole batches: a static batch size, as Keras' sharding needs
    assert [spec.shape[0] for spec in whole.element_spec] == [4, 4, 4]
    assert len(list(whole)) == 3 and pipeline(1).element_spec[0].shape[0] is None
    with pytest.raises(ValueError, match="pad_to must be a positive integer"):
        pipeline(0)


def test_train_pipeline_keeps_the_first_batches_of_each_epoch():
    source = data.from_arrays(np.full((16, 8, 8, 3), 100, np.uint8), np.arange(16) % 2)
    recipe = recipe_without_crop_flip_or_randaugment(8)

    def pipeline(batches):
        return data.train_pipeline(source, 2, recipe, batch_size=4, seed=3, batches=batches)

    two = pipeline(2)
    assert [len(list(two)), len(list(two))] == [2, 2] and int(two.cardinality()) == 2
    assert len(list(pipeline(None))) == 4
    with pytest.raises(ValueError, match="batches must be a positive integer. Received: batches=0"):
        pipeline(0)


def test_eval_pipeline_adds_empty_batches_up_to_a_count():
    source = data.from_arrays(np.full((5, 8, 8, 3), 200, np.uint8), np.arange(5) % 2)

    def pipeline(batches, pad_to=2):
        return small_eval_pipeline(source, batch_size=2, pad_to=pad_to, batches=batches)

    batches = [[t.numpy() for t in batch] for batch in pipeline(5)]
    weights = np.concatenate([w for _, _, w in batches])
    np.testing.assert_array_equal(weights, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    assert not batches[-1][0].any() and not batches[-1][1].any()
    assert len(list(pipeline(3))) == 3  # already 3: nothing added
    with pytest.raises(ValueError, match="batches must be at least the 3 batches"):
        pipeline(2)
    with pytest.raises(ValueError, match="batches needs whole padded batches: pad_to=batch_size"):
        pipeline(5, pad_to=1)


def image_ids(dataset) -> list[int]:
    """The first pixel of each image: the tests below give each image its own value."""
    return [int(image[0, 0, 0]) for image, _ in dataset]


def test_array_sources_are_cut_in_parts():
    images = np.arange(11, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    parts = [image_ids(data.from_arrays(images, np.arange(11), shard=(3, i))) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    for shard in ((3, 3), (0, 0), (2, -1), (3, 1, 0), 3, (2.0, 1)):
        with pytest.raises(ValueError, match=r"shard must be \(num_shards, index\).*Received"):
            data.from_arrays(images, np.arange(11), shard=shard)


class TinyPhotos(tfds.core.GeneratorBasedBuilder):
    """A tfds data set written by the test: image i is filled with the value i."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=3),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(11):
            yield i, {"image": np.full((4 + i % 3, 5, 3), i, np.uint8), "label": i % 3}


def test_tfds_sources_read_only_their_part(tmp_path):
    TinyPhotos(data_dir=str(tmp_path)).download_and_prepare()
    whole, classes = data.from_tfds("tiny_photos", "train", data_dir=str(tmp_path))
    parts = [
        data.from_tfds("tiny_photos", "train", data_dir=str(tmp_path), shard=(3, i))[0]
        for i in range(3)
    ]
    ids = [image_ids(part) for part in parts]
    assert classes == 3 and sorted(image_ids(whole)) == list(range(11))
    assert sorted(sum(ids, [])) == list(range(11))  # disjoint, and all of it
    assert sorted(len(i) for i in ids) == [3, 4, 4]
    assert [int(part.cardinality()) for part in parts] == [len(i) for i in ids]


def test_image_folder_and_eval_pipeline(tmp_path):
    for split in ("train", "val"):
        for name, value in (("cat", 40), ("dog", 200)):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = np.full((30 + i, 50, 3), value, np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    dataset, classes = data.from_folder(str(tmp_path), "train")
    assert classes == ["cat", "dog"]
    labels = [int(label) for _, label in dataset]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]
    parts = [data.from_folder(str(tmp_path), "train", shard=(2, i))[0] for i in range(2)]
    heights = [[(int(image.shape[0]), int(label)) for image, label in part] for part in parts]
    assert heights == [[(30, 0), (32, 0), (31, 1)], [(31, 0), (30, 1), (32, 1)]]
    val, _ = data.from_folder(str(tmp_path), "val", classes)
    batches = list(data.eval_pipeline(val, 2, "imagenet", batch_size=4, image_size=24))
    images = np.concatenate([b[0].numpy() for b in batches])
    onehot = np.concatenate([b[1].numpy() for b in batches])
    assert images.shape == (6, 24, 24, 3) and onehot.shape == (6, 2)
    expected_cat = (40 / 255 - 0.485) / 0.229
    np.testing.assert_allclose(images[0, ..., 0], expected_cat, atol=1e-3)
    with pytest.raises(ValueError, match="Image folder not found"):
        data.from_folder(str(tmp_path), "test")
    with pytest.raises(ValueError, match="classes must be None or a list of class folder names"):
        data.from_folder(str(tmp_path), "train", classes=2)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_resize_is_pils_within_one_level(method):
    """`augment.resize` against PIL's 8-bit resize of a window cut first: shrinking,
    enlarging, both at once, in either order of passes, to other shapes and to the same.
    TensorFlow's antialiased resize, which the evaluation pipeline ran before, differed by
    up to 5 levels on about 15% of the pixels."""
    import skimage.data

    photo = skimage.data.astronaut()  # 512×512
    cases = [
        ((0, 0, 512, 512), (224, 224)),
        ((50, 80, 200, 300), (224, 224)),
        ((100, 100, 116, 116), (224, 224)),
        ((3, 7, 100, 400), (224, 224)),
        ((10, 300, 480, 140), (224, 224)),  # the height shrinks most: PIL 13 resizes it first
        ((0, 0, 300, 451), (233, 350)),
        ((5, 9, 7, 3), (16, 5)),
        ((200, 200, 1, 1), (4, 4)),
    ]
    for (top, left, height, width), (out_height, out_width) in cases:
        window = photo[top : top + height, left : left + width]
        filter_ = Image.BICUBIC if method == "bicubic" else Image.BILINEAR
        expected = np.asarray(Image.fromarray(window).resize((out_width, out_height), filter_))
        ours = augment.resize(window, out_height, out_width, method == "bicubic").numpy()
        assert ours.shape == expected.shape
        difference = np.abs(ours - expected)
        case = f"{window.shape} -> {ours.shape}"
        assert difference.max() <= 1 and (difference > 0).mean() < 0.03, case
    same = photo[10:234, 20:244]
    np.testing.assert_array_equal(augment.resize(same, 224, 224, method == "bicubic"), same)


def test_eval_pipeline_is_timms_eval_transform_within_one_level():
    """Photos of three shapes through `eval_pipeline` and through timm's evaluation transform
    (`imagenet.eval_transform`, equal to timm's: tests/test_imagenet.py): one level apart
    at most, on a few pixels. The centre crop rounds half the margin as Python does (233 -
    224 = 9: 4 rows above, 5 below), as torchvision's CenterCrop."""
    import skimage.data

    from keras_convmixer import imagenet

    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()[:300, :211]]
    source = tf.data.Dataset.from_generator(
        lambda: ((p, 0) for p in photos),
        output_signature=(tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int64)),
    )
    images, _ = first_batch(data.eval_pipeline(source, 2, "imagenet", batch_size=3))
    for photo, image in zip(photos, images, strict=True):
        expected = imagenet.preprocess_input(imagenet.eval_transform(photo))
        levels = np.abs(image - expected) * 255 * np.array([0.229, 0.224, 0.225])
        assert levels.max() <= 1 + 1e-4, photo.shape
        assert (levels > 1e-3).mean() < 1e-3, photo.shape


def test_eval_pipeline_gives_the_same_batches_from_uint8_and_float_images():
    """uint8 images and the same images as float32 give the same batches."""
    import skimage.data

    photos = [skimage.data.chelsea()[:97, :123], skimage.data.coffee()[:131, :90]]
    photos.append(photos[0][:41, :55])  # its shorter side is int(40 / 0.96) already
    uint8 = tf.data.Dataset.from_generator(
        lambda: ((p, 0) for p in photos),
        output_signature=(tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int64)),
    )
    as_float = uint8.map(lambda image, label: (tf.cast(image, tf.float32), label))
    batches = [
        first_batch(data.eval_pipeline(d, 2, "imagenet", batch_size=3, image_size=40))[0]
        for d in (uint8, as_float)
    ]
    np.testing.assert_array_equal(batches[0], batches[1])
    assert np.ptp(batches[0]) > 1  # photos, not flat


def test_grey_sources_are_made_rgb_and_other_sources_refused():
    """A grey source gives the batches of its images copied into the three channels (timm's
    loader converts grey images to RGB too); a source of any other kind is refused, naming
    what is allowed."""
    grey = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(8) % 3
    sources = [data.from_arrays(images, labels) for images in (grey, np.repeat(grey, 3, axis=-1))]
    recipe = training.get_recipe("cifar10", image_size=32)
    trained = [
        first_batch(data.train_pipeline(s, 3, recipe, batch_size=8, seed=5)) for s in sources
    ]
    evaluated = [first_batch(data.eval_pipeline(s, 3, recipe, batch_size=8)) for s in sources]
    for grey_batch, rgb_batch in (trained, evaluated):
        assert grey_batch[0].shape == (8, 32, 32, 3)
        np.testing.assert_array_equal(grey_batch[0], rgb_batch[0])
        np.testing.assert_array_equal(grey_batch[1], rgb_batch[1])

    four_channels = data.from_arrays(np.zeros((2, 8, 8, 4), np.uint8), [0, 1])
    one_hot = data.from_arrays(np.zeros((2, 8, 8, 3), np.uint8), np.eye(2))
    images_only = tf.data.Dataset.from_tensor_slices(np.zeros((2, 8, 8, 3), np.uint8))
    for source in (four_channels, one_hot, images_only):
        for pipeline in (data.train_pipeline, data.eval_pipeline):
            with pytest.raises(ValueError, match=r"dataset must give \(image, label\) pairs"):
                pipeline(source, 2, recipe, batch_size=2)


def encoded_photos() -> dict[str, bytes]:
    """scikit-image's photos (CC0) as files of every kind a pipeline may meet: JPEGs with
    each chroma subsampling, progressive, greyscale and CMYK, and a PNG."""
    import skimage.data

    cat = Image.fromarray(skimage.data.chelsea()).resize((123, 97))
    coffee = Image.fromarray(skimage.data.coffee()).resize((90, 131))
    kinds = {
        "420.jpg": (cat, {"quality": 90}),
        "422.jpg": (coffee, {"quality": 95, "subsampling": 1}),
        "444.jpg": (cat, {"quality": 75, "subsampling": 0}),
        "progressive.jpg": (coffee, {"quality": 85, "progressive": True}),
        "grey.jpg": (cat.convert("L"), {}),
        "cmyk.jpg": (coffee.convert("CMYK"), {}),
        "photo.png": (cat, {}),
    }
    files = {}
    for name, (image, options) in kinds.items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG" if name.endswith(".png") else "JPEG", **options)
        files[name] = buffer.getvalue()
    return files


def test_a_jpegs_window_decodes_to_the_whole_images_pixels():
    """Only the window of a JPEG is decoded, equal to decoding it whole and cutting, at the
    edges too (decoded alone, without the pixel of margin, edge pixels differ by up to 18)."""

    @tf.function(reduce_retracing=True)
    def both(contents, begin, size):
        window = augment.decode_rgb_window(contents, lambda shape: (begin, size))
        whole = tf.slice(augment.decode_rgb(contents), begin, size)
        return window, whole

    rng = np.random.default_rng(0)
    for name, contents in encoded_photos().items():
        height, width = augment.decode_rgb(contents).shape[:2]
        windows = [((0, 0), (height, width)), ((height - 1, width - 1), (1, 1))]
        for _ in range(40):
            top, left = rng.integers(0, height - 1), rng.integers(0, width - 1)
            windows.append(
                (
                    (top, left),
                    (rng.integers(1, height - top + 1), rng.integers(1, width - left + 1)),
                )
            )
        for (top, left), (rows, cols) in windows:
            window, whole = both(
                contents, tf.constant([top, left, 0]), tf.constant([rows, cols, -1])
            )
            assert window.shape == (rows, cols, 3), name
            np.testing.assert_array_equal(window, whole, err_msg=f"{name} {top, left, rows, cols}")


def test_the_random_crop_is_resized_as_tensorflows_antialiased_resize():
    """Whole photos (scale and ratio 1) growing on both axes, on one, and shrinking: each
    resized image is TensorFlow's antialiased resize with bilinear or bicubic, the draw.
    Growing crops take the plain kernels: bilinear's values are the same, bicubic's within
    0.2 of a level. Shrinking crops up to `COMPILED_LIMIT` a side take the compiled passes,
    within 0.01 of a level; larger ones TensorFlow's kernel itself."""
    import skimage.data

    photo = skimage.data.astronaut()
    photo = np.concatenate([photo, photo[::-1]], axis=0)  # 1024×512: room for a large crop
    methods = set()
    for shape in ((150, 180), (20, 31), (1, 1), (40, 300), (300, 250), (600, 500)):
        image = photo[: shape[0], : shape[1]]
        for seed in range(4):
            crop = augment.random_resized_crop(
                image, tf.constant([seed, 7]), 224, (1.0, 1.0), (1.0, 1.0)
            ).numpy()
            errors = {
                method: np.abs(
                    crop - tf.image.resize(image, (224, 224), method, antialias=True).numpy()
                ).max()
                for method in ("bilinear", "bicubic")
            }
            method = min(errors, key=errors.get)
            methods.add(method)
            if max(shape) <= 224:
                tolerance = 0.2 if method == "bicubic" else 1e-3
            else:
                tolerance = 1e-2 if max(shape) <= augment.COMPILED_LIMIT else 1e-3
            assert errors[method] <= tolerance, (shape, seed, errors)
    assert methods == {"bilinear", "bicubic"}


@pytest.mark.parametrize("shape", [(300, 340), (500, 260), (17, 400), (511, 3), (512, 512)])
def test_the_compiled_resize_is_tensorflows_antialiased_resize(shape):
    """Padded or not, shrinking on one axis or both, bilinear and bicubic: within 0.01 of a
    level of `tf.image.resize(..., antialias=True)`."""
    import skimage.data

    image = skimage.data.astronaut()[: shape[0], : shape[1]]
    for method in ("bilinear", "bicubic"):
        resized = augment._compiled_resize(
            tf.constant(image), 224, tf.constant(method == "bicubic")
        )
        expected = tf.image.resize(image, (224, 224), method, antialias=True)
        np.testing.assert_allclose(resized.numpy(), expected.numpy(), atol=1e-2, err_msg=method)


@pytest.mark.parametrize("dtype", [tf.uint8, tf.string])
@pytest.mark.parametrize("scale", [(0.08, 1.0), (1.0, 1.0)])
def test_the_random_crop_has_a_static_shape_whatever_its_input(dtype, scale):
    """RandAugment after the crop folds its constants only when the crop's shape is static
    (without it the per-image transform took about 12% more time)."""
    ratio = (3 / 4, 4 / 3) if scale[0] < 1 else (1.0, 1.0)
    shape = () if dtype == tf.string else (None, None, None)
    crop = tf.function(
        lambda image: augment.random_resized_crop(image, tf.constant([1, 2]), 24, scale, ratio)
    ).get_concrete_function(tf.TensorSpec(shape, dtype))
    assert crop.output_shapes == (24, 24, 3)


def test_pipelines_fed_encoded_files_give_the_decoded_images_batches(tmp_path):
    for i, (name, contents) in enumerate(encoded_photos().items()):
        folder = tmp_path / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(contents)
    decoded, classes = data.from_folder(str(tmp_path), "train")
    encoded, _ = data.from_folder(str(tmp_path), "train", decode=False)
    assert encoded.element_spec[0].dtype == tf.string

    def batches(source, pipeline, **options):
        return [b.numpy() for batch in pipeline(source, 2, batch_size=7, **options) for b in batch]

    train = functools.partial(data.train_pipeline, image_size=48, seed=3)
    evaluate = functools.partial(data.eval_pipeline, image_size=40)
    for pipeline, shape in ((train, (7, 48, 48, 3)), (evaluate, (7, 40, 40, 3))):
        expected, stream = batches(decoded, pipeline), batches(encoded, pipeline)
        assert len(stream) == 2 and stream[0].shape == shape
        for a, b in zip(expected, stream, strict=True):
            np.testing.assert_array_equal(a, b)


def test_tfds_sources_can_leave_the_images_encoded(tmp_path):
    TinyPhotos(data_dir=str(tmp_path)).download_and_prepare()
    decoded, _ = data.from_tfds("tiny_photos", "train", data_dir=str(tmp_path))
    encoded, _ = data.from_tfds("tiny_photos", "train", data_dir=str(tmp_path), decode=False)
    assert encoded.element_spec[0].dtype == tf.string
    assert next(iter(encoded))[0].numpy().startswith(b"\x89PNG")
    recipe = training.get_recipe("imagenet", image_size=4, crop_pct=1.0)
    a, b = (list(data.eval_pipeline(s, 3, recipe, batch_size=11)) for s in (decoded, encoded))
    np.testing.assert_array_equal(a[0][0], b[0][0])
    np.testing.assert_array_equal(a[0][1], b[0][1])


def test_cifar10_recipe_pipeline(cifar):
    dataset, classes = cifar
    pipeline = data.train_pipeline(dataset, classes, "cifar10", batch_size=4, seed=1)
    assert isinstance(pipeline, tf.data.Dataset)
    images, labels = first_batch(pipeline)
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 10)


@pytest.mark.parametrize(
    "backend, preset, expected",
    [("jax", None, "true"), ("torch", None, "true"), ("tensorflow", None, None), ("jax", "0", "0")],
)
def test_tensorflows_pooling_allocator_is_chosen_where_it_only_feeds_pipelines(
    backend, preset, expected
):
    """TensorFlow's BFC allocator by default on JAX and PyTorch, unless the variable is set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPU_")}
    env["KERAS_BACKEND"] = backend
    if preset is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = preset
    script = "import os, keras_convmixer; print(os.environ.get('TF_CPU_ALLOCATOR_USE_BFC'))"
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split()[-1] == str(expected)


REALLOCATION_FAULTS = """
import ctypes, resource, keras_convmixer
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 2**26
block = libc.malloc(size)
ctypes.memset(block, 1, size)
libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(libc.malloc(size), 1, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    "CS_GNU_LIBC_VERSION" not in getattr(os, "confstr_names", {}), reason="glibc's malloc only"
)
@pytest.mark.parametrize("preset", [None, "MALLOC_ARENA_MAX", "GLIBC_TUNABLES"])
def test_freed_memory_is_reused_without_page_faults(preset):
    """After `import keras_convmixer`, a freed 64 MiB block is allocated again from memory the
    process kept (no page faults); glibc maps it anew (16,384 faults) if the user set malloc."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    env["KERAS_BACKEND"] = keras.backend.backend()
    if preset is not None:
        env[preset] = "glibc.malloc.arena_max=8" if preset == "GLIBC_TUNABLES" else "8"
    result = subprocess.run(
        [sys.executable, "-c", REALLOCATION_FAULTS],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    faults = int(result.stdout.split()[-1])
    assert faults < 100 if preset is None else faults >= 2**26 // os.sysconf("SC_PAGE_SIZE")
