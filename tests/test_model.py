"""The core model: parameter counts, shapes, NumPy parity, round trips, dtypes, validation."""

import os

import keras
import numpy as np
import pytest
from conftest import BACKEND, randomize, small_model, to_numpy
from reference import forward

import keras_convmixer
from keras_convmixer.kernels import global_average_pool
from keras_convmixer.layers import ConvMixerBlock, GlobalAveragePooling, PatchEmbedding

DATA = os.path.join(os.path.dirname(__file__), "data")


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize(
    "constructor, trainable",
    [
        (keras_convmixer.ConvMixer1536_20, 51_625_960),
        (keras_convmixer.ConvMixer768_32, 21_110_248),
        (keras_convmixer.ConvMixer1024_20, 24_383_464),
        (keras_convmixer.ConvMixer256_8, 594_186),
    ],
)
def test_parameter_counts(constructor, trainable):
    model = constructor()
    assert trainable_count(model) == trainable
    bn_statistics = sum(
        int(np.prod(v.shape)) for v in model.non_trainable_weights if "moving" in v.path
    )
    assert model.count_params() == trainable + bn_statistics


def test_variant_activation_comes_from_the_table():
    model = keras_convmixer.ConvMixer768_32(input_shape=(14, 14, 3))
    assert model.get_layer("stem").activation is keras.activations.relu
    assert model.get_layer("block_0").kernel_size == 7
    model = keras_convmixer.ConvMixer256_8()
    assert model.get_layer("block_0").activation is keras.activations.gelu
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize(
    "size, batch", [((32, 32), 1), ((64, 64), 3), ((96, 128), 2), ((224, 224), 1)]
)
def test_output_shapes(size, batch):
    model = keras_convmixer.ConvMixer(8, 2, kernel_size=3, patch_size=7, classes=7)
    x = np.random.rand(batch, *size, 3).astype("float32")
    probs = to_numpy(model(x))
    assert probs.shape == (batch, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    features = keras_convmixer.ConvMixer(8, 2, 3, 7, include_top=False)(x)
    assert tuple(features.shape) == (batch, size[0] // 7, size[1] // 7, 8)


@pytest.mark.parametrize("pooling, reduce", [(None, None), ("avg", np.mean), ("max", np.max)])
def test_pooling(pooling, reduce):
    model = small_model(include_top=False, pooling=pooling)
    x = np.random.rand(2, 16, 12, 3).astype("float32")
    out = to_numpy(model(x))
    feature_map = to_numpy(small_model(include_top=False)(x))
    assert feature_map.shape == (2, 8, 6, 16)
    if reduce is None:
        np.testing.assert_allclose(out, feature_map, atol=1e-6)
    else:
        np.testing.assert_allclose(out, reduce(feature_map, axis=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("kernel_size", [3, 4])
@pytest.mark.parametrize("depthwise_impl", ["auto", "native", "shift"])
def test_matches_numpy_reference(activation, kernel_size, depthwise_impl):
    model = small_model(activation, kernel_size=kernel_size, depthwise_impl=depthwise_impl)
    x = np.random.default_rng(1).normal(size=(2, 14, 10, 3))
    expected, _ = forward(model, x, activation, depth=3)
    logits = to_numpy(model.predict(x.astype("float32"), verbose=0))
    assert np.max(np.abs(logits - expected)) <= 1e-5
    assert np.std(expected) > 0.1  # the comparison is not between near-constant outputs


@pytest.mark.skipif(BACKEND != "torch", reason="oneDNN's fused convolutions: PyTorch")
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_torch_inference_reorders_weights_once_and_follows_every_change(activation):
    """On PyTorch, `predict` runs each convolution with its activation in oneDNN and keeps the
    weights reordered for it. After `set_weights` and after a training step, its logits must
    still be the NumPy reference's for the weights the model holds then."""
    from keras_convmixer.kernels import _onednn_weights

    model = small_model(activation, kernel_size=4)
    x = np.random.default_rng(1).normal(size=(2, 14, 10, 3)).astype("float32")
    y = np.eye(5, dtype="float32")[[0, 3]]
    other = randomize(small_model(activation, kernel_size=4), seed=5)
    model.compile(keras.optimizers.SGD(0.5), keras.losses.CategoricalCrossentropy(True))
    for change in ("none", "set_weights", "train_on_batch"):
        if change == "set_weights":
            model.set_weights(other.get_weights())
        elif change == "train_on_batch":
            model.train_on_batch(x, y)
        expected, _ = forward(model, x, activation, depth=3)
        logits = to_numpy(model.predict(x, verbose=0))
        assert np.max(np.abs(logits - expected)) <= 1e-5, change
    kernels = {id(v.value) for v in model.weights if v.path.endswith("kernel")}
    assert len(kernels) == 8  # stem, 3 depthwise, 3 pointwise, head (a matmul, not cached)
    assert len(kernels & {id(t) for t in _onednn_weights()}) == 7


@pytest.mark.parametrize("depthwise_impl", ["native", "shift"])
def test_channels_first_gives_the_same_numbers(depthwise_impl):
    last = small_model(depthwise_impl=depthwise_impl, data_format="channels_last")
    first = keras_convmixer.ConvMixer(
        16,
        3,
        3,
        2,
        classes=5,
        classifier_activation=None,
        data_format="channels_first",
        depthwise_impl=depthwise_impl,
        input_shape=(3, None, None),
    )
    first.set_weights(last.get_weights())
    x = np.random.default_rng(2).normal(size=(2, 12, 16, 3))
    expected, _ = forward(last, x, "gelu", depth=3)
    out = to_numpy(first.predict(x.transpose(0, 3, 1, 2).astype("float32"), verbose=0))
    assert np.max(np.abs(out - expected)) <= 1e-5


def test_channels_first_from_global_setting():
    keras.config.set_image_data_format("channels_first")
    try:
        model = keras_convmixer.ConvMixer(8, 1, 3, 2, include_top=False)
    finally:
        keras.config.set_image_data_format("channels_last")
    assert model.input_shape == (None, 3, None, None)
    assert model.get_layer("block_0").data_format == "channels_first"


@pytest.mark.skipif(BACKEND != "tensorflow", reason="XLA compilation of a Keras model: TF")
def test_xla_compiled_tensorflow_matches_reference():
    model = small_model(kernel_size=5)
    model.compile(jit_compile=True)
    x = np.random.default_rng(3).normal(size=(2, 12, 12, 3))
    expected, _ = forward(model, x, "gelu", depth=3)
    assert (
        np.max(np.abs(to_numpy(model.predict(x.astype("float32"), verbose=0)) - expected)) <= 1e-5
    )


def test_feature_extractor_returns_every_block_and_leaves_logits_alone():
    model = small_model()
    x = np.random.default_rng(4).normal(size=(1, 8, 8, 3)).astype("float32")
    before = to_numpy(model(x))
    extractor = keras_convmixer.feature_extractor(model)
    features = extractor(x)
    assert sorted(features) == ["block_0", "block_1", "block_2", "stem"]
    _, expected = forward(model, x.astype("float64"), "gelu", depth=3)
    for key, value in features.items():
        assert np.max(np.abs(to_numpy(value) - expected[key])) <= 1e-5
    np.testing.assert_array_equal(to_numpy(model(x)), before)
    subset = keras_convmixer.feature_extractor(model, blocks=[-1])
    assert sorted(subset(x)) == ["block_2", "stem"]


def test_feature_extractor_rejects_bad_blocks():
    model = small_model()
    with pytest.raises(ValueError, match="blocks must hold block indices in \\[-3, 3\\)"):
        keras_convmixer.feature_extractor(model, blocks=[3])
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="model must be a ConvMixer"):
        keras_convmixer.feature_extractor(plain)


def test_training_flag_uses_batch_statistics():
    model = small_model()
    x = np.random.default_rng(5).normal(size=(4, 8, 8, 3)).astype("float32")
    inference = to_numpy(model(x, training=False))
    training = to_numpy(model(x, training=True))
    assert inference.shape == training.shape == (4, 5)
    assert np.max(np.abs(inference - training)) > 1e-3


def test_keras_file_and_weights_round_trip(tmp_path):
    model = small_model()
    x = np.random.default_rng(6).normal(size=(2, 8, 8, 3)).astype("float32")
    expected = to_numpy(model(x))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(to_numpy(loaded(x)), expected)
    model.save_weights(tmp_path / "m.weights.h5")
    fresh = keras_convmixer.ConvMixer(16, 3, 3, 2, classes=5, classifier_activation=None)
    fresh.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)
    via_argument = keras_convmixer.ConvMixer(
        16, 3, 3, 2, classes=5, classifier_activation=None, weights=str(tmp_path / "m.weights.h5")
    )
    np.testing.assert_array_equal(to_numpy(via_argument(x)), expected)


def test_numpy_integers_are_taken_and_saved_as_python_ints(tmp_path):
    """Sizes often come from arrays or configs read with NumPy."""
    sizes = [np.int64(n) for n in (16, 3, 3, 2)]
    model = keras_convmixer.ConvMixer(*sizes, classes=np.int32(5), input_shape=(8, 8, 3))
    assert model.count_params() == small_model().count_params()
    mixer = model.get_layer("block_0")
    assert type(mixer.get_config()["kernel_size"]) is int
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras").output.shape == (None, 5)


@pytest.mark.skipif(
    BACKEND == "torch", reason="Keras 3.15's SavedModel export fails on torch for any model"
)
def test_saved_model_export_serves_any_size(tmp_path):
    import tensorflow as tf

    model = small_model()
    # JAX's own gradient of a strided convolution fails for symbolic sizes (any Keras model with
    # one), so from JAX a size-agnostic export leaves the gradients out.
    options = {"jax2tf_kwargs": {"with_gradient": False}} if BACKEND == "jax" else {}
    model.export(str(tmp_path / "served"), format="tf_saved_model", verbose=False, **options)
    served = tf.saved_model.load(str(tmp_path / "served"))
    rng = np.random.default_rng(7)
    for size in ((8, 8), (12, 10)):
        x = rng.normal(size=(2, *size, 3)).astype("float32")
        np.testing.assert_allclose(served.serve(x).numpy(), to_numpy(model(x)), atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        PatchEmbedding(8, 4, activation="relu", data_format="channels_first", name="p"),
        ConvMixerBlock(8, 5, activation="gelu", depthwise_impl="shift", remat=True, name="b"),
        GlobalAveragePooling(data_format="channels_first", keepdims=True, name="g"),
    ],
)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_average_pooling_is_the_spatial_mean(data_format, keepdims):
    x = np.random.default_rng(8).normal(2.0, 1.0, (2, 5, 3, 6)).astype("float32")
    spatial = (1, 2) if data_format == "channels_last" else (2, 3)
    expected = x.astype("float64").mean(axis=spatial, keepdims=keepdims)
    layer = GlobalAveragePooling(data_format=data_format, keepdims=keepdims)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-6)
    inputs = keras.Input(x.shape[1:])
    compiled = keras.Model(inputs, layer(inputs))
    np.testing.assert_allclose(to_numpy(compiled.predict_on_batch(x)), expected, rtol=1e-6)
    # In bfloat16, the mean of 15 positions (not a power of two) rounded once.
    x16 = keras.ops.cast(x, "bfloat16")
    exact = (
        to_numpy(keras.ops.cast(x16, "float32")).astype("float64").mean(spatial, keepdims=keepdims)
    )
    rounded = to_numpy(keras.ops.cast(keras.ops.cast(exact, "bfloat16"), "float32"))
    got = keras.ops.cast(global_average_pool(x16, data_format, keepdims), "float32")
    np.testing.assert_array_equal(to_numpy(got), rounded)


