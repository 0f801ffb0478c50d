"""Gradient checkpointing (`remat=True`) against none: one training step's time and the process's
peak memory above what the built model held, each setting in a process of its own (peak RSS
only grows). The figures behind the README's table:

    KERAS_BACKEND=torch python benchmarks/remat.py --json benchmarks/results/remat_torch.json
"""

import argparse
import json
import subprocess
import sys
import time

from keras_convmixer.benchmark import machine, write_json

STEP = """
import json, resource, sys, time
import keras
import numpy as np
from keras_convmixer import ConvMixer

dim, depth, kernel, patch, batch, size, remat = json.loads(sys.argv[1])
model = ConvMixer(dim, depth, kernel, patch, classes=10, input_shape=(size, size, 3), remat=remat)
model.compile(optimizer="sgd", loss="categorical_crossentropy")
x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype("float32")
y = np.eye(10, dtype="float32")[np.arange(batch) % 10]
built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.train_on_batch(x, y)  # traces / compiles
start = time.perf_counter()
for _ in range(2):
    model.train_on_batch(x, y)
step = (time.perf_counter() - start) / 2
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"step_s": step, "peak_mb_above_model": (peak - built) / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--kernel-size", type=int, default=9)
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    shape = [args.dim, args.depth, args.kernel_size, args.patch_size, args.batch, args.image_size]
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "model": shape[:4]}
    report["batch"], report["image_size"] = args.batch, args.image_size
    for remat in (False, True):
        run = subprocess.run(
            [sys.executable, "-c", STEP, json.dumps([*shape, remat])],
            capture_output=True,
            text=True,
            check=True,
        )
        report["remat" if remat else "plain"] = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("plain", "remat"):
        step, peak = report[name]["step_s"], report[name]["peak_mb_above_model"]
        print(f"{name:6} step {step:.2f} s, peak {peak:.0f} MB above the built model")
    write_json(report, args.json)


if __name__ == "__main__":
    main()
