"""The training recipes as reusable pieces: schedule, optimizer, loss, callbacks, compile.

Two recipes, as data:

* `"imagenet"`: the paper's (timm's train.py on 10 GPUs × 64): AdamW lr 0.01, eps 1e-3, weight
  decay 2e-5 with none on biases and norm parameters, one-cycle per iteration, 150 epochs,
  gradient clipping at global norm 1.0, label smoothing 0.1, timm's RandAugment
  `rand-m9-mstd0.5-inc1`, MixUp 0.5 / CutMix 0.5 (switch 0.5), RandomErasing 0.25.
* `"cifar10"`: locuslab/convmixer-cifar10's ConvMixer-256/8: batch 512, AdamW lr 0.05, weight
  decay 0.005 on every parameter, 25 epochs, torchvision's RandAugment(2, 12), clipping at
  1.0, no mixing, no erasing (~92.5% test accuracy).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import numbers
import os

import keras
from keras import ops

from keras_convmixer import imagenet
from keras_convmixer.checks import check_bool, check_non_negative_int, check_positive_int
from keras_convmixer.layers import PACKAGE, ConvMixerBlock
from keras_convmixer.model import block_count


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every hyperparameter of a training recipe; `dataclasses.replace` makes variants."""

    image_size: int
    batch_size: int
    epochs: int
    lr: float
    weight_decay: float
    adam_epsilon: float
    decay_norm_and_bias: bool
    clipnorm: float | None
    label_smoothing: float
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool
    randaugment_policy: str  # a key of RANDAUGMENT_MAX_MAGNITUDE
    randaugment_ops: int
    randaugment_magnitude: float  # on the policy's scale, 0 to RANDAUGMENT_MAX_MAGNITUDE
    randaugment_std: float
    randaugment_rate: float  # probability that each chosen op is applied
    mixup_alpha: float
    cutmix_alpha: float
    mix_switch_prob: float
    erasing_prob: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 1.0
    mixed_precision: bool = True
    # Batches whose averaged gradients make one update: the update's batch is batch_size times
    # this (the paper's 640 is batch_size=64, accumulation_steps=10 on one device).
    accumulation_steps: int = 1


BACKUP = "backup"  # BackupAndRestore's folder under `make_callbacks`' output_dir

# timm's RandomErasing: the box's share of the image (uniform), its height / width
# (log-uniform), and how many boxes are drawn for one that fits.
ERASING_AREA = (0.02, 1 / 3)
ERASING_RATIO = (0.3, 1 / 0.3)
ERASING_ATTEMPTS = 10

# RandAugment's policies (their ops: `keras_convmixer.randaugment.POLICIES`) and the top of
# each one's magnitude scale: timm's 0-10, torchvision's bins 0-30.
RANDAUGMENT_MAX_MAGNITUDE = {"timm": 10.0, "torchvision": 30.0}

IMAGENET_MEAN, IMAGENET_STD = imagenet.MEAN, imagenet.STD

RECIPES: dict[str, Recipe] = {
    "imagenet": Recipe(
        image_size=224,
        batch_size=640,
        epochs=150,
        lr=0.01,
        weight_decay=2e-5,
        adam_epsilon=1e-3,
        decay_norm_and_bias=False,
        clipnorm=1.0,
        label_smoothing=0.1,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        flip=True,
        randaugment_policy="timm",  # rand-m9-mstd0.5-inc1: each op with p 0.5
        randaugment_ops=2,
        randaugment_magnitude=9.0,
        randaugment_std=0.5,
        randaugment_rate=0.5,
        mixup_alpha=0.5,
        cutmix_alpha=0.5,
        mix_switch_prob=0.5,
        erasing_prob=0.25,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_pct=0.96,
    ),
    "cifar10": Recipe(
        image_size=32,
        batch_size=512,
        epochs=25,
        lr=0.05,
        weight_decay=0.005,
        adam_epsilon=1e-8,
        decay_norm_and_bias=True,
        clipnorm=1.0,
        label_smoothing=0.0,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip=True,
        randaugment_policy="torchvision",  # RandAugment(2, 12): always applied
        randaugment_ops=2,
        randaugment_magnitude=12.0,
        randaugment_std=0.0,
        randaugment_rate=1.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        mix_switch_prob=0.0,
        erasing_prob=0.0,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2471, 0.2435, 0.2616),
    ),
}


def timm_data_config(recipe: Recipe) -> dict:
    """The recipe's evaluation transform in the keys of timm's `pretrained_cfg` (config.json)."""
    size = recipe.image_size
    return {
        "input_size": [3, size, size],
        "crop_pct": recipe.crop_pct,
        "mean": list(recipe.mean),
        "std": list(recipe.std),
    }


