"""Throughput of a ConvMixer on the current backend, optionally beside timm in the same process,
and how far a mixed-precision policy moves its predictions.

Run through `keras-convmixer benchmark` (see `--help`). Figures are images per second after
warm-up: the median of several timed repeats, with the min and max, plus the first call's time
(tracing / compilation) and peak memory. Nothing here asserts a speed.
`keras-convmixer evaluate --compare-policy` reports `policy_agreement`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time

import keras
import numpy as np

from keras_convmixer.distribute import list_devices
from keras_convmixer.kernels import keep_freed_memory
from keras_convmixer.model import create_model, variant_from_name
from keras_convmixer.pretrained import assign, to_keras_arrays


@dataclasses.dataclass
class Result:
    name: str
    mode: str
    images_per_s: float
    min_images_per_s: float
    max_images_per_s: float
    first_call_s: float
    peak_memory_mb: float


def macs_per_image(variant: str, image_size: int) -> float:
    """Multiply-accumulates of one forward pass (convolutions and the head)."""
    v = variant_from_name(variant)
    side = image_size // v.patch_size
    positions = side * side
    stem = positions * v.dim * 3 * v.patch_size**2
    block = positions * v.dim * (v.kernel_size**2 + v.dim)
    return stem + v.depth * block + v.dim * v.classes


def measure(steps: dict, batch: int, warmup: int, repeats: int) -> list[Result]:
    """Times each `(path, mode) -> step` function, one mode after the other. Within a mode the
    repeats are interleaved (one step of each path in turn), so the paths share whatever the
    machine does meanwhile; inference runs on weights that stay as they are, as in serving,
    not on weights that a training step has just changed."""
    first, rates = {}, {}
    for mode in dict.fromkeys(mode for _, mode in steps):
        group = {key: step for key, step in steps.items() if key[1] == mode}
        for key, step in group.items():
            start = time.perf_counter()
            step()
            first[key] = time.perf_counter() - start
            rates[key] = []
        for _ in range(warmup):
            for step in group.values():
                step()
        for _ in range(repeats):
            for key, step in group.items():
                start = time.perf_counter()
                step()
                rates[key].append(batch / (time.perf_counter() - start))
    memory = peak_memory_mb()
    return [
        Result(name, mode, statistics.median(r), min(r), max(r), first[(name, mode)], memory)
        for (name, mode), r in rates.items()
    ]


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of `model`, same weights, whose layers compute under the dtype `policy`, except its
    output layers, which stay float32 as `ConvMixer` builds them under a mixed policy."""
    outputs = set(model.output_names)

    def clone(layer):
        config = layer.get_config()
        if layer.name not in outputs:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def policy_agreement(model: keras.Model, batches, policy: str) -> dict:
    """Top-1 accuracy of `model` in float32 and under the dtype `policy` (copies with its
    weights), the share of images whose top-1 class the two agree on, and the largest
    difference of their outputs. `batches`: (images, one-hot labels) pairs of NumPy arrays."""
    model, mixed = with_dtype_policy(model, "float32"), with_dtype_policy(model, policy)
    labels, top, mixed_top, difference = [], [], [], 0.0
    for images, one_hot in batches:
        reference = np.asarray(model.predict_on_batch(images), "float32")
        other = np.asarray(mixed.predict_on_batch(images), "float32")
        difference = max(difference, float(np.abs(other - reference).max()))
        labels.append(np.argmax(one_hot, axis=-1))
        top.append(reference.argmax(axis=-1))
        mixed_top.append(other.argmax(axis=-1))
    labels, top, mixed_top = (np.concatenate(a) for a in (labels, top, mixed_top))
    return {
        "policy": policy,
        "images": len(labels),
        "top1_float32": float(np.mean(top == labels)),
        "top1_policy": float(np.mean(mixed_top == labels)),
        "top1_agreement": float(np.mean(top == mixed_top)),
        "max_output_difference": difference,
    }


def peak_memory_mb() -> float:
    """Peak accelerator memory if the backend reports it, else the process's peak RSS."""
    backend = keras.backend.backend()
    try:
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated() / 2**20
        elif backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"] / 2**20
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    except Exception:  # memory statistics are best-effort
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def keras_model(variant: str, state_dict: dict | None = None) -> keras.Model:
    """The Keras ConvMixer to time, with the weights of a PyTorch `state_dict` if given (else
    Keras' initialisation)."""
    model = create_model(variant)
    if state_dict is not None:
        assign(model, to_keras_arrays(state_dict, variant_from_name(variant).depth))
    return model


def keras_steps(model: keras.Model, batch: int, image_size: int, modes, jit_compile) -> dict:
    """`{(path, mode): step}` for a Keras ConvMixer on the current backend."""
    classes = model.output_shape[-1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, image_size, image_size, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, classes, batch), classes)
    # On the backend's device once, as timm's batch is: from NumPy, every step would also time
    # the copy to a GPU (38 MB at batch 64, 224²).
    x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    name = f"keras/{keras.backend.backend()}"
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.CategoricalCrossentropy(),
        jit_compile=jit_compile,
    )

    def train_step():
        model.train_on_batch(x, y)
        # JAX dispatches asynchronously: reading a weight waits for the step to finish.
        keras.ops.convert_to_numpy(model.trainable_variables[0])

    steps = {(name, "inference"): lambda: model.predict_on_batch(x), (name, "train"): train_step}
    return {key: step for key, step in steps.items() if key[1] in modes}


def timm_convmixer(
    dim: int, depth: int, kernel_size: int, patch_size: int, activation: str, classes: int
):
    """timm's ConvMixer (the PyTorch reference) of this shape, GELU unless `activation` is
    `"relu"`."""
    import timm
    import torch

    act = torch.nn.ReLU if activation == "relu" else torch.nn.GELU
    return timm.models.convmixer.ConvMixer(
        dim, depth, kernel_size, patch_size, num_classes=classes, act_layer=act
    )


