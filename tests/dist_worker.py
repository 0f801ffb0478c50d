"""One training run for the distribution tests; run as its own process.

    [PER_PROCESS_DATA=1] python dist_worker.py MODE INITIAL.weights.h5 OUT.npz [logical CPUs]

Trains a small ConvMixer for one epoch on fixed data with global batch 8 under
`keras_convmixer.distribute.setup(MODE)` and saves the final weights; then evaluates it on
`EVAL_IMAGES` images (a short last batch, padded as the setup requires) and writes the loss,
the accuracy and the number of images evaluated by all processes, padding included, to
OUT.eval.json. With PER_PROCESS_DATA=1, each JAX process feeds only its own part of the data.
"""

import json
import os
import sys

mode, initial, out = sys.argv[1:4]
if len(sys.argv) > 4 and os.environ.get("KERAS_BACKEND") == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * int(sys.argv[4])
    )

import numpy as np  # noqa: E402

import keras_convmixer  # noqa: E402
from keras_convmixer import data, distribute, training  # noqa: E402

GLOBAL_BATCH = 8
# TensorFlow: 11 (a last batch of 3), since a MirroredStrategy replica given an empty batch
# meets a oneDNN shape bug. JAX: 9, so that with two processes feeding their own parts (5 and 4
# images at 4 a process), one part ends on a whole batch and gets an empty one added.
EVAL_IMAGES = 11 if os.environ["KERAS_BACKEND"] == "tensorflow" else 9

import keras  # noqa: E402

setup = distribute.setup(mode, per_process_data=os.environ.get("PER_PROCESS_DATA") == "1")
x = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype("float32")
y = np.eye(3, dtype="float32")[np.arange(32) % 3]
keras.utils.set_random_seed(0)  # every process must create the same initial values
with setup.scope():
    model = keras_convmixer.ConvMixer(8, 2, 3, 2, classes=3)
    model.load_weights(initial)
    training.compile_for_recipe(model, "cifar10", steps_per_epoch=4, epochs=1, lr=0.01)
setup.check_batch(GLOBAL_BATCH)
process_batch = setup.process_batch(GLOBAL_BATCH)
if os.environ["KERAS_BACKEND"] == "tensorflow" or setup.num_workers > 1:
    part = data.from_arrays(x, y, shard=setup.shard)  # all of it unless per-process data
    model.fit(part.batch(process_batch), epochs=1, verbose=0)
else:
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
np.savez(out, *[np.asarray(w) for w in model.get_weights()])

images = np.random.default_rng(1).integers(0, 256, (EVAL_IMAGES, 8, 8, 3), dtype=np.uint8)
source = data.from_arrays(images, np.arange(EVAL_IMAGES) % 3, shard=setup.shard)
val = data.eval_pipeline(
    source,
    3,
    "cifar10",
    batch_size=process_batch,
    image_size=8,
    crop_pct=1.0,
    pad_to=setup.eval_pad_to(GLOBAL_BATCH),
    batches=setup.eval_batches(source, GLOBAL_BATCH),
)
metrics = model.evaluate(val, return_dict=True, verbose=0)
evaluated = sum(int(batch[0].shape[0]) for batch in val)
evaluated *= setup.num_workers if setup.shard else 1  # each process evaluated its part
with open(f"{out}.eval.json", "w") as f:
    json.dump({"loss": metrics["loss"], "accuracy": metrics["accuracy"], "images": evaluated}, f)
print(f"mode={setup.mode} replicas={setup.replicas} workers={setup.num_workers}")