def eval_fields_from_timm(pretrained_cfg: dict) -> dict:
    """`timm_data_config`'s inverse: the recipe fields that a `pretrained_cfg` gives."""
    found = {
        "image_size": pretrained_cfg.get("input_size", [None])[-1],
        "crop_pct": pretrained_cfg.get("crop_pct"),
        "mean": pretrained_cfg.get("mean"),
        "std": pretrained_cfg.get("std"),
    }
    return {k: tuple(v) if isinstance(v, list) else v for k, v in found.items() if v}


def get_recipe(recipe: str | Recipe, **overrides) -> Recipe:
    """A recipe by name (or as given) with fields replaced by `overrides`."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(
                f"recipe must be one of {sorted(RECIPES)}. Received: recipe={recipe!r}"
            )
        recipe = RECIPES[recipe]
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Recipe)}
    if unknown:
        raise ValueError(
            f"Unknown recipe fields {sorted(unknown)}; see keras_convmixer.training.Recipe"
        )
    recipe = dataclasses.replace(recipe, **overrides)
    if recipe.randaugment_policy not in RANDAUGMENT_MAX_MAGNITUDE:
        raise ValueError(
            f"randaugment_policy must be one of {sorted(RANDAUGMENT_MAX_MAGNITUDE)}. "
            f"Received: randaugment_policy={recipe.randaugment_policy!r}"
        )
    for name in ("image_size", "batch_size", "epochs", "accumulation_steps"):
        check_positive_int(name, getattr(recipe, name))
    for name, high in (("lr", math.inf), ("adam_epsilon", math.inf), ("crop_pct", 1.0)):
        value = getattr(recipe, name)
        if not 0 < value <= high:
            allowed = "> 0" if high == math.inf else f"in (0, {high}]"
            raise ValueError(f"{name} must be {allowed}. Received: {name}={value!r}")
    if recipe.clipnorm is not None and not recipe.clipnorm > 0:
        raise ValueError(f"clipnorm must be None or > 0. Received: clipnorm={recipe.clipnorm!r}")
    for name, high in (("scale", 1.0), ("ratio", math.inf)):
        value = getattr(recipe, name)
        if not (_are_numbers(value, 2) and 0 < value[0] <= value[1] <= high):
            bounds = "0 < low ≤ high" + ("" if high == math.inf else f" ≤ {high}")
            raise ValueError(
                f"{name} must be (low, high) with {bounds}. Received: {name}={value!r}"
            )
    for name, value in (("mean", recipe.mean), ("std", recipe.std)):
        if not (_are_numbers(value, 3) and (name == "mean" or min(value) > 0)):
            raise ValueError(
                f"{name} must be 3 numbers (R, G, B){', each > 0' if name == 'std' else ''}. "
                f"Received: {name}={value!r}"
            )
    limits = {
        "weight_decay": (0.0, math.inf),
        "erasing_prob": (0.0, 1.0),
        "mix_switch_prob": (0.0, 1.0),
        "label_smoothing": (0.0, 1.0),
        "cutmix_alpha": (0.0, math.inf),
        "mixup_alpha": (0.0, math.inf),
        "randaugment_ops": (0, math.inf),
        "randaugment_magnitude": (0.0, RANDAUGMENT_MAX_MAGNITUDE[recipe.randaugment_policy]),
        "randaugment_std": (0.0, math.inf),
        "randaugment_rate": (0.0, 1.0),
    }
    for name, (low, high) in limits.items():
        value = getattr(recipe, name)
        if not low <= value <= high:
            raise ValueError(f"{name} must be in [{low}, {high}]. Received: {name}={value}")
    return recipe


def _are_numbers(value, count: int) -> bool:
    """Whether `value` is a tuple or list of `count` real numbers."""
    return (
        isinstance(value, (tuple, list))
        and len(value) == count
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """timm's one-cycle shape, stepped per iteration: linear from 0 to `max_lr` over the first
    2/5 of `total_steps`, down to `max_lr / 20` at 4/5, then to 0 at the end (and after).

    Args:
        max_lr: float. Peak learning rate.
        total_steps: int. Optimizer steps of the whole run (epochs × steps per epoch).
    """

    def __init__(self, max_lr: float, total_steps: int):
        self.max_lr = float(max_lr)
        self.total_steps = check_positive_int("total_steps", total_steps)

    def __call__(self, step):
        t = ops.cast(step, "float32") / float(self.total_steps)
        peak, low = self.max_lr, self.max_lr / 20.0
        rising = t / 0.4 * peak
        falling = peak + (t - 0.4) / 0.4 * (low - peak)
        ending = low * (1.0 - (t - 0.8) / 0.2)
        lr = ops.where(t < 0.4, rising, ops.where(t < 0.8, falling, ending))
        return ops.maximum(lr, 0.0)

    def get_config(self) -> dict:
        return {"max_lr": self.max_lr, "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdamW(keras.optimizers.AdamW):
    """Keras' AdamW whose `global_clipnorm` is the norm of the *global* gradient under a
    TensorFlow strategy with several replicas.

    Keras clips inside each replica, before the gradients are summed, so each replica's
    part is clipped by its own norm and the result differs from one-device training with
    the same global batch (measured: 5e-4 after four steps). Here the per-replica
    gradients are scaled by the factor computed from their all-reduced sum, at the cost of
    one extra all-reduce.
    """

    def _clip_gradients(self, grads):
        if self.global_clipnorm and keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                present = [g for g in grads if g is not None]
                total = context.all_reduce(tf.distribute.ReduceOp.SUM, present)
                norm = tf.linalg.global_norm(total)
                scale = self.global_clipnorm / tf.maximum(norm, self.global_clipnorm)
                return [g if g is None else g * tf.cast(scale, g.dtype) for g in grads]
        return super()._clip_gradients(grads)


def make_optimizer(recipe: Recipe, total_steps: int) -> keras.optimizers.AdamW:
    """AdamW with the recipe's one-cycle schedule, epsilon, weight decay, clipping and gradient
    accumulation.

    `total_steps` counts batches, as the schedule does (Keras steps it once per batch, also
    when `recipe.accumulation_steps` batches make one update), so the schedule has the same
    shape whatever the accumulation. Clipping applies to the averaged gradient of an update.
    """
    _check_accumulation_is_possible(recipe.accumulation_steps)
    optimizer = AdamW(
        learning_rate=OneCycle(recipe.lr, total_steps),
        weight_decay=recipe.weight_decay,
        epsilon=recipe.adam_epsilon,
        global_clipnorm=recipe.clipnorm,
        gradient_accumulation_steps=recipe.accumulation_steps
        if recipe.accumulation_steps > 1
        else None,
    )
    if not recipe.decay_norm_and_bias:
        # timm decays only ≥2-D parameters: conv and dense kernels, not biases or BN's gamma/beta.
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def _check_accumulation_is_possible(steps: int) -> None:
    """Keras' gradient accumulation updates inside a conditional, where `tf.distribute` cannot
    synchronise replicas (it raises in `merge_call`); JAX's data parallelism has no such limit."""
    if steps == 1 or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        raise ValueError(
            "accumulation_steps > 1 does not work under a TensorFlow distribution strategy with "
            "several replicas: use a larger batch_size across the replicas, or the JAX backend. "
            f"Received: accumulation_steps={steps} with {replicas} replicas"
        )