def timm_weights(variant: str, seed: int = 0) -> dict:
    """The state dict (NumPy arrays) of a freshly initialised timm ConvMixer of `variant`.

    `--compare-timm` gives these weights to both models, so both compute the same function on
    the same activations. (Keras' initialisation, zero biases and Glorot kernels, with
    untrained BatchNorm halves the activations in every block: about 1e-11 after 32 blocks.)
    """
    import torch

    torch.manual_seed(seed)
    return {k: t.numpy() for k, t in timm_model(variant).state_dict().items()}


def timm_model(variant: str, state_dict: dict | None = None):
    """timm's ConvMixer of `variant`, with the weights of `state_dict` (NumPy arrays) if
    given."""
    import torch

    v = variant_from_name(variant)
    model = timm_convmixer(v.dim, v.depth, v.kernel_size, v.patch_size, v.activation, v.classes)
    if state_dict is not None:
        model.load_state_dict({k: torch.from_numpy(a) for k, a in state_dict.items()})
    return model


def timm_steps(
    variant: str,
    batch: int,
    image_size: int,
    modes,
    policy: str,
    compile_model: bool,
    state_dict: dict | None = None,
) -> dict:
    """`{(path, mode): step}` for timm's ConvMixer with the same settings (channels_last
    memory format; autocast for mixed policies; `torch.compile` if asked), with the weights
    of `state_dict` if given."""
    import torch

    v = variant_from_name(variant)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm_model(variant, state_dict).to(device, memory_format=torch.channels_last)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, v.classes, (batch,), device=device)
    dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(policy)
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def autocast():
        return torch.autocast(device, dtype=dtype, enabled=dtype is not None)

    def infer():
        model.eval()
        with torch.inference_mode(), autocast():
            forward(x)
        sync()

    def train():
        model.train()
        with autocast():
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()

    name = "timm/torch.compile" if compile_model else "timm"
    steps = {(name, "inference"): infer, (name, "train"): train}
    return {key: step for key, step in steps.items() if key[1] in modes}


def write_json(report: dict, path: str | None) -> None:
    """Writes `report` as JSON to `path` (its folder made if need be); nothing if no path."""
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(report, f, indent=2, default=str)


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "devices": list_devices(),
        "xla_flags": os.environ.get("XLA_FLAGS"),  # set by `kernels.tune_xla_cpu` on JAX
        "malloc_keeps_freed_memory": keep_freed_memory(),  # as `import keras_convmixer` set it
    }
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return info
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    info["cpu"] = fields.get("model name")
    # The vector units that set this CPU's speed; this project's machines differ in them.
    flags = set(fields.get("flags", "").split())
    info["cpu_vector_flags"] = sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"})
    return info


def _columns(r: Result, macs: float | None, peak_tflops: float | None) -> str:
    line = (
        f"{r.name:<22} {r.mode:<10} {r.images_per_s:8.2f} {r.min_images_per_s:8.2f} "
        f"{r.max_images_per_s:8.2f} {r.first_call_s:8.2f} {r.peak_memory_mb:8.0f}"
    )
    if macs and peak_tflops:
        factor = 1 if r.mode == "inference" else 3  # forward + backward ≈ 3× forward
        line += f" {2 * macs * factor * r.images_per_s / (peak_tflops * 1e12):6.1%}"
    return line


def _header(mfu: bool) -> str:
    return (
        f"{'path':<22} {'mode':<10} {'img/s':>8} {'min':>8} {'max':>8} {'first s':>8} "
        f"{'peak MB':>8}" + (f" {'MFU':>6}" if mfu else "")
    )


def table(results: list[Result], macs: float | None, peak_tflops: float | None) -> str:
    lines = [_header(bool(macs and peak_tflops))]
    lines += [_columns(r, macs, peak_tflops) for r in results]
    return "\n".join(lines)


def run_per_backend(command: list[str], backends: tuple[str, ...]) -> list[dict]:
    """Runs the benchmark command line `command` (without `--backend`) once per backend, one
    after the other, each in a process of its own started with `KERAS_BACKEND` set; their JSON
    reports, in order. Each process gets `--json` last, so a `--json` in `command` (the user's
    file for the combined report) is overridden there, as argparse keeps an option's last value."""
    reports = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in backends:
            path = os.path.join(folder, f"{backend}.json")
            child = [*command, "--backend", backend, "--json", path]
            done = subprocess.run(child, env={**os.environ, "KERAS_BACKEND": backend})
            if done.returncode != 0:
                raise ChildProcessError(
                    f"the benchmark on {backend} exited with status {done.returncode}"
                )
            with open(path) as f:
                reports.append(json.load(f))
    return reports


def combined_table(reports: list[dict]) -> str:
    """One table of per-backend reports, each row with its backend; each Keras path also as a
    multiple of timm's speed in the same process and mode, where timm ran."""
    peak_tflops = reports[0]["settings"].get("peak_tflops")
    macs = reports[0]["gmac_per_image"] * 1e9
    lines = [f"{'backend':<11} " + _header(bool(peak_tflops)) + f" {'× timm':>7}"]
    for report in reports:
        backend = report["machine"]["backend"]
        results = [Result(**r) for r in report["results"]]
        timm = {r.mode: r.images_per_s for r in results if r.name == "timm"}
        for r in results:
            reference = timm.get(r.mode) if r.name.startswith("keras/") else None
            ratio = f"{r.images_per_s / reference:6.2f}×" if reference else ""
            lines.append(f"{backend:<11} {_columns(r, macs, peak_tflops)} {ratio:>7}".rstrip())
    return "\n".join(lines)
