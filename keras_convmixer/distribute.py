"""Data-parallel training on several devices or machines with the engines that exist:
`tf.distribute` on TensorFlow, `keras.distribution` (+ `jax.distributed`) on JAX.

```python
setup = keras_convmixer.distribute.setup()          # "auto": decided by backend and environment
with setup.scope():
    model = keras_convmixer.ConvMixer256_8()
    keras_convmixer.training.compile_for_recipe(model, "cifar10", steps_per_epoch=...)
batch = setup.global_batch(per_replica=128)
model.fit(train_dataset, callbacks=make_callbacks(setup.write_dir(out)))
```

Feed `fit` a `tf.data.Dataset` batched with the *global* batch: both engines shard it
themselves (TensorFlow's auto-sharding across workers and replicas; Keras' `DataParallel`
re-batches it to the per-process batch and gives each JAX process its slice). Every JAX
process then reads, decodes and augments every global batch. With
`setup(per_process_data=True)` each process feeds only its own part instead:

```python
setup = keras_convmixer.distribute.setup(per_process_data=True)
source, classes = data.from_tfds("imagenet2012", "train", shard=setup.shard, decode=False)
steps = setup.across_processes(int(source.cardinality()) // setup.process_batch(batch), min)
train = data.train_pipeline(source, classes, batch_size=setup.process_batch(batch),
                            seed=setup.process_seed(seed), batches=steps)
```

* TensorFlow: `MirroredStrategy` over all GPUs (or all logical CPUs, for tests) when there
  are several; `MultiWorkerMirroredStrategy` when `TF_CONFIG` describes a cluster of several
  workers; the default strategy otherwise. Keras 3's `fit` does not run under
  `MultiWorkerMirroredStrategy` (keras-team/keras#20585: its eager build step reduces the
  distributed batch, then its log reduction fails on scalars); the strategy is set up (for
  custom training loops) with a warning. Train on several machines with the JAX backend.
  Under a TensorFlow strategy with several replicas, models built in `scope()` use
  synchronized BatchNorm, so the statistics are those of the global batch, as on one device,
  and `training.AdamW` clips by the norm of the global gradient.
* JAX: `keras.distribution.DataParallel` over every device (of every process, after
  `jax.distributed.initialize()` when `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID` are set). The step runs on the global batch, so BatchNorm sees all of it.
* PyTorch: Keras has no distribution API for the torch backend; asking for more than one
  device is an error that says to use the TensorFlow or JAX backend for multi-GPU `fit`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings

import keras
import numpy as np

from keras_convmixer.checks import check_positive_int

MODES = ("auto", "none", "mirrored", "multi-worker", "data-parallel")
JAX_COORDINATOR_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def list_devices() -> list[str]:
    """The backend's devices, e.g. `["cpu:0"]` or `["gpu:0", "gpu:1"]` (PyTorch included)."""
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu:0"]
    return keras.distribution.list_devices()