def test_model_saved_under_another_backend_loads_here():
    """tests/data/tiny_convmixer.keras was saved under TensorFlow by tests/make_fixture.py."""
    model = keras.models.load_model(os.path.join(DATA, "tiny_convmixer.keras"))
    io = np.load(os.path.join(DATA, "tiny_convmixer_io.npz"))
    out = to_numpy(model.predict(io["inputs"], verbose=0))
    assert np.max(np.abs(out - io["outputs"])) <= 1e-5


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy, dtype_policy):
    dtype_policy(policy)
    model = keras_convmixer.ConvMixer(16, 2, 3, 2, classes=4)
    compute = policy.split("_")[1]
    x = np.random.default_rng(7).normal(size=(2, 8, 8, 3)).astype("float32")
    probs = model(x)
    assert keras.backend.standardize_dtype(probs.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(probs).sum(axis=1), 1.0, atol=1e-3)
    stem = model.get_layer("stem")
    assert stem.compute_dtype == compute
    assert keras.backend.standardize_dtype(stem.norm.moving_mean.dtype) == "float32"
    assert keras.backend.standardize_dtype(stem.norm.moving_variance.dtype) == "float32"
    features = keras_convmixer.feature_extractor(model)(x)
    assert keras.backend.standardize_dtype(features["block_1"].dtype) == compute


