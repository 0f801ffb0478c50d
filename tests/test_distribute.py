"""Distribution: each strategy trains to the same weights as one device with the same global
batch. Each run is its own process (devices are configured before the backend starts); each
backend's pytest session runs the cases of that backend."""

import json
import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf
from conftest import BACKEND
from PIL import Image

import keras_convmixer
from keras_convmixer import cli, distribute

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(backend, mode, initial, out, *extra, env=None):
    environment = {**os.environ, "KERAS_BACKEND": backend, **(env or {})}
    return subprocess.Popen(
        [sys.executable, WORKER, mode, str(initial), str(out), *map(str, extra)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(processes):
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return outputs


def max_difference(a, b) -> float:
    with np.load(a) as x, np.load(b) as y:
        return max(float(np.abs(x[k] - y[k]).max()) for k in x.files)


def assert_same_evaluation(single, other, images: int) -> None:
    """Same accuracy as one device on the worker's evaluation images, `images` evaluated with
    the padding; the loss reads low by exactly the padding's share (Keras averages it over the
    padded batches)."""
    with open(f"{single}.eval.json") as f, open(f"{other}.eval.json") as g:
        one, many = json.load(f), json.load(g)
    assert many["images"] == images
    assert many["accuracy"] == pytest.approx(one["accuracy"], abs=1e-6)
    assert many["loss"] * many["images"] / one["images"] == pytest.approx(one["loss"], rel=1e-4)


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    path = tmp_path_factory.mktemp("initial") / "initial.weights.h5"
    keras_convmixer.ConvMixer(8, 2, 3, 2, classes=3).save_weights(path)
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory, initial):
    """The one-device run that every strategy is compared with (once: it is deterministic)."""
    out = tmp_path_factory.mktemp("single") / "single.npz"
    finish([run_worker(BACKEND, "none", initial, out)])
    return out


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend")
def test_mirrored_strategy_on_two_logical_cpus_matches_one_device(tmp_path, initial, single):
    out = tmp_path / "mirrored.npz"
    (log,) = finish([run_worker("tensorflow", "mirrored", initial, out, 2)])
    assert "mode=mirrored replicas=2" in log
    difference = max_difference(single, out)
    print(f"MirroredStrategy (2 logical CPUs) vs one device: {difference:.2e}", file=sys.stderr)
    assert difference <= 1e-5
    assert_same_evaluation(single, out, images=11)  # 11 images: tf.distribute takes 3 as they are


CLUSTER_CHECK = """
import tensorflow as tf
from keras_convmixer import distribute
setup = distribute.setup()
value = setup.strategy.run(lambda: tf.constant(float(setup.worker_index + 1)))
total = setup.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
print(f"mode={setup.mode} replicas={setup.replicas} workers={setup.num_workers} sum={float(total)}")
"""


ACCUMULATION_UNDER_MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_convmixer import distribute, training
setup = distribute.setup("mirrored")
with setup.scope():
    try:
        training.make_optimizer(training.get_recipe("cifar10", accumulation_steps=2), 10)
    except ValueError as error:
        print(error)
"""


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend")
def test_gradient_accumulation_under_mirrored_strategy_says_why_not():
    process = subprocess.Popen(
        [sys.executable, "-c", ACCUMULATION_UNDER_MIRRORED],
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    (log,) = finish([process])
    assert "Received: accumulation_steps=2 with 2 replicas" in log, log[-3000:]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend")
def test_two_local_tensorflow_workers_form_a_cluster():
    """Two processes with TF_CONFIG on loopback ports all-reduce across workers. (Keras 3's
    fit does not run under this strategy: keras-team/keras#20585; JAX covers multi-host fit.)"""
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CLUSTER_CHECK],
            env={
                **os.environ,
                "KERAS_BACKEND": "tensorflow",
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                ),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = finish(workers)
    assert all("mode=multi-worker replicas=2 workers=2 sum=3.0" in log for log in logs), logs


@pytest.mark.skipif(BACKEND != "jax", reason="jax.distributed: JAX backend")
@pytest.mark.parametrize("per_process_data", [False, True])
def test_two_jax_processes_train_like_one(tmp_path, initial, single, per_process_data):
    """Two processes joined by jax.distributed (CPU collectives over gloo) on loopback, fed
    global batches that Keras slices, or each its own part of the data."""
    port = free_port()
    workers = [
        run_worker(
            "jax",
            "auto",
            initial,
            tmp_path / f"process{i}.npz",
            env={
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
                "PER_PROCESS_DATA": str(int(per_process_data)),
            },
        )
        for i in range(2)
    ]
    logs = finish(workers)
    assert all("mode=data-parallel replicas=2 workers=2" in log for log in logs)
    assert max_difference(tmp_path / "process0.npz", tmp_path / "process1.npz") == 0.0
    difference = max_difference(single, tmp_path / "process0.npz")
    feeding = "own parts" if per_process_data else "slices of global batches"
    print(f"JAX two processes ({feeding}) vs one process: {difference:.2e}", file=sys.stderr)
    assert difference <= 1e-5
    # 9 images. Global batches: the last one padded from 1 to 8. Own parts of 5 and 4 images
    # at 4 a process: the last batch of 1 padded to 4, and an empty batch after the 4.
    for i in range(2):
        assert_same_evaluation(single, tmp_path / f"process{i}.npz", images=16)


def write_image_folder(root, split: str, count: int) -> None:
    """`count` 8×8 images in two classes, each image a different grey."""
    for i in range(count):
        folder = root / split / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 15 * i, np.uint8)).save(folder / f"{i}.png")


