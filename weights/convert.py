"""Converts a ConvMixer checkpoint (timm .safetensors, or the original .pth.tar) to Keras, or
a Keras model to timm's format (a .safetensors file or a Hub folder).

    python weights/convert.py CHECKPOINT OUT.weights.h5 --model convmixer_1536_20 [--compare-timm]

Prints the sha256 of the written file and, with --compare-timm (needs torch and timm), the max
logit deviation against timm's model loaded from the same checkpoint. Same as
`keras-convmixer convert`.
"""

import sys

from keras_convmixer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["convert", *sys.argv[1:]]))