def _sgd_batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four 12² images and one-hot labels of 5 classes."""
    x = np.random.default_rng(seed).normal(size=(4, 12, 12, 3)).astype("float32")
    return x, np.eye(5, dtype="float32")[[0, 1, 2, 4]]


def _logits_and_sgd_step(model: keras.Model, x, y) -> tuple[np.ndarray, list[np.ndarray]]:
    """`model`'s logits on `x`, and what one SGD step (rate 1) on `(x, y)` changes in each
    trainable weight."""
    logits = to_numpy(model(x))
    before = [to_numpy(v) for v in model.trainable_weights]
    model.compile(keras.optimizers.SGD(1.0), keras.losses.CategoricalCrossentropy(True))
    model.train_on_batch(x, y)
    return logits, [b - to_numpy(v) for b, v in zip(before, model.trainable_weights, strict=True)]


def _relative_errors(steps: list, others: list) -> list[float]:
    return [
        np.linalg.norm(other - step) / np.linalg.norm(step)
        for step, other in zip(steps, others, strict=True)
    ]


@pytest.mark.parametrize("depthwise_impl", ["auto", "shift"])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_follows_float32(policy, depthwise_impl, dtype_policy):
    """Same weights: logits and one SGD step's weight changes (the gradients) under a mixed
    policy are float32's up to 16-bit rounding; a dropped bias, a wrong cast or a broken
    gradient path is far outside that."""
    if BACKEND == "torch" and depthwise_impl == "shift":
        pytest.skip("the shift form is for XLA (JAX, TensorFlow)")
    x, y = _sgd_batch(seed=3)
    results = {}
    for name in ("float32", policy):
        dtype_policy(name)
        results[name] = _logits_and_sgd_step(small_model(depthwise_impl=depthwise_impl), x, y)
    (logits, steps), (mixed_logits, mixed_steps) = results["float32"], results[policy]
    scale = np.abs(logits).max()
    assert np.abs(mixed_logits - logits).max() < 0.03 * scale
    assert np.abs(logits).max() > 0.5  # not a degenerate model
    errors = _relative_errors(steps, mixed_steps)
    # Measured: at most 0.6% (float16) and 8% (bfloat16, 8-bit mantissa) on every backend.
    assert max(errors) < (0.02 if policy == "mixed_float16" else 0.15), errors


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's paths for GPUs and TPUs")
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_jax_paths_off_the_cpu_compute_the_same_function(policy, dtype_policy, monkeypatch):
    """On a GPU or TPU, JAX takes the paths that CI never reaches: XLA's own depthwise
    convolution, GELU, mean and BatchNorm gradient, and the 1×1 convolution's 16-bit result.
    Run here with the CPU hidden from `kernels`, they give the CPU paths' logits and one SGD
    step's weight changes, to float32 rounding or within 16-bit rounding."""
    from keras_convmixer import kernels

    dtype_policy(policy)
    x, y = _sgd_batch(seed=4)
    results = []
    for on_cpu in (True, False):
        monkeypatch.setattr(kernels, "_xla_on_cpu", lambda on_cpu=on_cpu: on_cpu)
        results.append(_logits_and_sgd_step(small_model(kernel_size=4), x, y))
    (logits, steps), (other_logits, other_steps) = results
    wide = policy == "float32"
    scale = np.abs(logits).max()
    assert scale > 0.5 and np.abs(other_logits - logits).max() < (1e-5 if wide else 0.03) * scale
    errors = _relative_errors(steps, other_steps)
    assert max(errors) < (1e-4 if wide else 0.15), errors


