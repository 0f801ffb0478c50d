"""`keras-convmixer benchmark --compare-timm` on this CPU-only machine.

The CPU torch wheel pairs with a CUDA torchvision build that needs tests/timm_shim.py to import;
this script applies it, then runs the benchmark with the given arguments, e.g.

    KERAS_BACKEND=jax python benchmarks/cpu_vs_timm.py --model convmixer_768_32 --batch 8

or, for every backend in turn (each in a process of its own that runs this script again) and
one table at the end:

    python benchmarks/cpu_vs_timm.py --all-backends --mode both --repeats 4
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from timm_shim import import_timm  # noqa: E402

from keras_convmixer.cli import main  # noqa: E402

if __name__ == "__main__":
    import_timm()
    raise SystemExit(main(["benchmark", "--compare-timm", *sys.argv[1:]]))
