"""ConvMixer-256/8 on CIFAR-10 with the recipe of locuslab/convmixer-cifar10.

    python examples/train_cifar10.py --output runs/cifar10 [--backend jax] [--epochs 100 ...]

Every hyperparameter is a flag with the recipe's value as default (`--help` lists them):
batch 512, AdamW lr 0.05 (one-cycle), weight decay 0.005, 25 epochs, torchvision's
RandAugment(2, 12), flip, clipping at 1.0, mixed precision. Expect about 92.5% test accuracy
after 25 epochs on one GPU (the reference reports 92.5-92.6%; 100 epochs with jitter 0.2 and
erasing 0.2 give > 94%).
The same as `keras-convmixer train --recipe cifar10 --tfds cifar10 --model convmixer_256_8`.
"""

import sys

from keras_convmixer.cli import main

if __name__ == "__main__":
    defaults = ["--recipe", "cifar10", "--tfds", "cifar10", "--model", "convmixer_256_8"]
    raise SystemExit(main(["train", *defaults, *sys.argv[1:]]))
