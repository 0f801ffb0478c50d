"""scikit-learn's digits (1,797 real 8×8 scans, shipped in its wheel) as 32×32 RGB uint8."""

import numpy as np


def digits_32(seed: int = 0):
    """(train_images, train_labels, val_images, val_labels), an 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((4, 4)))  # 8×8 -> 32×32, nearest neighbour
    images = np.repeat((images * (255.0 / 16.0)).round().astype("uint8")[..., None], 3, axis=-1)
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(0.8 * len(images))
    train, val = order[:split], order[split:]
    return images[train], digits.target[train], images[val], digits.target[val]


def digits_recipe(epochs: int):
    """The CIFAR-10 recipe fitted to digits: no flips (digits are not symmetric), mild
    RandAugment, batch 64, lr 0.01, float32."""
    from keras_convmixer import training

    return training.get_recipe(
        "cifar10",
        flip=False,
        randaugment_magnitude=6,
        batch_size=64,
        epochs=epochs,
        lr=0.01,
        mixed_precision=False,
    )
