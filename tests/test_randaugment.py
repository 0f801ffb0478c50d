"""RandAugment's ops against the references' (timm's and torchvision's, which run PIL), and
its random choices."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from timm_shim import import_timm

from keras_convmixer import randaugment, training

FILL = (124, 116, 104)  # timm's fill: the ImageNet mean colour in whole levels


@pytest.fixture(scope="module")
def photo():
    """A real photo, not square (a swapped width and height would show), 72×56."""
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).resize((72, 56), Image.BICUBIC)


def assert_like_pil(ours: np.ndarray, reference: Image.Image, name: str):
    """Within one grey level everywhere, and equal almost everywhere."""
    difference = np.abs(ours - np.asarray(reference, np.float64))
    assert difference.max() <= 1, f"{name}: {difference.max()}"
    assert difference.mean() < 0.06, f"{name}: {difference.mean()}"


@pytest.mark.parametrize("magnitude", [3.0, 9.0])
@pytest.mark.parametrize("sign", [-1, 1])
def test_timm_ops_match_timm(photo, magnitude, sign, monkeypatch):
    """Every op of `rand-m9-mstd0.5-inc1` against timm's on the same image, magnitude and
    sign, with bilinear resampling: the argument exactly, the pixels to one level."""
    import_timm()
    from timm.data import auto_augment as timm_ops

    monkeypatch.setattr(timm_ops, "_randomly_negate", lambda v: -v if sign < 0 else v)
    image = tf.constant(np.asarray(photo), tf.float32)
    for name, op in randaugment.TIMM_OPS.items():
        to_argument = timm_ops.LEVEL_TO_ARG[name]
        arguments = to_argument(magnitude, {}) if to_argument else ()
        reference = timm_ops.NAME_TO_OP[name](
            photo, *arguments, fillcolor=FILL, resample=Image.BILINEAR
        )
        argument = float(op.argument(tf.constant(magnitude), tf.constant(float(sign)), image))
        if arguments:
            expected = arguments[0]
            if name.startswith("Translate"):  # timm: a share of the side; here: pixels
                expected *= photo.size[0] if name == "TranslateXRel" else photo.size[1]
            assert argument == pytest.approx(expected, abs=1e-4), name
        kwargs = {"fill": FILL} if op.geometric else {}
        assert_like_pil(op.apply(image, argument, **kwargs).numpy(), reference, name)


@pytest.mark.parametrize("magnitude", [5, 12, 30])
@pytest.mark.parametrize("sign", [-1, 1])
def test_torchvision_ops_match_torchvision(photo, magnitude, sign):
    """Every op of torchvision's RandAugment at a magnitude bin and sign, nearest-neighbour
    sampling and black fill as torchvision's defaults. A shear of bin 12 lands points exactly
    between pixels, where the two round differently: it is left out."""
    import_timm()
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import autoaugment as torchvision_ops

    width, height = photo.size
    space = torchvision_ops.RandAugment()._augmentation_space(31, (height, width))
    image = tf.constant(np.asarray(photo), tf.float32)
    for name, op in randaugment.TORCHVISION_OPS.items():
        if name.startswith("Shear") and magnitude == 12:
            continue
        magnitudes, signed = space[name]
        value = float(magnitudes[magnitude]) if magnitudes.ndim else 0.0
        value = -value if signed and sign < 0 else value
        reference = torchvision_ops._apply_op(photo, name, value, InterpolationMode.NEAREST, None)
        argument = op.argument(tf.constant(float(magnitude)), tf.constant(float(sign)), image)
        kwargs = {"fill": (0, 0, 0), "interpolation": "NEAREST"} if op.geometric else {}
        ours = op.apply(image, argument, **kwargs).numpy()
        difference = np.abs(ours - np.asarray(reference, np.float64))
        assert difference.mean() < 0.1, (name, difference.mean())
        assert (difference > 1).mean() < 0.002, name


@pytest.mark.parametrize("interpolation", ["BILINEAR", "NEAREST"])
def test_translations_match_pil_at_any_shift(photo, interpolation):
    """Translations are slices of the image, not a warp: PIL's pixels to one level at shifts
    by whole and part pixels, either way, and past the image."""
    image = tf.constant(np.asarray(photo), tf.float32)
    for pixels in (0.0, 3.0, -5.5, 0.25, -0.75, 17.4, 200.0, -80.0):
        for translate, matrix in (
            (randaugment.translate_x, (1, 0, pixels, 0, 1, 0)),
            (randaugment.translate_y, (1, 0, 0, 0, 1, pixels)),
        ):
            shifted = translate(image, pixels, fill=FILL, interpolation=interpolation).numpy()
            resample = getattr(Image, interpolation)
            reference = photo.transform(photo.size, Image.AFFINE, matrix, resample, fillcolor=FILL)
            assert_like_pil(shifted, reference, f"{translate.__name__} {pixels}")


def test_shears_take_two_neighbours_as_the_general_warp_takes_four(photo):
    """A shear keeps whole rows (columns): `affine` then gathers two neighbours of each sample
    rather than four. The same pixels as the four-neighbour path, which a matrix of tensors
    (a rotation's) takes, and PIL's to one level."""
    image = tf.constant(np.asarray(photo), tf.float32)
    for factor in (-0.3, 0.13, 0.27):
        for shear, matrix in (
            (randaugment.shear_x, (1, factor, 0, 0, 1, 0)),
            (randaugment.shear_y, (1, 0, 0, factor, 1, 0)),
        ):
            sheared = shear(image, factor, fill=FILL).numpy()
            general = randaugment.affine(image, [tf.constant(float(v)) for v in matrix], FILL)
            np.testing.assert_array_equal(sheared, general.numpy())
            reference = photo.transform(
                photo.size, Image.AFFINE, matrix, Image.BILINEAR, fillcolor=FILL
            )
            assert_like_pil(sheared, reference, f"{shear.__name__} {factor}")


def test_posterize_to_no_bits_is_black():
    """timm's PosterizeIncreasing at magnitude 10 keeps 0 bits; recent Pillow refuses that,
    the Pillow of the paper's time returned black."""
    image = tf.fill((4, 4, 3), 200.0)
    np.testing.assert_array_equal(randaugment.posterize(image, 0.0).numpy(), 0.0)
    np.testing.assert_array_equal(randaugment.posterize(image, 8.0).numpy(), 200.0)


def draws(policy: str, seeds: int, **kwargs) -> np.ndarray:
    """rand_augment on one image with seeds (0, i), i < `seeds`, inside tf.data."""
    image = tf.constant(np.asarray(Image.new("RGB", (20, 16))), tf.float32)
    image += tf.reshape(tf.range(20 * 16 * 3, dtype=tf.float32) % 181 + 20, (16, 20, 3))
    seeds = tf.data.Dataset.range(seeds).map(lambda i: tf.stack([tf.constant(0, tf.int64), i]))
    augmented = seeds.map(
        lambda seed: randaugment.rand_augment(image, seed, policy, **kwargs),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return np.stack(list(augmented.as_numpy_iterator())), image


def test_each_op_is_drawn_equally_often_and_applied_at_the_rate():
    """One op per image at rate 0.5, no magnitude noise: about half the images are kept, the
    others spread evenly over the 15 ops (told apart by their outputs, either sign)."""
    count = 1500
    results, image = draws("timm", count, num_ops=1, magnitude=9.0, rate=0.5)
    unchanged = (results == image.numpy()).all(axis=(1, 2, 3))
    assert 0.45 < unchanged.mean() < 0.55
    outputs = {}
    for name, op in randaugment.TIMM_OPS.items():
        kwargs = {"fill": FILL} if op.geometric else {}
        for sign in (-1.0, 1.0):
            argument = op.argument(tf.constant(9.0), tf.constant(sign), image)
            outputs.setdefault(name, []).append(op.apply(image, argument, **kwargs).numpy())
    counts = dict.fromkeys(outputs, 0)
    for result in results[~unchanged]:
        matches = [n for n, outs in outputs.items() if any((result == o).all() for o in outs)]
        assert len(matches) == 1, matches
        counts[matches[0]] += 1
    expected = count * 0.5 / 15
    assert all(0.6 * expected < n < 1.4 * expected for n in counts.values()), counts


def test_same_seed_same_result_in_parallel_and_seeds_differ():
    first, _ = draws("timm", 64, num_ops=2, magnitude=9.0, magnitude_std=0.5, rate=0.5)
    second, _ = draws("timm", 64, num_ops=2, magnitude=9.0, magnitude_std=0.5, rate=0.5)
    np.testing.assert_array_equal(first, second)
    assert len({result.tobytes() for result in first}) > 32


def test_torchvision_policy_always_applies_an_op():
    """14 ops with the identity, always applied: an unchanged image means the identity (or a
    no-op draw such as a solarize above the brightest pixel)."""
    results, image = draws("torchvision", 700, num_ops=1, magnitude=12.0)
    unchanged = (results == image.numpy()).all(axis=(1, 2, 3)).mean()
    assert 0.03 < unchanged < 0.15  # the identity: 1/14


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"randaugment_policy": "keras"}, "randaugment_policy must be one of"),
        ({"randaugment_magnitude": 11.0}, r"randaugment_magnitude must be in \[0.0, 10.0\]"),
        ({"randaugment_rate": 1.5}, r"randaugment_rate must be in \[0.0, 1.0\]"),
        ({"randaugment_ops": -1}, "randaugment_ops must be in"),
    ],
)
def test_recipe_rejects_bad_randaugment_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        training.get_recipe("imagenet", **overrides)


def test_torchvision_magnitude_takes_bins_up_to_30():
    recipe = training.get_recipe("cifar10", randaugment_magnitude=30.0)
    assert recipe.randaugment_magnitude == 30.0
    # The recipe checks' policy names (TensorFlow-free) are the policies that have ops.
    assert training.RANDAUGMENT_MAX_MAGNITUDE.keys() == randaugment.POLICIES.keys()