def test_policy_agreement_compares_float32_with_a_model_built_under_the_policy(dtype_policy):
    """The copy under the policy computes what a model built under it computes with the same
    weights, and the figures are those of the two models' predictions."""
    from keras_convmixer.benchmark import policy_agreement, with_dtype_policy

    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 24, 12, 12, 3)).astype("float32")
    y = np.eye(5, dtype="float32")[rng.integers(0, 5, (2, 24))]
    model = small_model()
    copy = with_dtype_policy(model, "mixed_bfloat16")
    assert copy.get_layer("block_0").compute_dtype == "bfloat16"
    assert copy.get_layer("predictions").compute_dtype == "float32"
    dtype_policy("mixed_bfloat16")
    built = small_model()
    built.set_weights(model.get_weights())
    dtype_policy("float32")
    mixed = np.concatenate([to_numpy(built.predict_on_batch(b)) for b in x])
    np.testing.assert_allclose(np.concatenate([copy.predict_on_batch(b) for b in x]), mixed)
    exact = np.concatenate([to_numpy(model.predict_on_batch(b)) for b in x])
    labels = y.argmax(-1).ravel()
    result = policy_agreement(model, zip(x, y, strict=True), "mixed_bfloat16")
    assert result["images"] == 48
    assert result["top1_float32"] == np.mean(exact.argmax(-1) == labels)
    assert result["top1_policy"] == np.mean(mixed.argmax(-1) == labels)
    assert result["top1_agreement"] == np.mean(exact.argmax(-1) == mixed.argmax(-1))
    assert result["max_output_difference"] == pytest.approx(np.abs(mixed - exact).max())
    # bfloat16 rounding of the logits, nothing more (as in the test above).
    assert 0 < result["max_output_difference"] < 0.03 * np.abs(exact).max()


def test_include_preprocessing_applies_imagenet_normalisation():
    model = small_model(include_preprocessing=True)
    plain = keras_convmixer.ConvMixer(16, 3, 3, 2, classes=5, classifier_activation=None)
    plain.set_weights([w for w in model.get_weights()][-len(plain.get_weights()) :])
    pixels = np.random.default_rng(8).uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    normalised = keras_convmixer.preprocess_input(pixels)
    np.testing.assert_allclose(to_numpy(model(pixels)), to_numpy(plain(normalised)), atol=1e-5)


VALIDATION = [
    ({"dim": 0}, "dim must be a positive integer. Received: dim=0"),
    ({"depth": -1}, "depth must be a positive integer. Received: depth=-1"),
    ({"kernel_size": 0}, "kernel_size must be a positive integer"),
    ({"patch_size": 2.5}, "patch_size must be a positive integer"),
    ({"activation": "nope"}, "activation must be a Keras activation name"),
    ({"pooling": "sum", "include_top": False}, "pooling must be one of"),
    ({"classes": 0}, "classes must be a positive integer. Received: classes=0"),
    ({"classifier_activation": "nope"}, "classifier_activation must be a Keras activation"),
    ({"input_shape": (32, 32)}, "input_shape must be a tuple of 3 entries"),
    ({"input_shape": (32, 32, 0)}, "input_shape must have a positive channel count"),
    ({"input_shape": (4, 32, 3)}, "input_shape must be at least one patch"),
    ({"data_format": "NHWC"}, "data_format must be 'channels_last' or 'channels_first'"),
    ({"depthwise_impl": "fft"}, "depthwise_impl must be 'auto', 'native' or 'shift'"),
    ({"remat": "yes"}, "remat must be True or False. Received: remat='yes'"),
    (
        {"weights": "/no/such/file.weights.h5"},
        r"weights must be None, 'imagenet', hf://OWNER/REPO\[@REVISION\]\[/FILE\], the",
    ),
    ({"weights": os.path.dirname(__file__)}, "or a folder holding model.safetensors. Received"),
]


