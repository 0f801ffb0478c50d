"""Recipes, schedule, optimizer, fine-tuning helpers, resumable training, and learning real data."""

import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND, assert_erased_as_timm, to_numpy
from digits import digits_32, digits_recipe

import keras_convmixer
from keras_convmixer import data, training


def test_one_cycle_values():
    lr, total = 0.01, 1000
    schedule = training.OneCycle(lr, total)
    points = {
        0: 0.0,
        200: lr / 2,
        400: lr,
        600: (lr + lr / 20) / 2,
        800: lr / 20,
        900: lr / 40,
        1000: 0.0,
        1200: 0.0,
    }
    for step, expected in points.items():
        assert float(to_numpy(schedule(step))) == pytest.approx(expected, abs=1e-9), step
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, training.OneCycle)
    assert restored.get_config() == {"max_lr": lr, "total_steps": total}
    assert float(to_numpy(restored(400))) == pytest.approx(lr)


def test_recipes_hold_the_published_hyperparameters():
    imagenet = training.RECIPES["imagenet"]
    assert (imagenet.lr, imagenet.adam_epsilon, imagenet.weight_decay) == (0.01, 1e-3, 2e-5)
    assert (imagenet.mixup_alpha, imagenet.cutmix_alpha, imagenet.erasing_prob) == (0.5, 0.5, 0.25)
    assert (imagenet.label_smoothing, imagenet.clipnorm, imagenet.epochs) == (0.1, 1.0, 150)
    cifar = training.RECIPES["cifar10"]
    assert (cifar.batch_size, cifar.lr, cifar.weight_decay, cifar.epochs) == (512, 0.05, 0.005, 25)
    with pytest.raises(ValueError, match="recipe must be one of"):
        training.get_recipe("mnist")
    with pytest.raises(ValueError, match=r"Unknown recipe fields \['learning_rate'\]"):
        training.get_recipe("cifar10", learning_rate=1.0)


def test_evaluation_transform_in_timms_keys_and_back():
    cifar = training.get_recipe("cifar10", crop_pct=0.875)
    config = training.timm_data_config(cifar)
    assert config == {
        "input_size": [3, 32, 32],
        "crop_pct": 0.875,
        "mean": [0.4914, 0.4822, 0.4465],
        "std": [0.2471, 0.2435, 0.2616],
    }
    back = training.get_recipe("imagenet", **training.eval_fields_from_timm(config))
    assert (back.image_size, back.crop_pct, back.mean, back.std) == (
        32,
        0.875,
        cifar.mean,
        cifar.std,
    )
    assert training.eval_fields_from_timm({"crop_pct": 0.9}) == {"crop_pct": 0.9}


def test_weight_decay_excludes_biases_and_norm_parameters():
    model = keras_convmixer.ConvMixer(8, 1, 3, 2, classes=3)
    optimizer = training.make_optimizer(training.RECIPES["imagenet"], total_steps=10)
    optimizer.build(model.trainable_variables)
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert decayed == {
        "stem/conv/kernel",
        "block_0/depthwise/kernel",
        "block_0/pointwise/kernel",
        "predictions/kernel",
    }
    assert optimizer.epsilon == 1e-3 and optimizer.global_clipnorm == 1.0
    everything = training.make_optimizer(training.RECIPES["cifar10"], total_steps=10)
    everything.build(model.trainable_variables)
    assert all(everything._use_weight_decay(v) for v in model.trainable_variables)


