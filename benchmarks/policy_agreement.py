"""Top-1 agreement of mixed-precision inference with float32, on a trained ConvMixer.

No ImageNet weights or images are on this machine, so the model is one trained here: the
CIFAR-10 variant (ConvMixer-256/8, k5 p2) on scikit-learn's digits (1,797 real 8×8 scans,
upsampled to 32×32, 80/20 split), through this package's pipeline and CIFAR-10 recipe in
float32. Its held-out images then go through the model in float32 and under each mixed policy
with the same weights (`keras_convmixer.benchmark.policy_agreement`):

    KERAS_BACKEND=jax python benchmarks/policy_agreement.py \
        --json benchmarks/results/policy_agreement_jax.json

With real weights and data the same figures come from
`keras-convmixer evaluate --model convmixer_768_32 --tfds imagenet2012 --manual-dir DIR
--compare-policy mixed_bfloat16`.
"""

import argparse
import json
import os
import sys
import time

import keras

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from digits import digits_32, digits_recipe  # noqa: E402

import keras_convmixer  # noqa: E402
from keras_convmixer import data, training  # noqa: E402
from keras_convmixer.benchmark import policy_agreement, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    x_train, y_train, x_val, y_val = digits_32()
    recipe = digits_recipe(args.epochs)
    train = data.train_pipeline(data.from_arrays(x_train, y_train), 10, recipe, seed=0)
    val = data.eval_pipeline(data.from_arrays(x_val, y_val), 10, recipe, batch_size=120)
    keras.utils.set_random_seed(0)
    model = keras_convmixer.ConvMixer256_8()
    training.compile_for_recipe(model, recipe, steps_per_epoch=len(x_train) // 64)
    start = time.perf_counter()
    model.fit(train, epochs=recipe.epochs, verbose=2)
    report = {
        "backend": keras.backend.backend(),
        "model": "convmixer_256_8 trained on digits",
        "epochs": recipe.epochs,
        "train_s": time.perf_counter() - start,
        "policies": [
            policy_agreement(model, val.as_numpy_iterator(), policy)
            for policy in ("mixed_bfloat16", "mixed_float16")
        ],
    }
    print(json.dumps(report, indent=2))
    write_json(report, args.json)


if __name__ == "__main__":
    main()
