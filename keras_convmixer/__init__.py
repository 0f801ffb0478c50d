"""ConvMixer ("Patches Are All You Need?", Trockman & Kolter, 2022) for Keras 3.

Runs on the TensorFlow, JAX and PyTorch backends.
"""

import os

import keras

# On JAX and PyTorch, TensorFlow runs only the tf.data input pipelines, whose batches are tens
# of megabytes: its default CPU allocator maps every such buffer anew from the OS and the
# page faults cost more than the arithmetic (this package's ImageNet training pipeline at 224²
# on 2 cores: 422 → 530-559 images/s). Its BFC allocator keeps and reuses them. TensorFlow reads the
# variable at its first allocation; set it to "false" to keep the default. Not on the
# TensorFlow backend, where the same allocator made ConvMixer-768/32 on a CPU 10-20% slower.
if keras.backend.backend() != "tensorflow" and "TF_CPU_ALLOCATOR_USE_BFC" not in os.environ:
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    # Its default ceiling is 64 GiB; a pipeline that caches a data set may need all of memory.
    if "SC_PHYS_PAGES" in getattr(os, "sysconf_names", {}):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        os.environ.setdefault("TF_CPU_BFC_MEM_LIMIT_IN_MB", str(max(total, 2**16)))

from keras_convmixer import layers
from keras_convmixer.imagenet import decode_predictions, eval_transform, preprocess_input
from keras_convmixer.kernels import keep_freed_memory
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

keep_freed_memory()

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