@dataclasses.dataclass
class Setup:
    """What `setup()` chose, and the helpers that depend on it."""

    mode: str
    replicas: int
    num_workers: int = 1
    worker_index: int = 0
    strategy: object | None = None  # the tf.distribute strategy, on TensorFlow
    per_process_data: bool = False  # JAX: each process feeds its own part of the data

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """`(num_shards, index)`: the part of the data this process feeds (the `shard` argument
        of `data.from_tfds`, `from_folder`, `from_arrays`), or None when it feeds all of it."""
        if self.per_process_data and self.num_workers > 1:
            return self.num_workers, self.worker_index
        return None

    def process_batch(self, batch_size: int) -> int:
        """The batch this process's dataset yields for a global `batch_size`: its share when
        it feeds its own part of the data, the global batch otherwise."""
        batch_size = check_positive_int("batch_size", batch_size)
        return batch_size // self.num_workers if self.shard else batch_size

    def process_seed(self, seed: int | None) -> int | None:
        """A seed of this process's own for its part of the data (derived from `seed`, so
        that processes do not draw the same augmentations); `seed` when there are no parts."""
        if seed is None or not self.shard:
            return seed
        return int(np.random.SeedSequence([seed, self.worker_index]).generate_state(1)[0]) >> 1

    def across_processes(self, value: int, reduce=min) -> int:
        """`reduce` (`min` or `max`) of `value` over the JAX processes: one answer for all, such
        as the number of batches that every process can feed. `value` in one process."""
        if self.mode != "data-parallel" or self.num_workers == 1:
            return value
        from jax.experimental import multihost_utils

        return int(reduce(multihost_utils.process_allgather(np.int32(value))))

    def scope(self):
        """Build and compile models inside this context."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def global_batch(self, per_replica: int) -> int:
        """Per-replica batch × replicas (each worker feeds global batches on TensorFlow)."""
        return check_positive_int("per_replica", per_replica) * self.replicas

    def check_batch(self, batch_size: int) -> int:
        """`batch_size` if it is a positive integer that splits evenly over the replicas (JAX
        requires it), else a ValueError."""
        batch_size = check_positive_int("batch_size", batch_size)
        if batch_size % self.replicas:
            raise ValueError(
                f"batch_size must be divisible by the {self.replicas} replicas. "
                f"Received: batch_size={batch_size}"
            )
        return batch_size

    def eval_pad_to(self, batch_size: int) -> int:
        """The multiple that evaluation batches of `batch_size` (the global batch) must be
        padded to (`data.eval_pipeline(..., pad_to=...)`). JAX's data parallelism splits every
        batch evenly: over the devices of one process, and across processes only whole batches
        (global ones, which Keras re-batches into a slice per process, or each process's own).
        TensorFlow's strategies take short batches as they are."""
        check_positive_int("batch_size", batch_size)
        if self.mode != "data-parallel":
            return 1
        return self.replicas if self.num_workers == 1 else self.process_batch(batch_size)

    def eval_batches(self, dataset, batch_size: int) -> int | None:
        """The number of evaluation batches every process runs when each feeds its own part
        (`data.eval_pipeline(..., batches=...)`): the most that any part holds. `dataset`:
        this process's part, unbatched. None when the processes do not feed parts."""
        if not self.shard:
            return None
        count = int(dataset.cardinality())
        if count < 0:
            raise ValueError(
                "eval_batches needs a dataset of known length (unbatched, before any filter). "
                f"Received: dataset of cardinality {count}"
            )
        return self.across_processes(-(-count // self.process_batch(batch_size)), max)

    def scale_lr(self, lr: float, base_batch: int, batch_size: int) -> float:
        """Linear scaling rule: `lr × batch_size / base_batch`."""
        if not lr > 0:
            raise ValueError(f"lr must be > 0. Received: lr={lr!r}")
        return (
            lr
            * check_positive_int("batch_size", batch_size)
            / check_positive_int("base_batch", base_batch)
        )

    def write_dir(self, path: str) -> str:
        """Where this worker writes checkpoints: `path` on the chief, a private scratch folder
        on the others (their files are throw-away copies)."""
        if self.is_chief:
            return path
        return os.path.join(path, "workers", f"worker_{self.worker_index}")


def _torch_setup(mode: str) -> Setup:
    count = len(list_devices())
    if mode in ("mirrored", "multi-worker", "data-parallel"):
        raise ValueError(
            f"distribute={mode!r} is not available on the torch backend: Keras has no "
            "distribution API for PyTorch. Use KERAS_BACKEND=tensorflow (mirrored, "
            "multi-worker) or KERAS_BACKEND=jax (data-parallel) for multi-GPU training."
        )
    if count > 1:
        warnings.warn(
            f"{count} GPUs found, but the torch backend trains on one: use the TensorFlow or "
            "JAX backend to train on all of them.",
            stacklevel=3,
        )
    return Setup("none", 1)


def _tensorflow_setup(mode: str) -> Setup:
    import tensorflow as tf

    cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
    workers = len(cluster.get("cluster", {}).get("worker", []))
    if mode == "auto":
        if workers > 1:
            mode = "multi-worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            mode = "mirrored"
        else:
            mode = "none"
    if mode == "none":
        return Setup("none", 1, strategy=tf.distribute.get_strategy())
    if mode == "multi-worker":
        warnings.warn(
            "Keras 3's model.fit does not run under MultiWorkerMirroredStrategy "
            "(keras-team/keras#20585); use it in a custom training loop, or train on several "
            "machines with KERAS_BACKEND=jax (jax.distributed).",
            stacklevel=3,
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        resolver = strategy.cluster_resolver
        return Setup(
            mode,
            strategy.num_replicas_in_sync,
            num_workers=max(workers, 1),
            worker_index=resolver.task_id if resolver.task_type == "worker" else 0,
            strategy=strategy,
        )
    if mode == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        return Setup(mode, strategy.num_replicas_in_sync, strategy=strategy)
    raise ValueError(
        "distribute='data-parallel' is the JAX backend's; on TensorFlow use 'mirrored' or "
        "'multi-worker'."
    )


def _jax_setup(mode: str, per_process_data: bool) -> Setup:
    import jax

    coordinated = all(os.environ.get(v) for v in JAX_COORDINATOR_VARIABLES)
    if coordinated and not jax.distributed.is_initialized():
        if jax.config.jax_platforms in (None, "", "cpu") and not _has_accelerator():
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    if mode in ("mirrored", "multi-worker"):
        raise ValueError(
            f"distribute={mode!r} is TensorFlow's; on JAX use 'data-parallel' (it spans "
            "every process that jax.distributed knows)."
        )
    devices = jax.devices()
    if mode == "auto":
        mode = "data-parallel" if len(devices) > 1 else "none"
    if mode == "none":
        keras.distribution.set_distribution(None)
        return Setup("none", 1)
    distribution = keras.distribution.DataParallel(
        devices=[f"{d.platform}:{d.id}" for d in devices], auto_shard_dataset=not per_process_data
    )
    keras.distribution.set_distribution(distribution)
    return Setup(
        "data-parallel",
        len(devices),
        num_workers=jax.process_count(),
        worker_index=jax.process_index(),
        per_process_data=per_process_data,
    )


def _has_accelerator() -> bool:
    import importlib.util

    return any(
        importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")
    )


def setup(mode: str = "auto", per_process_data: bool = False) -> Setup:
    """Chooses and installs the distribution for the current backend and environment.

    Args:
        mode: `"auto"`, `"none"`, `"mirrored"` / `"multi-worker"` (TensorFlow) or
            `"data-parallel"` (JAX). Defaults to `"auto"`.
        per_process_data: bool. JAX, several processes: each process feeds batches of its
            own part of the data (`setup.shard`, `setup.process_batch`) instead of every
            process building each global batch for Keras to slice. Defaults to False.

    Returns:
        A `Setup`: build and compile in `setup.scope()`; `setup.replicas`,
        `setup.global_batch(per_replica)`, `setup.write_dir(path)`.
    """
    if mode not in MODES:
        raise ValueError(f"distribute must be one of {MODES}. Received: distribute={mode!r}")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_setup(mode)
    if backend == "jax":
        return _jax_setup(mode, per_process_data)
    return _torch_setup(mode)


def sync_batch_norm() -> bool:
    """Whether new BatchNorm layers should synchronise statistics across replicas: under a
    TensorFlow strategy with more than one replica."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1