@pytest.mark.parametrize("overrides, message", VALIDATION)
def test_validation_errors_name_the_argument(overrides, message):
    kwargs = {"dim": 8, "depth": 1, "kernel_size": 3, "patch_size": 7, **overrides}
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        keras_convmixer.ConvMixer(**kwargs)


def test_none_spatial_size_is_allowed_with_the_top():
    """The head is global pooling, so the model is fully convolutional even with the top."""
    model = keras_convmixer.ConvMixer(8, 1, 3, 7, input_shape=(None, None, 3))
    assert to_numpy(model(np.zeros((1, 21, 35, 3), "float32"))).shape == (1, 1000)


def test_weights_file_that_does_not_fit_names_the_layer_and_shapes(tmp_path):
    other = keras_convmixer.ConvMixer(16, 3, kernel_size=5, patch_size=2)
    other.save_weights(tmp_path / "k5.weights.h5")
    with pytest.raises(ValueError) as error:
        keras_convmixer.ConvMixer(
            16, 3, kernel_size=3, patch_size=2, weights=str(tmp_path / "k5.weights.h5")
        )
    message = str(error.value)
    assert "conv_mixer_block_2/depthwise" in message
    assert "model (3, 3, 16, 1), file (5, 5, 16, 1)" in message


def test_layers_are_exposed():
    assert keras_convmixer.layers.PatchEmbedding is PatchEmbedding
    assert keras_convmixer.layers.ConvMixerBlock is ConvMixerBlock
    assert keras.saving.get_registered_object("keras_convmixer>ConvMixerBlock") is ConvMixerBlock


