"""ConvMixer ("Patches Are All You Need?", Trockman & Kolter, 2022) for Keras 3.

Runs on the TensorFlow, JAX and PyTorch backends.
"""

from keras_convmixer import layers
from keras_convmixer.imagenet import decode_predictions, eval_transform, preprocess_input
from keras_convmixer.model import (
    VARIANTS,
    ConvMixer,
    ConvMixer256_8,
    ConvMixer768_32,
    ConvMixer1024_20,
    ConvMixer1536_20,
    create_model,
    feature_extractor,
)
from keras_convmixer.pretrained import WEIGHTS

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "WEIGHTS",
    "ConvMixer",
    "ConvMixer1024_20",
    "ConvMixer1536_20",
    "ConvMixer256_8",
    "ConvMixer768_32",
    "create_model",
    "decode_predictions",
    "eval_transform",
    "feature_extractor",
    "layers",
    "preprocess_input",
]
