"""Writes tests/data/tiny_convmixer.keras and its inputs/outputs, under the TensorFlow backend.

Run: KERAS_BACKEND=tensorflow python tests/make_fixture.py
The model-loading test checks that every backend reproduces these outputs.
"""

import os

import numpy as np
from conftest import randomize

import keras_convmixer

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

if __name__ == "__main__":
    os.makedirs(DATA, exist_ok=True)
    model = randomize(keras_convmixer.ConvMixer(8, 2, 3, 2, classes=3, name="tiny"), seed=42)
    inputs = np.random.default_rng(0).normal(size=(2, 10, 10, 3)).astype("float32")
    model.save(os.path.join(DATA, "tiny_convmixer.keras"))
    outputs = np.asarray(model.predict(inputs, verbose=0))
    np.savez(os.path.join(DATA, "tiny_convmixer_io.npz"), inputs=inputs, outputs=outputs)
