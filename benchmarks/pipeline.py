"""Throughput of the ImageNet training input pipeline at 224² (RandomResizedCrop, flip,
RandAugment 2/9, normalisation, RandomErasing, MixUp/CutMix), on this machine's CPU: once from
decoded images held in memory, once from JPEG files held in memory, as a pipeline over
ImageNet's files (`data.from_folder(..., decode=False)`) decodes them: only each random crop.

    KERAS_BACKEND=jax python benchmarks/pipeline.py --json benchmarks/results/pipeline_jax.json

Each also with `uint8_images=True` (timm's train.py split: the pipeline stops at mixed uint8
images; the model normalises and erases them on its device). Also times the recipe stage by
stage (from decoded images: crop, flip and normalisation, then adding RandAugment,
RandomErasing, MixUp/CutMix), with the CPU time per image of each, and RandAugment alone three
ways, to back the choice in `keras_convmixer.augment`: this package's per image, keras-cv's
layer on a batch, Keras 3's layer per image. The source images are scikit-image's photos
(CC0) as 500×375 JPEGs (quality 90).

With `--compare-timm`, also timm's own transform for the recipe (PIL; the reference that this
package's pipeline reproduces) on one thread, as each DataLoader worker runs it, without and
with train.py's prefetcher (uint8 out, as `uint8_images=True`): its images/s are those of one
core. timm needs tests/timm_shim.py to import with the CPU torch wheel.
"""

import argparse
import io
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from keras_convmixer import data, randaugment, training
from keras_convmixer.benchmark import machine, write_json


