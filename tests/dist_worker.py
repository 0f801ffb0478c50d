"""One training run for the distribution tests; run as its own process.

    python dist_worker.py MODE INITIAL.weights.h5 OUT.npz [logical CPU devices]

Trains a small ConvMixer for one epoch on fixed data with global batch 8 under
`keras_convmixer.distribute.setup(MODE)` and saves the final weights; then evaluates it on 11
images (a short last batch of 3, padded as the setup requires) and writes the loss, the accuracy
and the number of images evaluated, padding included, to OUT.eval.json.
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

import keras  # noqa: E402

setup = distribute.setup(mode)
x = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype("float32")
y = np.eye(3, dtype="float32")[np.arange(32) % 3]
keras.utils.set_random_seed(0)  # every process must create the same initial values
with setup.scope():
    model = keras_convmixer.ConvMixer(8, 2, 3, 2, classes=3)
    model.load_weights(initial)
    training.compile_for_recipe(model, "cifar10", steps_per_epoch=4, epochs=1, lr=0.01)
setup.check_batch(GLOBAL_BATCH)
if os.environ["KERAS_BACKEND"] == "tensorflow" or setup.num_workers > 1:
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    model.fit(dataset, epochs=1, verbose=0)
else:
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
np.savez(out, *[np.asarray(w) for w in model.get_weights()])

images = np.random.default_rng(1).integers(0, 256, (11, 8, 8, 3), dtype=np.uint8)
val = data.eval_pipeline(
    data.from_arrays(images, np.arange(11) % 3),
    3,
    "cifar10",
    batch_size=GLOBAL_BATCH,
    image_size=8,
    crop_pct=1.0,
    pad_to=setup.eval_pad_to(GLOBAL_BATCH),
)
metrics = model.evaluate(val, return_dict=True, verbose=0)
evaluated = sum(int(batch[0].shape[0]) for batch in val)
with open(f"{out}.eval.json", "w") as f:
    json.dump({"loss": metrics["loss"], "accuracy": metrics["accuracy"], "images": evaluated}, f)
print(f"mode={setup.mode} replicas={setup.replicas} workers={setup.num_workers}")