def test_gradient_accumulation_makes_one_clipped_update_of_the_mean_gradient():
    """Two accumulated batches make the update AdamW makes with their mean gradient, clipped as
    a whole, at the schedule's value for the second batch; nothing moves in between."""
    recipe = training.get_recipe("imagenet", accumulation_steps=2)
    rng = np.random.default_rng(4)
    start = {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=(2,))}
    # Gradients of norm ~5, so that global clipping at 1.0 matters.
    grads = [[rng.normal(size=v.shape) * 2.0 for v in start.values()] for _ in range(4)]

    def variables():
        return [keras.Variable(v.astype("float32"), name=n) for n, v in start.items()]

    def tensors(arrays):
        return [keras.ops.convert_to_tensor(a, "float32") for a in arrays]

    accumulated = variables()
    optimizer = training.make_optimizer(recipe, total_steps=4)
    for i, batch in enumerate(grads):
        optimizer.apply(tensors(batch), accumulated)
        if i == 0:
            for variable, value in zip(accumulated, start.values(), strict=True):
                np.testing.assert_array_equal(to_numpy(variable), value.astype("float32"))

    schedule = training.OneCycle(recipe.lr, 4)

    class AtSecondBatch(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return schedule(2 * step + 1)

    updated = variables()
    reference = training.make_optimizer(training.get_recipe(recipe, accumulation_steps=1), 2)
    reference.learning_rate = AtSecondBatch()
    for first, second in (grads[:2], grads[2:]):
        reference.apply(tensors([(a + b) / 2 for a, b in zip(first, second, strict=True)]), updated)
    for a, b, value in zip(accumulated, updated, start.values(), strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6, atol=1e-7)
        assert np.abs(to_numpy(a) - value).max() > 1e-4  # it did move
    with pytest.raises(ValueError, match=r"accumulation_steps must be a positive integer"):
        training.get_recipe("cifar10", accumulation_steps=0)


def test_freeze_backbone_and_first_blocks(tmp_path):
    model = keras_convmixer.ConvMixer(8, 4, 3, 2, classes=3)
    training.freeze(model, blocks=2)
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trainable == {"block_2", "block_3", "predictions"}
    # A frozen model saved and loaded again trains the same variables (its sub-layers too).
    model.save(tmp_path / "frozen.keras")
    loaded = keras.saving.load_model(tmp_path / "frozen.keras")
    assert [v.path for v in loaded.trainable_variables] == [
        v.path for v in model.trainable_variables
    ]
    training.freeze(model)
    assert {v.path.split("/")[0] for v in model.trainable_variables} == {"predictions"}
    with pytest.raises(ValueError, match="blocks must be at most the model's depth, 4, or None"):
        training.freeze(model, blocks=5)
    for wrong in (-1, 2.0, True):
        with pytest.raises(
            ValueError, match=f"blocks must be an integer ≥ 0. Received: blocks={wrong}"
        ):
            training.freeze(model, blocks=wrong)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="model must be a ConvMixer"):
        training.freeze(plain)


def test_set_remat_turns_checkpointing_of_every_block_on_and_off(tmp_path):
    model = keras_convmixer.ConvMixer(8, 3, 3, 2, classes=3)
    blocks = [layer for layer in model.layers if layer.name.startswith("block_")]
    assert training.set_remat(model) is model
    assert all(block.remat for block in blocks)
    model.save(tmp_path / "remat.keras")  # the setting is part of the saved architecture
    loaded = keras.saving.load_model(tmp_path / "remat.keras")
    assert all(loaded.get_layer(block.name).remat for block in blocks)
    training.set_remat(loaded, False)
    assert not any(loaded.get_layer(block.name).remat for block in blocks)
    with pytest.raises(ValueError, match="enabled must be True or False. Received: enabled=1"):
        training.set_remat(model, 1)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="model must be a ConvMixer"):
        training.set_remat(plain)


def test_compile_for_recipe_sets_the_schedule_and_loss():
    model = keras_convmixer.ConvMixer(8, 1, 3, 2, classes=10)
    recipe = training.compile_for_recipe(model, "cifar10", steps_per_epoch=7, epochs=2)
    assert recipe.epochs == 2
    schedule = model.optimizer._learning_rate
    assert isinstance(schedule, training.OneCycle)
    assert schedule.total_steps == 14 and schedule.max_lr == 0.05
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive integer"):
        training.compile_for_recipe(model, "cifar10", steps_per_epoch=0)


def _tiny_fit(output_dir, epochs, interrupt_at=None):
    keras.utils.set_random_seed(1)
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(32) % 3, 3)
    model = keras_convmixer.ConvMixer(8, 2, 3, 2, classes=3)
    training.compile_for_recipe(model, "cifar10", steps_per_epoch=4, epochs=3, batch_size=8)
    callbacks = training.make_callbacks(output_dir)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == interrupt_at:
                raise KeyboardInterrupt

    if interrupt_at is not None:
        callbacks.append(Interrupt())
    model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, callbacks=callbacks, verbose=0)
    return model


def test_backup_and_restore_resumes_to_the_same_weights(tmp_path):
    straight = _tiny_fit(str(tmp_path / "straight"), epochs=3)
    with pytest.raises(KeyboardInterrupt):
        _tiny_fit(str(tmp_path / "resumed"), epochs=3, interrupt_at=0)
    resumed = _tiny_fit(str(tmp_path / "resumed"), epochs=3)
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    log = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1", "2"]
    assert (tmp_path / "straight" / "checkpoint.weights.h5").exists()