@pytest.mark.skipif(BACKEND == "torch", reason="the shift form is for XLA (JAX, TensorFlow)")
@pytest.mark.parametrize("kernel_size", [3, 4])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_shift_depthwise_gradients_match_the_native_convolution(kernel_size, data_format):
    from keras_convmixer.kernels import depthwise_conv2d

    rng = np.random.default_rng(9)
    shape = (2, 7, 6, 5) if data_format == "channels_last" else (2, 5, 7, 6)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size, 5, 1)).astype("float32")
    bias = np.zeros(5, "float32")
    upstream = rng.normal(size=shape).astype("float32")
    linear = keras.activations.linear

    def gradients(impl):
        if BACKEND == "jax":
            import jax

            def loss(x, kernel):
                out = depthwise_conv2d(x, kernel, bias, linear, data_format, impl)
                return (out * upstream).sum()

            return [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1))(x, kernel)]
        import tensorflow as tf

        tx, tk = tf.Variable(x), tf.Variable(kernel)
        with tf.GradientTape() as tape:
            out = depthwise_conv2d(tx, tk, bias, linear, data_format, impl)
            loss = tf.reduce_sum(out * upstream)
        return [g.numpy() for g in tape.gradient(loss, [tx, tk])]

    for native, shift in zip(gradients("native"), gradients("shift"), strict=True):
        np.testing.assert_allclose(shift, native, atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX's depthwise gradients are its own")
@pytest.mark.parametrize("kernel_size", [3, 4, 7])
def test_depthwise_gradients_match_the_backends_convolution(kernel_size):
    """On TensorFlow and PyTorch in float32 on a CPU, the depthwise convolution's kernel
    gradient is a convolution of its own (`kernels._tf_depthwise_conv`,
    `kernels._torch_depthwise_conv`). Its output and gradients must be those of the backend's
    own depthwise convolution, for odd and even kernels (padded 1 before, 2 after)."""
    from keras_convmixer import kernels

    rng = np.random.default_rng(9)
    x, upstream = (rng.normal(size=(3, 9, 8, 12)).astype("float32") for _ in range(2))
    kernel = rng.normal(size=(kernel_size, kernel_size, 12, 1)).astype("float32")
    bias = rng.normal(size=12).astype("float32")

    def ours(x, kernel, bias):
        return kernels.depthwise_conv2d(x, kernel, bias, keras.activations.relu, impl="native")

    if BACKEND == "torch":
        import torch

        before, after = kernels.same_padding(kernel_size)

        def backends(x, kernel, bias):
            x = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (before, after, before, after))
            out = torch.nn.functional.conv2d(x, kernel.permute(2, 3, 0, 1), bias, groups=12)
            return torch.relu(out).permute(0, 2, 3, 1)

        def gradients(convolve):
            tensors = [torch.tensor(a, requires_grad=True) for a in (x, kernel, bias)]
            assert kernels._torch_depthwise_grad_applies(tensors[0])
            out = convolve(*tensors)
            grads = torch.autograd.grad((out * torch.tensor(upstream)).sum(), tensors)
            # Ours keeps the input's (channels-last) memory: a transposed gradient made every
            # later sum with it a strided copy (training step 8.2 against 6.4 s).
            assert grads[0].is_contiguous() or convolve is backends
            return [t.detach().numpy() for t in (out, *grads)]

    else:
        import tensorflow as tf

        assert kernels._tf_depthwise_grad_applies(tf.constant(x))

        def backends(x, kernel, bias):
            return tf.nn.relu(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME") + bias)

        def gradients(convolve):
            tensors = [tf.Variable(a) for a in (x, kernel, bias)]
            with tf.GradientTape() as tape:
                out = convolve(*tensors)
                loss = tf.reduce_sum(out * upstream)
            return [g.numpy() for g in (out, *tape.gradient(loss, tensors))]

    for got, expected in zip(gradients(ours), gradients(backends), strict=True):
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(BACKEND != "jax", reason="the fused inference half is JAX's")
@pytest.mark.parametrize("channels, kernel_size", [(40, 5), (16, 4)])
def test_fused_inference_half_gives_the_blocks_numbers_and_gradients(channels, kernel_size):
    """On JAX a block's first half runs in inference as one loop in 16-channel blocks
    (`kernels.depthwise_residual`); 40 channels end in a padded block, 16 fill one."""
    import jax

    from keras_convmixer.kernels import fuses_depthwise_residual

    assert fuses_depthwise_residual("shift", "channels_last")
    assert not fuses_depthwise_residual("native", "channels_last")
    assert not fuses_depthwise_residual("shift", "channels_first")
    rng = np.random.default_rng(5)
    blocks = {
        impl: ConvMixerBlock(channels, kernel_size, depthwise_impl=impl, name=impl)
        for impl in ("shift", "native")
    }
    for block in blocks.values():
        block.build((2, 9, 7, channels))
    randomize(blocks["shift"])
    for native, shift in zip(blocks["native"].weights, blocks["shift"].weights, strict=True):
        native.assign(shift)
    x = rng.normal(size=(2, 9, 7, channels)).astype("float32")
    upstream = rng.normal(size=x.shape).astype("float32")

    def outputs(block):
        """The output, and the gradients of a loss for the input and every trainable weight."""
        statistics = [v.value for v in block.non_trainable_variables]

        def loss(x, trainable):
            out, _ = block.stateless_call(trainable, statistics, x, training=False)
            return (out * upstream).sum()

        trainable = [v.value for v in block.trainable_variables]
        dx, dweights = jax.grad(loss, argnums=(0, 1))(x, trainable)
        return [to_numpy(block(x, training=False)), dx, *dweights]

    fused, native = outputs(blocks["shift"]), outputs(blocks["native"])
    assert np.std(native[0]) > 0.1
    for got, expected in zip(fused, native, strict=True):
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(BACKEND != "jax", reason="the fused inference half is JAX's")
def test_fused_inference_half_rounds_16_bit_inputs_once_as_the_unfused_form():
    """From bfloat16 inputs the fused loop sums, normalises and adds the residual in float32
    and rounds once, in the loop: the bits of the unfused form rounded at the end."""
    from keras_convmixer.kernels import cast, depthwise_conv2d, depthwise_residual

    rng = np.random.default_rng(11)
    x = keras.ops.cast(rng.normal(size=(2, 9, 7, 40)), "bfloat16")
    kernel, scale, shift = rng.normal(size=(5, 5, 40, 1)), rng.normal(size=40), rng.normal(size=40)
    bias = rng.normal(size=40)
    relu = keras.activations.relu
    fused = depthwise_residual(x, kernel, bias, relu, scale, shift)
    summed = depthwise_conv2d(x, kernel, bias, relu, impl="shift")
    unfused = cast(summed * scale + shift + keras.ops.cast(x, "float32"), "bfloat16")
    assert keras.backend.standardize_dtype(fused.dtype) == "bfloat16"
    bits = [to_numpy(keras.ops.cast(t, "float32")).view(np.uint32) for t in (fused, unfused)]
    np.testing.assert_array_equal(*bits)
    assert np.std(to_numpy(keras.ops.cast(fused, "float32"))) > 1


@pytest.mark.skipif(BACKEND == "torch", reason="the shift form is for XLA (JAX, TensorFlow)")
def test_shift_depthwise_keeps_16_bit_inputs_sums_in_float32():
    """The shifted sums of a bfloat16 input come back unrounded, in float32, for the block to
    round once after its activation, BatchNorm and residual."""
    from keras_convmixer.kernels import depthwise_conv2d

    rng = np.random.default_rng(4)
    x = keras.ops.cast(rng.normal(size=(2, 6, 6, 8)), "bfloat16")
    kernel = rng.normal(size=(3, 3, 8, 1)).astype("float32")
    bias = rng.normal(size=8).astype("float32")
    linear = keras.activations.linear
    out = depthwise_conv2d(x, kernel, bias, linear, impl="shift")
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    exact = depthwise_conv2d(keras.ops.cast(x, "float32"), kernel, bias, linear, impl="native")
    # Rounded to bfloat16, the sums (up to ~10 here) would be off by up to 2^-9 of their size.
    np.testing.assert_allclose(to_numpy(out), to_numpy(exact), rtol=1e-5, atol=1e-5)


def test_cast_to_bfloat16_rounds_as_the_backend_does():
    """`kernels.cast` (integer rounding on JAX on a CPU) gives the backend's own bits: ties to
    even, overflow to infinity, subnormals, signed zeros; NaN stays NaN; its gradient is the
    cast's (the upstream gradient, rounded)."""
    from keras_convmixer.kernels import cast

    rng = np.random.default_rng(7)
    spread = rng.normal(size=4096) * np.exp(rng.uniform(-90, 90, size=4096))
    special = np.array(
        [
            0x3F808000,
            0x3F818000,
            0xBF808000,
            0x3F80C000,
            0x7F7FFFFF,
            0x7F7F7FFF,
            0x00008000,
            0x00018000,
            0x80000000,
            0x00000000,
            0x7F800000,
            0xFF800000,
        ],
        dtype=np.uint32,
    ).view(np.float32)  # ties (even and odd), largest finite, subnormals, ±0, ±inf
    with np.errstate(over="ignore"):  # the largest spread values become infinity: tested too
        values = np.concatenate([spread.astype(np.float32), special])
    x = keras.ops.convert_to_tensor(values)
    ours = to_numpy(keras.ops.cast(cast(x, "bfloat16"), "float32"))
    theirs = to_numpy(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32"))
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    # NaNs whose bits, rounded as numbers, would give infinity and -0.
    nans = np.array([0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0xFFC00000], np.uint32).view(np.float32)
    rounded = cast(keras.ops.convert_to_tensor(nans), "bfloat16")
    assert np.isnan(to_numpy(keras.ops.cast(rounded, "float32"))).all()
    if BACKEND == "jax":
        import jax

        upstream = rng.normal(size=values.shape).astype("float32")
        weights = keras.ops.cast(upstream, "bfloat16")

        def loss(v, rounding):
            return keras.ops.sum(keras.ops.cast(rounding(v, "bfloat16") * weights, "float32"))

        ours = jax.grad(loss)(x, cast)
        theirs = jax.grad(loss)(x, keras.ops.cast)
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))


