"""ImageNet pre/post-processing: the normalisation formula, class names, timm's eval transform."""

import keras
import numpy as np
import pytest
from conftest import import_timm, to_numpy

import keras_convmixer
from keras_convmixer import imagenet


def test_preprocess_input_is_the_exact_formula():
    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, 5, 4, 3)).astype("float32")
    expected = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(
        keras_convmixer.preprocess_input(pixels), expected, rtol=1e-6, atol=1e-6
    )
    # channels_first and backend tensors give the same numbers
    first = keras_convmixer.preprocess_input(
        pixels.transpose(0, 3, 1, 2), data_format="channels_first"
    )
    np.testing.assert_allclose(first.transpose(0, 2, 3, 1), expected, rtol=1e-6, atol=1e-6)
    tensor = keras_convmixer.preprocess_input(keras.ops.convert_to_tensor(pixels))
    np.testing.assert_allclose(to_numpy(tensor), expected, rtol=1e-5, atol=1e-6)
    # another recipe's statistics (CIFAR-10's)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    cifar = (pixels / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(
        keras_convmixer.preprocess_input(pixels, mean=mean, std=std), cifar, rtol=1e-6, atol=1e-6
    )
    # the bug of a peer that passes std as a variance would give (x - mean) / sqrt(std)
    wrong = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.sqrt([0.229, 0.224, 0.225])
    assert np.max(np.abs(wrong - expected)) > 0.5


def test_class_names_ship_with_the_package():
    names = imagenet.class_names()
    assert len(names) == 1000 and len({wnid for wnid, _ in names}) == 1000
    assert names[0] == ("n01440764", "tench, Tinca tinca")
    assert names[281] == ("n02123045", "tabby, tabby cat")
    assert names[999][0] == "n15075141"


def test_decode_predictions_on_crafted_vectors():
    preds = np.zeros((2, 1000), "float32")
    preds[0, [281, 282, 285]] = [0.7, 0.2, 0.1]
    preds[1, 0] = 1.0
    decoded = keras_convmixer.decode_predictions(preds, top=3)
    assert decoded[0] == [
        ("n02123045", "tabby", pytest.approx(0.7)),
        ("n02123159", "tiger cat", pytest.approx(0.2)),
        ("n02124075", "Egyptian cat", pytest.approx(0.1)),
    ]
    assert decoded[1][0] == ("n01440764", "tench", 1.0)
    assert len(keras_convmixer.decode_predictions(preds)[0]) == 5
    with pytest.raises(ValueError, match=r"shape \(batch, 1000\). Received: preds.shape=\(1, 10\)"):
        keras_convmixer.decode_predictions(np.zeros((1, 10)))
    with pytest.raises(ValueError, match="top must be a positive integer"):
        keras_convmixer.decode_predictions(preds, top=0)


def test_eval_transform_matches_timm_exactly_on_a_real_photo():
    skimage = pytest.importorskip("skimage")
    import_timm()
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    photo = skimage.data.chelsea()  # 300×451 RGB, uint8
    config = resolve_data_config({}, pretrained_cfg={"crop_pct": 0.96, "interpolation": "bicubic"})
    assert config["crop_pct"] == 0.96
    reference = create_transform(**config)  # resize, crop, to tensor, normalise
    expected = reference(Image.fromarray(photo)).numpy().transpose(1, 2, 0)
    ours = keras_convmixer.preprocess_input(keras_convmixer.eval_transform(photo))
    assert ours.shape == (224, 224, 3)
    assert np.max(np.abs(ours - expected)) <= 1e-5


def test_eval_transform_resizes_the_shorter_side_then_centres():
    height, width = 300, 600
    image = np.zeros((height, width, 3), "float32")
    image[:, width // 2 :] = 255.0  # right half white
    out = keras_convmixer.eval_transform(image)
    assert out.shape == (224, 224, 3)
    # shorter side 300 -> 233, longer 600 -> 466; the centre crop keeps columns 121..344,
    # so the black/white edge (at 233) sits at column 112 of the crop
    row = out[112, :, 0]
    assert row[:100].max() < 1 and row[125:].min() > 254
    assert 0 < row[112] < 255
    with pytest.raises(ValueError, match="crop_pct must be in"):
        keras_convmixer.eval_transform(image, crop_pct=1.5)
    with pytest.raises(ValueError, match=r"one RGB image \(H, W, 3\), or a grey one"):
        keras_convmixer.eval_transform(np.zeros((4, 4, 4)))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_eval_transform_makes_grey_images_rgb(dtype):
    grey = np.random.default_rng(3).integers(0, 256, size=(40, 30)).astype(dtype)
    expected = keras_convmixer.eval_transform(np.repeat(grey[:, :, None], 3, axis=2), 16)
    assert np.ptp(expected) > 100
    for image in (grey, grey[:, :, None]):
        np.testing.assert_array_equal(keras_convmixer.eval_transform(image, 16), expected)


@pytest.mark.parametrize(
    "shape, data_format, where",
    [((2, 8, 8, 4), "channels_last", "last"), ((2, 8, 8, 3), "channels_first", "third from last")],
)
def test_preprocess_input_refuses_other_than_three_channels(shape, data_format, where):
    with pytest.raises(ValueError, match=f"3 channels on the {where} axis .{data_format}."):
        keras_convmixer.preprocess_input(np.zeros(shape), data_format=data_format)