@pytest.mark.parametrize("interrupted", [False, True])
def test_the_best_epochs_weights_are_kept_beside_the_last(tmp_path, interrupted):
    """Also across a resumed run: the resumed part compares against the best logged before."""
    x = np.random.default_rng(0).normal(size=(24, 8, 8, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(24) % 3, 3)
    # Held out: the same images with other labels, whose loss rises as the model learns.
    held_out = (x, np.roll(y, 1, axis=1))
    weights, losses = {}, {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights[epoch], losses[epoch] = self.model.get_weights(), logs["val_loss"]
            if interrupted and epoch == 0 and len(weights) == 1:
                raise KeyboardInterrupt

    def fit():
        keras.utils.set_random_seed(1)
        model = keras_convmixer.ConvMixer(8, 2, 3, 2, classes=3)
        training.compile_for_recipe(model, "cifar10", steps_per_epoch=3, epochs=5, batch_size=8)
        callbacks = training.make_callbacks(str(tmp_path), best_of="val_loss") + [Record()]
        model.fit(
            x, y, batch_size=8, epochs=5, validation_data=held_out, verbose=0, callbacks=callbacks
        )
        return model

    if interrupted:
        with pytest.raises(KeyboardInterrupt):
            fit()
    model = fit()
    with pytest.raises(ValueError, match="best_of must be None or the name of a logged metric"):
        training.make_callbacks(str(tmp_path), best_of=3)
    best = min(losses, key=losses.get)
    assert best < 4  # else the two files hold the same epoch and the test tells nothing
    for name, epoch in (("best", best), ("checkpoint", 4)):
        model.load_weights(tmp_path / f"{name}.weights.h5")
        for saved, kept in zip(model.get_weights(), weights[epoch], strict=True):
            np.testing.assert_array_equal(saved, kept, err_msg=name)


def test_the_input_stage_normalises_and_in_training_erases_as_timm():
    mean, std = training.IMAGENET_MEAN, training.IMAGENET_STD
    stage = training.InputStage(mean, std, erasing_prob=0.25, seed=3)
    images = np.full((2000, 40, 30, 3), 128, np.uint8)
    constant = (128 / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(
        to_numpy(stage(images)), np.broadcast_to(constant, images.shape), atol=1e-6
    )
    erased = to_numpy(stage(images, training=True))
    assert_erased_as_timm(erased, (np.abs(erased - constant) > 1e-6).any(axis=-1))
    again = to_numpy(stage(images, training=True))
    assert not np.array_equal(again, erased)  # new boxes at every call
    with pytest.raises(ValueError, match=r"erasing_prob must be in \[0, 1\]. Received: eras"):
        training.InputStage(mean, std, erasing_prob=1.5)
    with pytest.raises(ValueError, match=r"mean and std must be 3 numbers each \(R, G, B\)"):
        training.InputStage(mean, (0.2, 0.0, 0.2))
    copy = training.InputStage.from_config(stage.get_config())
    assert (copy.mean, copy.std, copy.erasing_prob, copy.seed) == (mean, std, 0.25, 3)


def test_a_model_behind_its_input_stage_trains_on_uint8_and_checkpoints_its_own_weights(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    y = keras.utils.to_categorical(np.arange(32) % 3, 3)
    model = keras_convmixer.ConvMixer(8, 2, 3, 2, classes=3)
    staged = training.with_input_stage(model, "imagenet")
    assert training.without_input_stage(staged) is model
    assert training.without_input_stage(model) is model
    training.compile_for_recipe(staged, "imagenet", steps_per_epoch=4, epochs=2, batch_size=8)
    callbacks = training.make_callbacks(str(tmp_path), best_of="loss")
    staged.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks)
    recipe = training.get_recipe("imagenet")
    normalised = (x / 255 - np.array(recipe.mean)) / np.array(recipe.std)
    np.testing.assert_allclose(
        to_numpy(staged.predict(x, verbose=0)),
        to_numpy(model.predict(normalised, verbose=0)),
        atol=1e-5,
    )
    fresh = keras_convmixer.ConvMixer(8, 2, 3, 2, classes=3)
    fresh.load_weights(tmp_path / "checkpoint.weights.h5")  # the last epoch's: up to date
    for saved, trained in zip(fresh.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, trained)
    fresh.load_weights(tmp_path / "best.weights.h5")
    channels_first = keras_convmixer.ConvMixer(8, 2, 3, 2, classes=3, data_format="channels_first")
    with pytest.raises(ValueError, match=r"channels-last RGB images, \(height, width, 3\)\. Rec"):
        training.with_input_stage(channels_first, "imagenet")


def test_a_seeded_fit_through_the_pipeline_repeats_exactly():
    """Seed 0 included: a derived seed of 0 would read as no seed and draw differently in
    every run."""
    x_train, y_train, _, _ = digits_32()
    recipe = training.get_recipe(
        digits_recipe(epochs=2), batch_size=32, erasing_prob=0.25, mixup_alpha=0.5, cutmix_alpha=0.5
    )

    def weights_after_fit():
        keras.utils.set_random_seed(0)
        train = data.train_pipeline(
            data.from_arrays(x_train[:128], y_train[:128]), 10, recipe, seed=0
        )
        model = keras_convmixer.ConvMixer(16, 2, kernel_size=3, patch_size=4, classes=10)
        training.compile_for_recipe(model, recipe, steps_per_epoch=4)
        model.fit(train, epochs=2, verbose=0)
        return model.get_weights()

    first = weights_after_fit()
    for a, b in zip(first, weights_after_fit(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_seeded_run_resumed_by_backup_and_restore_goes_on_with_the_same_batches(tmp_path):
    """`initial_epoch=training.resumed_epoch(output_dir)`: the resumed epochs get the shuffle
    and augmentation draws of the uninterrupted run's, so the weights end equal."""
    x_train, y_train, _, _ = digits_32()
    recipe = training.get_recipe(digits_recipe(epochs=3), batch_size=32, erasing_prob=0.25)

    def fit(output_dir, interrupt=False, resume=True):
        keras.utils.set_random_seed(0)
        initial_epoch = training.resumed_epoch(output_dir) if resume else 0
        train = data.train_pipeline(
            data.from_arrays(x_train[:96], y_train[:96]),
            10,
            recipe,
            seed=1,
            initial_epoch=initial_epoch,
        )
        model = keras_convmixer.ConvMixer(16, 2, kernel_size=3, patch_size=4, classes=10)
        training.compile_for_recipe(model, recipe, steps_per_epoch=3)

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if interrupt and epoch == 0:
                    raise KeyboardInterrupt

        callbacks = training.make_callbacks(str(output_dir)) + [Interrupt()]
        model.fit(train, epochs=3, verbose=0, callbacks=callbacks)
        return model.get_weights()

    straight = fit(tmp_path / "straight")
    for resume in (True, False):
        output_dir = tmp_path / f"resumed_{resume}"
        with pytest.raises(KeyboardInterrupt):
            fit(output_dir, interrupt=True)
        assert training.resumed_epoch(str(output_dir)) == 1
        resumed = fit(output_dir, resume=resume)
        equal = all(np.array_equal(a, b) for a, b in zip(straight, resumed, strict=True))
        # Without initial_epoch the resumed epochs repeat the first epoch's batches.
        assert equal == resume
    assert training.resumed_epoch(str(tmp_path / "new")) == 0
    with pytest.raises(ValueError, match="initial_epoch must be an integer ≥ 0"):
        data.train_pipeline(data.from_arrays(x_train, y_train), 10, recipe, initial_epoch=-1)


def test_learns_real_digits_through_the_pipeline():
    """scikit-learn's digits, upsampled to 32×32, through our pipeline and recipe."""
    x_train, y_train, x_val, y_val = digits_32()
    recipe = digits_recipe(epochs=6)
    train = data.train_pipeline(data.from_arrays(x_train, y_train), 10, recipe, seed=0)
    val = data.eval_pipeline(data.from_arrays(x_val, y_val), 10, recipe, batch_size=128)
    keras.utils.set_random_seed(0)
    model = keras_convmixer.ConvMixer(64, 4, kernel_size=5, patch_size=2, classes=10)
    training.compile_for_recipe(model, recipe, steps_per_epoch=len(x_train) // 64)
    history = model.fit(train, epochs=recipe.epochs, validation_data=val, verbose=0)
    accuracy = history.history["val_accuracy"][-1]
    print(f"{BACKEND}: digits held-out accuracy {accuracy:.4f}", file=sys.stderr)
    assert accuracy >= 0.95