def test_fast_activation_is_the_exact_gelu_and_its_derivative():
    """`kernels.fast_activation` of Keras' GELU (on JAX on a CPU, erf as a rational function)
    against the erf form in float64: within float32 rounding, exactly 0 and x in the tails,
    16-bit inputs kept 16-bit; on JAX its gradient is the exact derivative."""
    from scipy.special import erf

    from keras_convmixer.kernels import fast_activation

    gelu = fast_activation(keras.activations.gelu)
    assert (gelu is not keras.activations.gelu) == (BACKEND == "jax")
    x = np.concatenate([np.linspace(-12, 12, 100_001), [-1e4, -40, 40, 1e4]]).astype("float32")
    wide = x.astype("float64")
    cdf = 0.5 * (1 + erf(wide / np.sqrt(2)))
    out = to_numpy(gelu(keras.ops.convert_to_tensor(x)))
    np.testing.assert_allclose(out, wide * cdf, rtol=1e-6, atol=2e-6)  # PyTorch's: 1.3e-6
    np.testing.assert_array_equal(out[-4:], [0, 0, 40, 1e4])
    half = gelu(keras.ops.convert_to_tensor(x[:5], "bfloat16"))
    assert keras.backend.standardize_dtype(half.dtype) == "bfloat16"
    if BACKEND == "jax":
        import jax

        slope = jax.grad(lambda v: gelu(v).sum())(x)
        density = np.exp(-0.5 * wide**2) / np.sqrt(2 * np.pi)
        np.testing.assert_allclose(to_numpy(slope), cdf + wide * density, rtol=1e-6, atol=1e-6)


def _training_batch_norm(norm, x, upstream, ours):
    """(output, d input, d gamma, d beta, moving mean, moving variance) of one training call."""
    from keras_convmixer.kernels import batch_norm

    def call(inputs):
        return batch_norm(norm, inputs, True) if ours else norm(inputs, training=True)

    if BACKEND == "torch":
        import torch

        inputs = torch.tensor(x, requires_grad=True)
        out = call(inputs)
        out.backward(torch.tensor(upstream))
        grads = [inputs.grad] + [v.value.grad for v in (norm.gamma, norm.beta)]
    elif BACKEND == "jax":
        import jax

        out = call(x)

        def loss(inputs, gamma, beta):
            # The traced call's updates of the moving statistics stay in the scope.
            with keras.StatelessScope(state_mapping=[(norm.gamma, gamma), (norm.beta, beta)]):
                return (call(inputs) * upstream).sum()

        grads = jax.grad(loss, argnums=(0, 1, 2))(x, norm.gamma.value, norm.beta.value)
    else:
        import tensorflow as tf

        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = call(inputs)
            loss = tf.reduce_sum(out * upstream)
        grads = tape.gradient(loss, [inputs, norm.gamma.value, norm.beta.value])
    moving = [norm.moving_mean, norm.moving_variance]
    return [to_numpy(t) for t in [out, *grads, *moving]]