def make_loss(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Cross-entropy on one-hot or soft labels (MixUp/CutMix), with optional smoothing.

    The data pipeline smooths labels before mixing them, so the recipe's loss gets 0 there;
    smoothing commutes with mixing, so doing it in either place gives the same targets.
    """
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def compile_for_recipe(
    model: keras.Model,
    recipe: str | Recipe,
    steps_per_epoch: int,
    smoothing_in_loss: bool = False,
    **overrides,
) -> Recipe:
    """Compiles `model` with the recipe's optimizer, loss and metrics; returns the recipe used.

    Args:
        model: a Keras model ending in softmax.
        recipe: `"imagenet"`, `"cifar10"` or a `Recipe`.
        steps_per_epoch: int. Batches per epoch (the schedule is per iteration).
        smoothing_in_loss: bool. Apply label smoothing in the loss (for datasets with hard
            labels that did not go through `keras_convmixer.data`). Defaults to False.
        **overrides: recipe fields to replace, e.g. `lr=1e-3, epochs=10`.
    """
    recipe = get_recipe(recipe, **overrides)
    check_positive_int("steps_per_epoch", steps_per_epoch)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if model.output_shape[-1] > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5"))
    model.compile(
        optimizer=make_optimizer(recipe, steps_per_epoch * recipe.epochs),
        loss=make_loss(recipe.label_smoothing if smoothing_in_loss else 0.0),
        # Weighted, so that the zero-weight padding of `eval_pipeline(pad_to=...)` is left out.
        weighted_metrics=metrics,
    )
    return recipe


def set_mixed_precision(enabled: bool = True) -> None:
    """Sets the global policy before a model is built: bfloat16 on CPUs and TPUs, float16 on
    GPUs (loss scaling comes with Keras' optimizer wrapper under mixed_float16)."""
    if not enabled:
        keras.config.set_dtype_policy("float32")
        return
    from keras_convmixer.distribute import list_devices

    on_gpu = any(d.lower().startswith(("gpu", "cuda")) for d in list_devices())
    keras.config.set_dtype_policy("mixed_float16" if on_gpu else "mixed_bfloat16")


@keras.saving.register_keras_serializable(package=PACKAGE)
class InputStage(keras.layers.Layer):
    """What timm's train.py does on the accelerator: images in [0, 255] (uint8, from
    `data.train_pipeline(..., uint8_images=True)`) normalised, `(x / 255 - mean) / std` per
    channel, then, in training only, RandomErasing as `augment.random_erasing` does it: with
    `erasing_prob`, one box per image filled with per-pixel N(0, 1) noise. Channels-last
    images; float32 out. `seed`: int or None."""

    def __init__(self, mean, std, erasing_prob: float = 0.0, seed: int | None = None, **kwargs):
        if not (_are_numbers(mean, 3) and _are_numbers(std, 3) and min(std) > 0):
            raise ValueError(
                "mean and std must be 3 numbers each (R, G, B), std's > 0. "
                f"Received: mean={mean!r}, std={std!r}"
            )
        if not (isinstance(erasing_prob, numbers.Real) and 0 <= erasing_prob <= 1):
            raise ValueError(
                f"erasing_prob must be in [0, 1]. Received: erasing_prob={erasing_prob!r}"
            )
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        self.erasing_prob = float(erasing_prob)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        mean, std = (ops.convert_to_tensor(v, self.compute_dtype) for v in (self.mean, self.std))
        images = (ops.cast(images, self.compute_dtype) / 255.0 - mean) / std
        if training and self.erasing_prob > 0:
            images = self._erase(images)
        return images

    def _erase(self, images):
        batch, height, width = ops.shape(images)[:3]
        sides = [ops.cast(side, self.compute_dtype) for side in (height, width)]

        def uniform(shape, low=0.0, high=1.0):
            return keras.random.uniform(shape, low, high, seed=self.seed_generator)

        attempts = (batch, ERASING_ATTEMPTS)
        area = uniform(attempts, *ERASING_AREA) * sides[0] * sides[1]
        aspect = ops.exp(uniform(attempts, *map(math.log, ERASING_RATIO)))
        box_h, box_w = ops.round(ops.sqrt(area * aspect)), ops.round(ops.sqrt(area / aspect))
        fits = (box_h < sides[0]) & (box_w < sides[1])
        first = ops.argmax(ops.cast(fits, "int32"), axis=1)[:, None]
        box_h = ops.take_along_axis(box_h, first, axis=1)  # (batch, 1)
        box_w = ops.take_along_axis(box_w, first, axis=1)
        erase = (uniform((batch, 1)) < self.erasing_prob) & ops.any(fits, axis=1, keepdims=True)
        top = ops.floor(uniform((batch, 1)) * (sides[0] - box_h + 1))
        left = ops.floor(uniform((batch, 1)) * (sides[1] - box_w + 1))
        rows = ops.arange(height, dtype=box_h.dtype)[None, :]
        cols = ops.arange(width, dtype=box_w.dtype)[None, :]
        in_rows = erase & (rows >= top) & (rows < top + box_h)  # (batch, height)
        in_cols = (cols >= left) & (cols < left + box_w)  # (batch, width)
        inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
        noise = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        return ops.where(inside, ops.cast(noise, images.dtype), images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(mean=self.mean, std=self.std, erasing_prob=self.erasing_prob, seed=self.seed)
        return config


def with_input_stage(model: keras.Model, recipe: str | Recipe, **overrides) -> keras.Model:
    """`model` (of normalised channels-last RGB images) behind an `InputStage` for `recipe`:
    a model of uint8 images, for `data.train_pipeline(..., uint8_images=True)` and
    `data.eval_pipeline(..., uint8_images=True)`. The two share their weights;
    `make_callbacks`' weight files and `without_input_stage` give `model`'s."""
    recipe = get_recipe(recipe, **overrides)
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(
            "with_input_stage needs a model of channels-last RGB images, (height, width, 3). "
            f"Received: a model of input shape {model.input_shape}"
        )
    stage = InputStage(recipe.mean, recipe.std, recipe.erasing_prob, name="input_stage")
    return keras.Sequential([keras.Input(shape, dtype="uint8"), stage, model], name=model.name)


def without_input_stage(model: keras.Model) -> keras.Model:
    """The model behind `model`'s `InputStage` (`with_input_stage`); `model` if it has none."""
    layers = model.layers if isinstance(model, keras.Sequential) else []
    return layers[-1] if len(layers) == 2 and isinstance(layers[0], InputStage) else model


class _WeightsCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` of the weights of the model behind an `InputStage`, if there is one:
    its files load into that model. (The model fit trains stays the callback's own: under JAX,
    reading it brings its variables up to date.)"""

    @property
    def model(self):
        return without_input_stage(super().model)


def make_callbacks(
    output_dir: str, tensorboard: bool = False, best_of: str | None = None
) -> list[keras.callbacks.Callback]:
    """Callbacks that write under `output_dir`: the last epoch's weights
    (`checkpoint.weights.h5`; of a model behind an `InputStage`, those of the model behind it),
    a backup that a rerun resumes from, a CSV log (`log.csv`), and
    TensorBoard logs if `tensorboard`. With `best_of`, a metric of the logs such as
    `"val_accuracy"`, also the weights of the epoch where it was best (`best.weights.h5`): the
    lowest for a name ending in "loss", else the highest. A resumed run compares against the
    best value in the log so far, so the file keeps the best epoch of the whole run. Build a
    resumed run's pipeline with `initial_epoch=resumed_epoch(output_dir)`."""
    if best_of is not None and not (isinstance(best_of, str) and best_of):
        raise ValueError(
            f"best_of must be None or the name of a logged metric such as 'val_accuracy'. "
            f"Received: best_of={best_of!r}"
        )
    os.makedirs(output_dir, exist_ok=True)
    log = os.path.join(output_dir, "log.csv")
    callbacks = [
        _WeightsCheckpoint(
            os.path.join(output_dir, "checkpoint.weights.h5"), save_weights_only=True
        ),
        keras.callbacks.BackupAndRestore(os.path.join(output_dir, BACKUP)),
        keras.callbacks.CSVLogger(log, append=True),
    ]
    if best_of:
        mode = "min" if best_of.endswith("loss") else "max"
        callbacks.append(
            _WeightsCheckpoint(
                os.path.join(output_dir, "best.weights.h5"),
                monitor=best_of,
                mode=mode,
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=_logged_best(log, best_of, mode),
            )
        )
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard")))
    return callbacks


def resumed_epoch(output_dir: str) -> int:
    """The epoch that a run with `make_callbacks(output_dir)` resumes at: the one after the last
    that its `BackupAndRestore` saved (Keras' `training_metadata.json`); 0 for a new run. Pass
    it to `data.train_pipeline(..., initial_epoch=...)` so that a seeded run goes on with the
    batches it would have had."""
    path = os.path.join(output_dir, BACKUP, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as file:
        return int(json.load(file)["epoch"])


def _logged_best(log: str, metric: str, mode: str) -> float | None:
    """The lowest (`mode="min"`) or highest value of `metric` in a CSVLogger file; None if
    there is none."""
    if not os.path.exists(log):
        return None
    with open(log, newline="") as file:
        values = [float(row[metric]) for row in csv.DictReader(file) if row.get(metric)]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def freeze(model: keras.Model, blocks: int | None = None) -> keras.Model:
    """Freezes the stem and the first `blocks` blocks (None: the whole backbone) for
    fine-tuning; the head and later blocks stay trainable. Recompile afterwards.

    Frozen BatchNorm layers run in inference mode (Keras' rule for `trainable=False`).
    """
    depth = block_count(model)
    blocks = depth if blocks is None else check_non_negative_int("blocks", blocks)
    if blocks > depth:
        raise ValueError(
            f"blocks must be at most the model's depth, {depth}, or None. Received: blocks={blocks}"
        )
    for layer in model.layers:
        if layer.name == "stem":
            layer.trainable = False
        elif layer.name.startswith("block_"):
            layer.trainable = int(layer.name.split("_")[1]) >= blocks
    return model


def set_remat(model: keras.Model, enabled: bool = True) -> keras.Model:
    """Turns gradient checkpointing of every block on or off (timm's `set_grad_checkpointing`),
    for a model built with or without `remat=True` or loaded from a `.keras` file; see
    `ConvMixerBlock`. Before `compile`, or compile again."""
    check_bool("enabled", enabled)
    block_count(model)
    for layer in model.layers:
        if isinstance(layer, ConvMixerBlock):
            layer.remat = enabled
    return model