def photo_files() -> list[bytes]:
    """scikit-image's three colour photos as 500×375 JPEGs (quality 90)."""
    import skimage.data

    files = []
    for image in (skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()):
        buffer = io.BytesIO()
        Image.fromarray(image).resize((500, 375)).save(buffer, format="JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


def photos(count: int, decoded: bool) -> tf.data.Dataset:
    """(image, label) pairs: decoded once and cached, or the JPEG files for the pipeline to
    decode."""
    encoded = photo_files()
    files = [encoded[i % len(encoded)] for i in range(count)]
    labels = np.arange(count) % 1000
    dataset = tf.data.Dataset.from_tensor_slices((files, labels))
    if decoded:
        dataset = dataset.map(
            lambda f, y: (tf.io.decode_jpeg(f, channels=3), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.cache().repeat()


def images_per_second(
    dataset, batches: int, batch_size: int, repeats: int, warmup: int = 1
) -> dict:
    """Images/s in `repeats` runs of `batches` batches each after `warmup` batches (tracing,
    the first fill of the buffers, XLA compiling the crop's resize for each padded crop shape:
    56 for these photos): the median and every run, and the median CPU time (all threads of
    the process) per image in ms."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    runs, cpu_ms = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(iterator)
        runs.append(batches * batch_size / (time.perf_counter() - start))
        cpu_ms.append(1000 * (time.process_time() - cpu_start) / (batches * batch_size))
    return {
        "median": float(np.median(runs)),
        "runs": runs,
        "cpu_ms_per_image": float(np.median(cpu_ms)),
    }


# The ImageNet recipe built up stage by stage, each adding to the one before.
STAGES = {
    "crop, flip, normalisation": dict(
        randaugment_ops=0, erasing_prob=0.0, mixup_alpha=0.0, cutmix_alpha=0.0
    ),
    "+ RandAugment": dict(erasing_prob=0.0, mixup_alpha=0.0, cutmix_alpha=0.0),
    "+ RandomErasing": dict(mixup_alpha=0.0, cutmix_alpha=0.0),
    "+ MixUp/CutMix (the whole recipe)": dict(),
}


def stage_costs(batch_size: int, batches: int, repeats: int, warmup: int) -> dict:
    """Images/s and CPU ms per image of the pipeline from decoded images, stage by stage."""
    source = photos(batch_size * (batches + 2), decoded=True)
    return {
        name: images_per_second(
            data.train_pipeline(source, 1000, "imagenet", batch_size=batch_size, **overrides),
            batches,
            batch_size,
            repeats,
            warmup,
        )
        for name, overrides in STAGES.items()
    }


def randaugment_comparison(batch_size: int, batches: int, repeats: int) -> dict:
    """RandAugment alone at 224², three ways: this package's (timm's policy, per image),
    keras-cv's on batches (the package's before; a different policy) and Keras 3's per image."""
    import keras_cv

    images = tf.round(tf.random.stateless_uniform((batch_size, 224, 224, 3), (1, 2), maxval=255.0))
    one = tf.data.Dataset.from_tensors(images).repeat()
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    per_image = one.unbatch()
    batched = keras_cv.layers.RandAugment(
        value_range=(0, 255),
        augmentations_per_image=2,
        magnitude=0.9,
        magnitude_stddev=0.05,
        rate=0.5,
    )
    keras_layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.9)
    cases = {
        "keras_convmixer (timm's policy) per image": tf.data.Dataset.zip((per_image, seeds))
        .map(
            lambda x, seed: randaugment.rand_augment(x, seed, "timm", 2, 9.0, 0.5, 0.5),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(batch_size),
        "keras_cv.RandAugment on batches": one.map(lambda x: batched(x, training=True)),
        "keras.layers.RandAugment per image": per_image.map(
            lambda x: keras_layer(x, training=True), num_parallel_calls=tf.data.AUTOTUNE
        ).batch(batch_size),
    }
    return {
        name: images_per_second(ds.prefetch(2), batches, batch_size, repeats)
        for name, ds in cases.items()
    }


def timm_reference(
    recipe: training.Recipe, batch_size: int, batches: int, repeats: int, uint8: bool = False
) -> dict:
    """timm's training transform for `recipe` (`create_transform`: RandomResizedCrop with
    random interpolation, flip, `rand-m{m}-mstd{std}-inc1`, normalisation, RandomErasing per
    pixel) and its batch `Mixup` (MixUp/CutMix with label smoothing), on one thread: images/s
    of that thread's CPU time (one core's rate) and CPU ms per image, from decoded PIL images
    and from the same JPEG files. With `uint8`, what train.py's loader does with its
    prefetcher: the transform stops at uint8 arrays, `FastCollateMixup` mixes them, and the
    prefetcher normalises and erases on the GPU. Posterize to 0 bits, which Pillow 13 refuses,
    gives black as older Pillow did (as `keras_convmixer.randaugment.posterize`)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from timm_shim import import_timm

    timm = import_timm()
    import timm.data.auto_augment as auto_augment
    import torch
    from PIL import ImageOps

    def posterize(image, bits_to_keep, **_):
        if bits_to_keep >= 8:
            return image
        if bits_to_keep <= 0:
            return image.point(lambda _: 0)
        return ImageOps.posterize(image, bits_to_keep)

    for name, op in auto_augment.NAME_TO_OP.items():
        if op is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = posterize
    torch.set_num_threads(1)
    magnitude, std = recipe.randaugment_magnitude, recipe.randaugment_std
    transform = timm.data.create_transform(
        recipe.image_size,
        is_training=True,
        scale=recipe.scale,
        ratio=recipe.ratio,
        hflip=0.5 if recipe.flip else 0.0,
        auto_augment=f"rand-m{magnitude:g}-mstd{std:g}-inc1",
        interpolation="random",
        re_prob=recipe.erasing_prob,
        re_mode="pixel",
        mean=recipe.mean,
        std=recipe.std,
        use_prefetcher=uint8,
    )
    mixing = dict(
        mixup_alpha=recipe.mixup_alpha,
        cutmix_alpha=recipe.cutmix_alpha,
        switch_prob=recipe.mix_switch_prob,
        label_smoothing=recipe.label_smoothing,
        num_classes=1000,
    )
    if uint8:
        collate = timm.data.FastCollateMixup(**mixing)

        def mix(images, labels):
            return collate(list(zip(images, labels.tolist(), strict=True)))
    else:
        mixup = timm.data.Mixup(**mixing)

        def mix(images, labels):
            return mixup(torch.stack(images), labels)

    files = photo_files()
    decoded = [Image.open(io.BytesIO(f)).convert("RGB") for f in files]
    sources = {
        "from decoded images": lambda i: decoded[i % len(files)],
        "from JPEGs": lambda i: Image.open(io.BytesIO(files[i % len(files)])).convert("RGB"),
    }
    report = {}
    for name, source in sources.items():
        rates, cpu_ms = [], []
        for _ in range(repeats):
            start = time.thread_time()
            for b in range(batches):
                images = [transform(source(b * batch_size + i)) for i in range(batch_size)]
                mix(images, torch.arange(batch_size) % 1000)
            seconds = time.thread_time() - start
            rates.append(batches * batch_size / seconds)
            cpu_ms.append(1000 * seconds / (batches * batch_size))
        report[name] = {
            "median": float(np.median(rates)),
            "runs": rates,
            "cpu_ms_per_image": float(np.median(cpu_ms)),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="batches a run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each pipeline")
    parser.add_argument("--warmup", type=int, default=40, help="batches before the runs")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument(
        "--compare-timm", action="store_true", help="also time timm's transform, one core"
    )
    args = parser.parse_args()
    recipe = training.get_recipe("imagenet")
    # First, while no pipeline's threads are about.
    if args.compare_timm:
        timm = {
            uint8: timm_reference(recipe, 32, 4, args.repeats, uint8) for uint8 in (False, True)
        }
    rates = {}
    for uint8_images in (False, True):
        for decoded in (True, False):
            source = photos(args.batch_size * (args.batches + 2), decoded)
            pipeline = data.train_pipeline(
                source, 1000, recipe, batch_size=args.batch_size, uint8_images=uint8_images
            )
            rates[uint8_images, decoded] = images_per_second(
                pipeline, args.batches, args.batch_size, args.repeats, args.warmup
            )
    cores = os.cpu_count()
    split = {
        name: {**rates[True, decoded], "per_core": rates[True, decoded]["median"] / cores}
        for name, decoded in (("from decoded images", True), ("from JPEGs", False))
    }
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "backend": keras.backend.backend(),
        "cpu_cores": cores,
        "batch_size": args.batch_size,
        "warmup_batches": args.warmup,
        # keras_convmixer sets it to "true" on JAX and PyTorch (see its __init__)
        "tf_cpu_allocator_use_bfc": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"),
        "images_per_s": rates[False, True]["median"],
        "images_per_s_per_core": rates[False, True]["median"] / cores,
        "images_per_s_runs": rates[False, True]["runs"],
        "with_jpeg_decode_images_per_s": rates[False, False]["median"],
        "with_jpeg_decode_images_per_s_per_core": rates[False, False]["median"] / cores,
        "with_jpeg_decode_images_per_s_runs": rates[False, False]["runs"],
        # timm's train.py split: uint8 out, normalisation and erasing left to the model
        "uint8_images_per_s": split,
        "randaugment_only_images_per_s": randaugment_comparison(64, 6, args.repeats),
        "stages_from_decoded_images": stage_costs(
            args.batch_size, args.batches, args.repeats, args.warmup
        ),
    }
    if args.compare_timm:
        report["timm_one_core_images_per_s"] = timm[False]
        report["timm_one_core_uint8_images_per_s"] = timm[True]
    print(json.dumps(report, indent=2))
    write_json(report, args.json)


if __name__ == "__main__":
    main()