@pytest.mark.parametrize("axis", [-1, 1])
def test_training_batch_norm_matches_keras(axis):
    """Outputs, gradients and moving statistics of the package's training BatchNorm (the fused
    kernel on TensorFlow and PyTorch, the written-out gradient on JAX) equal Keras' layer (with
    randomised parameters and statistics, so a swapped mean/variance would show)."""
    rng = np.random.default_rng(4)
    shape = (4, 5, 6, 8) if axis == -1 else (4, 8, 5, 6)
    norms = [keras.layers.BatchNormalization(axis, momentum=0.9, epsilon=1e-5) for _ in "ab"]
    for norm in norms:
        norm.build(shape)
    for variable in norms[0].weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    for ours, theirs in zip(norms[1].weights, norms[0].weights, strict=True):
        ours.assign(to_numpy(theirs))
    x = rng.normal(2.0, 3.0, shape).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    ours = _training_batch_norm(norms[0], x, upstream, ours=True)
    reference = _training_batch_norm(norms[1], x, upstream, ours=False)
    assert np.abs(ours[-1] - 1.0).max() > 0.05  # the statistics moved
    for mine, theirs in zip(ours, reference, strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_remat_trains_to_the_same_weights(policy, dtype_policy, monkeypatch):
    """Gradient checkpointing recomputes each block in the backward pass: two SGD steps end
    with the same weights and moving statistics as without (Keras' `RematScope` would update
    the moving statistics a second time on PyTorch, and fails on TensorFlow and JAX)."""
    dtype_policy(policy)
    wrapped = []
    remat = keras.remat
    monkeypatch.setattr(keras, "remat", lambda f: wrapped.append(f) or remat(f))
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    weights = {}
    for checkpointed in (False, True):
        model = keras_convmixer.ConvMixer(8, 2, 3, 2, classes=3, remat=checkpointed)
        randomize(model)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
        for _ in range(2):
            model.train_on_batch(x, y)
        weights[checkpointed] = [to_numpy(v) for v in model.weights]
    assert wrapped  # the blocks ran under keras.remat
    # bfloat16 on JAX and TensorFlow: XLA's fusions, and oneDNN's bfloat16 kernels on a CPU with
    # AVX512-BF16, compute the recomputed block in another order, one rounding apart (up to 8e-4
    # measured on both); PyTorch gives the same bits.
    atol = 2e-3 if policy != "float32" and BACKEND != "torch" else 1e-6
    for plain, checkpointed in zip(weights[False], weights[True], strict=True):
        np.testing.assert_allclose(checkpointed, plain, atol=atol)


XLA_TUNING_SCRIPT = """
import os, sys
import keras
import jax, jax.numpy as jnp
import keras_convmixer
if sys.argv[1] == "started":
    jnp.zeros(1).block_until_ready()
keras.config.set_dtype_policy(sys.argv[2])
keras_convmixer.ConvMixer(8, 1, kernel_size=3, patch_size=2, classes=2)
x = jnp.ones((64, 64), "float32")
hlo = jax.jit(lambda a: a @ a).lower(x).compile().as_text()
print(os.environ.get("XLA_FLAGS"), "ynn-dot" if "__ynn_fusion" in hlo else "eigen-dot")
"""


YNN = "--xla_cpu_experimental_ynn_fusion_type"
WIDTH = "--xla_cpu_prefer_vector_width"


@pytest.mark.skipif(BACKEND != "jax", reason="XLA's CPU flags: JAX")
@pytest.mark.parametrize(
    "start, policy, user_flags, expected",
    [
        ("fresh", "float32", "", f"{YNN}=reduce <width> eigen-dot"),
        ("fresh", "mixed_bfloat16", "", f"{YNN}=individual_dot,reduce <width> ynn-dot"),
        ("started", "float32", "", "None ynn-dot"),
        ("fresh", "float32", f"{YNN}=individual_dot", f"{YNN}=individual_dot <width> ynn-dot"),
        ("fresh", "float32", f"{WIDTH}=256", f"{WIDTH}=256 {YNN}=reduce eigen-dot"),
    ],
)
def test_jax_cpu_flags_are_set_before_jax_starts_and_never_override_the_user(
    start, policy, user_flags, expected
):
    import subprocess
    import sys

    import jaxlib

    from keras_convmixer.kernels import _has_avx512

    if not jaxlib.__version__.startswith("0.10."):
        pytest.skip("the flags are set on jaxlib 0.10 only")
    if sys.platform == "linux":  # NumPy's own CPU detection, an independent reading
        assert _has_avx512() == np._core._multiarray_umath.__cpu_features__.get("AVX512F", False)
    width = f"{WIDTH}=512" if _has_avx512() else ""
    expected = " ".join(expected.replace("<width>", width).split())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if user_flags:
        env["XLA_FLAGS"] = user_flags
    run = subprocess.run(
        [sys.executable, "-c", XLA_TUNING_SCRIPT, start, policy],
        env={**env, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == expected
