"""A ConvMixer on ImageNet-1k with the paper's recipe (timm's train.py, 10 GPUs × 64).

    python examples/train_imagenet.py --data-dir /data/imagenet --output runs/in1k \
        --backend jax --distribute data-parallel
    python examples/train_imagenet.py --tfds imagenet2012 --manual-dir ~/imagenet-archives ...

Every hyperparameter is a flag with the paper's value as default (`--help` lists them): AdamW
lr 0.01, eps 1e-3, weight decay 2e-5 (none on biases and norms), one-cycle per iteration, 150
epochs (use --epochs 300 for 768/32), global batch 640, clipping at 1.0, label smoothing 0.1,
RandomResizedCrop 224 (0.08-1, 3/4-4/3), flip, timm's RandAugment rand-m9-mstd0.5-inc1,
MixUp 0.5 / CutMix 0.5, RandomErasing 0.25, mixed precision. Resumable: run the same command again.
On one GPU, `--batch-size 64 --accumulation-steps 10` updates with the paper's 640 images.
Short of GPU memory: `--remat` (gradient checkpointing, 20-40% more time a step).
Short of CPU for the input pipeline: `--uint8-images` (timm's train.py split: the pipeline
ships uint8 images and the model normalises and erases them on the GPU).

Several machines (JAX): run the same command on each, with the same --seed, and
JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i (i = 0 … N-1) set.
Each process reads, decodes and augments only its own part of the data.
"""

import sys

from keras_convmixer.cli import main

if __name__ == "__main__":
    defaults = ["--recipe", "imagenet", "--model", "convmixer_1536_20"]
    raise SystemExit(main(["train", *defaults, *sys.argv[1:]]))