def run_cli(*args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "keras_convmixer", *map(str, args)],
        env={**os.environ, "KERAS_BACKEND": BACKEND, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.skipif(BACKEND != "jax", reason="jax.distributed: JAX backend")
def test_train_command_in_two_jax_processes_feeding_their_own_parts(tmp_path, capsys):
    """15 training images in parts of 8 and 7 (batches of 4 a process: 2 and 1) and 9
    validation images in parts of 5 and 4: the processes must agree on one training step and
    two evaluation batches, or they wait on each other. Their accuracy must be the one that
    `evaluate` finds for the saved model in one process, and a second seeded run must end with
    the same weights (the first part's second batch, computed ahead and thrown away, made the
    batch augmentations draw differently from run to run: weights 0.06-0.3 apart)."""
    write_image_folder(tmp_path / "images", "train", 15)
    write_image_folder(tmp_path / "images", "val", 9)
    options = ["--model", "convmixer_16_2_k3_p2", "--data-dir", tmp_path / "images"]
    options += ["--recipe", "cifar10", "--image-size", 8, "--no-mixed-precision"]
    train = ["train", *options, "--epochs", 2, "--batch-size", 8, "--seed", 0]

    def two_processes(output):
        port = free_port()
        variables = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2"}
        processes = [
            run_cli(*train, "--output", output, env={**variables, "JAX_PROCESS_ID": str(i)})
            for i in range(2)
        ]
        return finish(processes)

    logs = two_processes(tmp_path / "run")
    accuracies = {log.strip().splitlines()[-1] for log in logs}
    assert len(accuracies) == 1, logs
    with open(tmp_path / "run" / "log.csv") as f:
        assert len(f.read().strip().splitlines()) == 3  # the header and two epochs
    evaluate = ["evaluate", *options, "--weights", tmp_path / "run" / "model.keras"]
    assert cli.main(list(map(str, evaluate))) == 0  # in this process: one device
    top1 = float(capsys.readouterr().out.strip().splitlines()[-1].split()[1])
    assert float(accuracies.pop().split(": ")[1]) == pytest.approx(top1, abs=1e-4)
    two_processes(tmp_path / "again")
    first, second = (h5_arrays(tmp_path / run / "model.weights.h5") for run in ("run", "again"))
    assert first.keys() == second.keys()
    for name, values in first.items():
        np.testing.assert_array_equal(values, second[name], err_msg=name)


def h5_arrays(path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: (
                arrays.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None
            )
        )
    return arrays


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution: JAX backend")
def test_jax_data_parallel_on_two_cpu_devices_matches_one_device(tmp_path, initial, single):
    out = tmp_path / "data_parallel.npz"
    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    (log,) = finish([run_worker("jax", "auto", initial, out, env=flags)])
    assert "mode=data-parallel replicas=2" in log
    difference = max_difference(single, out)
    print(f"JAX DataParallel (2 CPU devices) vs one device: {difference:.2e}", file=sys.stderr)
    assert difference <= 1e-5
    assert_same_evaluation(single, out, images=10)  # 9 images: the last batch from 1 to 2


@pytest.mark.skipif(BACKEND != "torch", reason="the torch backend's message")
def test_torch_backend_says_to_use_tensorflow_or_jax():
    for mode in ("mirrored", "multi-worker", "data-parallel"):
        with pytest.raises(
            ValueError, match="not available on the torch backend.*KERAS_BACKEND=jax"
        ):
            distribute.setup(mode)
    assert distribute.setup("auto").replicas == 1


def test_setup_helpers():
    setup = distribute.setup("none")
    assert setup.replicas == 1 and setup.is_chief
    assert setup.global_batch(64) == 64
    assert setup.scale_lr(0.01, 640, 1280) == pytest.approx(0.02)
    two = distribute.Setup("mirrored", 2, worker_index=1, num_workers=2)
    assert two.global_batch(64) == 128 and not two.is_chief
    assert two.write_dir("/out") == "/out/workers/worker_1"
    with pytest.raises(ValueError, match="batch_size must be divisible by the 2 replicas"):
        two.check_batch(7)
    with pytest.raises(ValueError, match="distribute must be one of"):
        distribute.setup("horovod")
    for call, message in (
        (lambda: setup.global_batch(2.5), "per_replica must be a positive integer"),
        (lambda: setup.scale_lr(0.01, 0, 64), "base_batch must be a positive integer"),
        (lambda: setup.scale_lr(-0.01, 64, 64), "lr must be > 0. Received: lr=-0.01"),
        (lambda: two.process_batch(0), "batch_size must be a positive integer"),
        (lambda: two.eval_pad_to(0), "batch_size must be a positive integer"),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    assert (setup.eval_pad_to(8), two.eval_pad_to(8)) == (1, 1)  # tf.distribute splits any batch
    assert distribute.Setup("data-parallel", 4).eval_pad_to(8) == 4
    assert distribute.Setup("data-parallel", 4, num_workers=2).eval_pad_to(8) == 8


def test_setup_helpers_for_processes_that_feed_their_own_part():
    keras_slices = distribute.Setup("data-parallel", 4, num_workers=2, worker_index=1)
    own = [
        distribute.Setup("data-parallel", 4, num_workers=2, worker_index=i, per_process_data=True)
        for i in range(2)
    ]
    assert keras_slices.shard is None and keras_slices.process_batch(8) == 8
    assert [setup.shard for setup in own] == [(2, 0), (2, 1)]
    assert own[1].process_batch(8) == 4 and own[1].eval_pad_to(8) == 4
    filtered = tf.data.Dataset.range(5).filter(lambda i: i > 0)
    with pytest.raises(ValueError, match="eval_batches needs a dataset of known length"):
        own[0].eval_batches(filtered, 8)
    assert keras_slices.process_seed(7) == 7 and own[0].process_seed(None) is None
    seeds = [setup.process_seed(7) for setup in own]
    assert seeds[0] != seeds[1] and seeds == [setup.process_seed(7) for setup in own]
    assert all(0 <= seed < 2**31 for seed in seeds)
    one = distribute.Setup("data-parallel", 2, per_process_data=True)  # one process: no parts
    assert (one.shard, one.process_batch(8), one.across_processes(5, max)) == (None, 8, 5)
    assert one.eval_batches(tf.data.Dataset.range(5), 8) is None
