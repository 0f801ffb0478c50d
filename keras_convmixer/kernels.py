"""The operations of a ConvMixer block in the formulation each backend runs fastest.

Every formulation computes the same function; they differ only in floating-point summation
order (well under 1e-5 in float32, which the tests check).

Depthwise convolution (`depthwise_conv2d`):

* `"native"`: the backend's grouped convolution (`keras.ops.depthwise_conv`). Fast in
  TensorFlow's oneDNN kernels and on GPUs. On PyTorch with channels-last tensors it calls
  `torch.nn.functional.conv2d` on a channels-last *view* of the input (`_torch_conv2d`), so
  no transposed copy is made (Keras' generic path copies the input and output of every
  convolution: 19% of the forward time of ConvMixer-768/32, measured). In float32 training
  on a CPU, on both, the kernel's gradient is computed as a depthwise convolution of its own
  (the input's planes convolved with the gradient's), 2-5× faster than the backends' own
  (`_torch_depthwise_conv`, `_tf_depthwise_conv`).
* `"shift"`: k² shifted multiply-adds over a padded input. XLA's CPU backend runs grouped
  convolutions as a generic loop (measured on 2 cores: 645 ms forward for one 7×7 layer of
  ConvMixer-768/32 at batch 8, against 38-57 ms for this form, which XLA fuses into
  elementwise loops), so this is the form to use whenever XLA compiles for a CPU. On JAX its
  gradient is written out (`_shift_add_jax`): bounded memory, and the weight gradient as a
  loop over rows of fused window sums (ConvMixer-768/32 training step 0.32 → 0.58 images/s
  on 2 cores). On JAX, channels-last sums run in blocks of 16 channels, which keeps a block's
  weights in L1 (`_shift_add_row_blocked`), and in inference a block's whole first half
  (sum, activation, BatchNorm, residual) is one loop of that form (`depthwise_residual`).

`"auto"` picks `"shift"` where XLA compiles for a CPU (the JAX backend on CPU, and TensorFlow
inside an XLA-compiled function on CPU), and `"native"` everywhere else.

Pointwise convolution and its activation (`pointwise_conv2d`): for channels-last tensors, a
matmul over the channel axis (faster than XLA's 1×1 convolution on JAX; on TensorFlow written
as MatMul, BiasAdd, GELU, which its graph optimizer fuses into one oneDNN call), and on PyTorch
oneDNN's 1×1 convolution on a channels-last view (faster than `addmm`); the 1×1 convolution
for channels-first.

The stem's patch convolution (`patch_conv2d`): on PyTorch, a convolution on a channels-last
view as above; elsewhere `keras.ops.conv`.

All three take the activation that follows them. On PyTorch in inference on a CPU, oneDNN
applies it as it writes the convolution's output, with the weight reordered into oneDNN's
layout once and kept until the variable changes (`_torch_conv2d`), and the block's residual
is added into its BatchNorm's output (`add_residual`). ConvMixer-768/32 at batch 8, against
timm's in the same process (2026-11-25): float32 inference 0.97× → 1.04-1.05×,
`mixed_bfloat16` 0.96-0.97× → 0.98-1.00× (its weights go through Keras' autocast, so they
are not kept reordered).

`import keras_convmixer` has glibc's malloc keep freed memory for reuse (`keep_freed_memory`):
XLA's CPU runtime otherwise maps a step's temporaries from the OS anew at every step.

On JAX, `tune_xla_cpu` keeps XLA's CPU backend from handing float32 matmuls to YNNPACK
(slower there than XLA's own kernel) and, on CPUs with AVX-512, has XLA's own loops use 512-bit
vectors (the shifted sums run almost twice as fast); the model builder calls it.

Under mixed precision, the shifted sums accumulate in float32 and the block rounds to 16 bits
once, after the activation, BatchNorm and residual that follow them (`cast`: on JAX on a CPU,
to bfloat16 as integer operations that XLA vectorises); JAX's 16-bit matmuls ask XLA for a
float32 result, which is what reaches its native bfloat16 kernel.

The exact GELU (`fast_activation`): on JAX on a CPU, x · (1 + erf(x / √2)) / 2 with erf as a
rational function, which XLA fuses into the loops around it; `jax.nn.gelu` computes erfc, which
XLA's CPU backend writes out in three loops (ConvMixer-1536/20 inference 1.62-1.65 → 1.79-1.80
images/s on 2 cores).

Global average pooling (`global_average_pool`): on JAX on a CPU, a product with the averaging
weights rather than a reduction, which XLA's YNNPACK fusion would merge with the last block.

BatchNorm (`batch_norm`): in inference one pass rather than Keras' three: the backend's fused
kernel on TensorFlow and PyTorch, elsewhere the moving statistics folded into one scale and one
shift per channel (XLA fuses it into its neighbours). In float32 training on TensorFlow and
PyTorch, the fused training kernels with Keras' update of the moving statistics; on JAX on a
CPU, a training BatchNorm with its gradient written out (`_jax_training`), whose every
reduction reads tensors that are already in memory.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os

import keras
from keras import ops

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VECTOR_WIDTH_FLAG = "--xla_cpu_prefer_vector_width"


def tune_xla_cpu(compute_dtype: str) -> list[str]:
    """Sets two of XLA's CPU flags for JAX with jaxlib 0.10 (where they were measured) and
    returns the ones it set.

    * `--xla_cpu_experimental_ynn_fusion_type`: jaxlib 0.10's default gives YNNPACK float32
      matmuls, which it runs slower than XLA's own (Eigen) kernel: ConvMixer-768/32 at batch 8
      on 2 cores, inference 3.14 → 2.57 s and a training step 18.4 → 15.7 s with only
      reductions in YNNPACK. 16-bit matmuls are the other way round (Eigen has no native
      bfloat16 kernel), so those keep YNNPACK's matmul.
    * `--xla_cpu_prefer_vector_width=512`, on CPUs with AVX-512 (XLA's default is 256 bits):
      the fused shifted sums of a 7×7 ConvMixer-768 layer at batch 8 take 13 against 24 ms;
      ConvMixer-768/32 inference 3.03–3.10 → 3.51–3.62 images/s, training 0.48 → 0.51.

    The flags are read once, when JAX starts its backend, so this does nothing once JAX has
    run anything; a flag that `XLA_FLAGS` already names is left as set there (set it there to
    choose otherwise). `ConvMixer(...)` calls this with the dtype policy's compute dtype.
    """
    if keras.backend.backend() != "jax":
        return []
    import jaxlib

    # An unknown flag in XLA_FLAGS aborts the process: only on the version measured (whose
    # private module tells whether the backend has started).
    if not jaxlib.__version__.startswith("0.10."):
        return []
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return []
    flags = {
        YNN_FLAG: "individual_dot,reduce" if compute_dtype in ("bfloat16", "float16") else "reduce"
    }
    if _has_avx512():
        flags[VECTOR_WIDTH_FLAG] = "512"
    current = os.environ.get("XLA_FLAGS", "")
    added = [f"{name}={value}" for name, value in flags.items() if name not in current]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def _has_avx512() -> bool:
    """Whether this CPU has AVX-512 (read from Linux's /proc/cpuinfo; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and " avx512f" in line for line in cpuinfo)
    except OSError:
        return False


MALLOC_VARIABLES = (
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
)


@functools.cache
def keep_freed_memory() -> bool:
    """Has glibc's malloc keep the memory this process frees for reuse, as TensorFlow's BFC and
    PyTorch's CUDA caching allocators do, rather than hand it back to the OS; returns whether it
    did (the same answer on every call). `import keras_convmixer` calls it. The process then
    holds on to its peak memory, and that peak is higher: a training step of ConvMixer-512/8 at
    batch 16 peaked 1 GB higher on PyTorch (2.6 against 1.7 GB) and twice as high on JAX.

    XLA's CPU runtime allocates a step's temporaries as one block (1.4 GB for a training step of
    ConvMixer-768/8 at batch 8) from one of its worker threads. glibc maps such a block from the
    OS at every step and unmaps it after: 344,592 page faults a step, which cost more the longer
    the pages were free (0.6 s of system time back to back, 2 s after a step of another model).
    Three settings keep it: one arena (a worker thread's own arena maps every large block),
    no separately mapped blocks (glibc maps every block over 32 MB), no trimming. The block is
    then reused without faults: ConvMixer-768/32 training steps beside timm's (`cpu_vs_timm.py
    --mode train`) 0.63 → 0.89 images/s, timm's own 0.94 → 1.06; PyTorch's inference, which
    faulted 120,000-260,000 times a step, 0.60-0.80 → 0.49-0.51 s for ConvMixer-768/8.

    Only on Linux with glibc, and only if no `MALLOC_*` variable (`MALLOC_VARIABLES`) or
    `glibc.malloc` tunable is set: set one (e.g. `MALLOC_ARENA_MAX=8`) to keep glibc's own
    behaviour. Threads that have allocated already keep their arenas.
    """
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return False
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if not glibc or "glibc.malloc" in tunables or any(v in os.environ for v in MALLOC_VARIABLES):
        return False
    trim_threshold, mmap_max, arena_max = -1, -4, -8  # mallopt's option numbers (malloc.h)
    # A trim threshold of -1 is SIZE_MAX to glibc: never trim.
    settings = ((arena_max, 1), (mmap_max, 0), (trim_threshold, -1))
    mallopt = ctypes.CDLL(None).mallopt
    return all([mallopt(option, value) == 1 for option, value in settings])


def same_padding(kernel_size: int) -> tuple[int, int]:
    """(before, after) padding of a stride-1 "same" convolution; the extra pixel goes after."""
    before = (kernel_size - 1) // 2
    return before, kernel_size - 1 - before


def _xla_on_cpu() -> bool:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "tensorflow":
        return _tf_in_xla() and not _tf_has_gpu()
    return False


def _jax_on_cpu() -> bool:
    return keras.backend.backend() == "jax" and _xla_on_cpu()


def _tf_in_xla() -> bool:
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _tf_has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def _tf_kernels_on_cpu() -> bool:
    """Whether TensorFlow runs its own CPU kernels here: outside XLA, with no GPU."""
    return not _tf_in_xla() and not _tf_has_gpu()


def _nchw_unsupported(data_format: str) -> bool:
    """Whether a channels-first convolution has to run as channels-last: on TensorFlow on a
    CPU outside XLA. TensorFlow runs NCHW convolutions on a CPU only through oneDNN, which it
    turns on only on some CPUs (on an AVX2 EPYC it is off, and Conv2D says it "only supports
    the NHWC tensor format on the CPU")."""
    if data_format != "channels_first" or keras.backend.backend() != "tensorflow":
        return False
    return _tf_kernels_on_cpu()


def _channels_last(conv, x, *args, **kwargs):
    """`conv(x, *args, data_format="channels_first")` computed in channels-last layout."""
    out = conv(ops.transpose(x, (0, 2, 3, 1)), *args, data_format="channels_last", **kwargs)
    return ops.transpose(out, (0, 3, 1, 2))


def _pad_spatial(x, padding: tuple[int, int], data_format: str):
    pad = [[0, 0]] * 4
    for axis in (1, 2) if data_format == "channels_last" else (2, 3):
        pad[axis] = list(padding)
    return ops.pad(x, pad)


def _windows(x, k: int, padding: tuple[int, int], data_format: str):
    """The k² shifted views of `x` padded by `padding`, as ((i, j), view) pairs."""
    padded = _pad_spatial(x, padding, data_format)
    for i in range(k):
        for j in range(k):
            stop_i, stop_j = i - (k - 1) or None, j - (k - 1) or None
            if data_format == "channels_last":
                yield (i, j), padded[:, i:stop_i, j:stop_j, :]
            else:
                yield (i, j), padded[:, :, i:stop_i, j:stop_j]


def _channel_weights(weights, data_format: str):
    """(k, k, C) weights shaped to broadcast against one window."""
    return weights if data_format == "channels_last" else weights[:, :, :, None, None]


def _shift_add(x, weights, data_format: str, padding: tuple[int, int]):
    """Σ_ij window_ij(x) · weights[i, j]; `weights` is (k, k, C)."""
    k = weights.shape[0]
    weights = _channel_weights(weights, data_format)
    out = None
    for (i, j), window in _windows(x, k, padding, data_format):
        term = ops.multiply(window, weights[i, j])  # promotes 16-bit windows to float32
        out = term if out is None else out + term
    return out


def _shift_add_jax(x, weights, data_format: str):
    """`_shift_add` with its gradient written out for JAX.

    With out[h] = Σ_i x[h + i - before] w[i]: dx is the same sum over the upstream gradient
    with the kernel flipped and the paddings swapped, and dw[i] = Σ_h x_padded[h + i] g[h]
    (`_depthwise_weight_grad`). Differentiating the unrolled k² sum instead made XLA plan 44 GB
    of buffers for a ConvMixer-768/32 training step at batch 8.

    Channels-last sums run in a row-blocked layout (`_shift_add_row_blocked`), which writes
    the sum out once. Channels-first ones, under differentiation, are made the result of a
    `_materialised` conditional: XLA would otherwise recompute the forward sum (all k² terms)
    inside each of the activation's forward and backward fusions (a ConvMixer-768/32 step took
    7.95 s that way against 7.54 with the conditional; `lax.optimization_barrier` on the sum
    does not stop the recomputation).
    """
    import jax

    padding = same_padding(weights.shape[0])

    def shift_add(x, w, padding=padding):
        if data_format == "channels_last":
            return _shift_add_row_blocked(x, w, padding)
        return _shift_add(x, w, data_format, padding)

    @jax.custom_vjp
    def conv(x, w):
        return shift_add(x, w)

    def forward(x, w):
        if data_format == "channels_last":
            return shift_add(x, w), (x, w)
        return _materialised(shift_add, x, w), (x, w)

    def backward(saved, grad):
        x, w = saved
        dx = shift_add(grad, w[::-1, ::-1], padding[::-1]).astype(x.dtype)
        return dx, _depthwise_weight_grad(x, grad, w.shape[0], data_format).astype(w.dtype)

    conv.defvjp(forward, backward)
    return conv(x, weights)


CHANNEL_BLOCK = 16  # one 512-bit vector of float32


def _shift_add_row_blocked(x, weights, padding: tuple[int, int], epilogue=None, vectors=()):
    """`_shift_add` of a channels-last `x` on JAX, computed in a row-blocked layout:
    (N, H, C / 16, W, 16), each image row's channels in blocks of 16 (zero channels pad the
    last block). `epilogue(sum, x, *vectors)`, if given, runs in the sum's loop, on `x`'s
    pixels and the per-channel `vectors` in the same layout.

    XLA's loop over a channels-last sum loads 16 channels' k² weights for every output vector,
    and for all channels those are k² · C floats (150 KB for 7×7 and 768 channels), read from
    L2. Looping over one block's row at a time, XLA reads them from L1: the sum of a 7×7
    ConvMixer-768 layer at batch 8 took 6 against 13 ms on 2 cores. The layout is written
    with the padding in one pass (2.6 ms, against 1.3 for the padding alone), and read back
    into channels-last by a transpose of its own (1.5 ms; fused into the activation that
    follows, 6). Each pass is `_materialised`, or XLA fuses it into its consumer, which then
    reads it in its own order; with an epilogue, the layout pass is only the sum's operand, so
    XLA fuses the ops that made `x` (the previous block's last BatchNorm) into it. The layout
    holds float32 whatever `x`'s precision: from 16-bit rows XLA converted the whole padded
    input in a pass of its own before the loop.
    """
    import jax.numpy as jnp

    k = weights.shape[0]
    batch, height, width, channels = x.shape

    def blocked(x):
        """The last axis, C, as (⌈C/16⌉, 1, 16), zero channels padding the last block."""
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, -channels % CHANNEL_BLOCK)])
        return x.reshape(*x.shape[:-1], -1, 1, CHANNEL_BLOCK)

    def to_row_blocks(x):
        # Padded after the transpose: with a transpose last, XLA lays the result out as its
        # operand, channels-last.
        x = blocked(x.astype(jnp.float32))[..., 0, :].swapaxes(2, 3)
        return jnp.pad(x, ((0, 0), padding, (0, 0), padding, (0, 0)))

    def shift_add(rows, weights, *vectors):
        out = None
        for i in range(k):
            for j in range(k):
                term = rows[:, i : i + height, :, j : j + width, :] * weights[i, j]
                out = term if out is None else out + term
        if epilogue is None:
            return out
        before = padding[0]
        pixels = rows[:, before : before + height, :, before : before + width, :]
        return epilogue(out, pixels, *vectors)

    def to_channels_last(out):
        out = out.swapaxes(2, 3).reshape(batch, height, width, -1)
        return out[..., :channels]

    vectors = [blocked(v) for v in (weights, *vectors)]
    if epilogue is None:
        rows = _materialised(to_row_blocks, x)
        return _materialised(to_channels_last, _materialised(shift_add, rows, *vectors))
    # The layout pass as the sum's operand: XLA fuses the ops that made `x` into it.
    return to_channels_last(_materialised(shift_add, to_row_blocks(x), *vectors))


def depthwise_residual(x, kernel, bias, activation, scale, shift):
    """`x + activation(depthwise_conv2d(x, kernel, bias)) · scale + shift` (a block's first
    half, its BatchNorm folded into `scale` and `shift`) for a channels-last `x` on JAX,
    computed in float32 in one loop of the row-blocked sum (`_shift_add_row_blocked`) and
    rounded to `x`'s precision there (`cast`): ConvMixer-768/32 inference at batch 8 on 2
    cores 3.93-4.00 → 4.28-4.33 images/s (alternating processes). Its gradient is the
    unfused form's.
    """
    import jax

    weights = ops.cast(kernel[:, :, :, 0], "float32")
    vectors = [ops.cast(v, "float32") for v in (bias, scale, shift)]
    padding = same_padding(weights.shape[0])
    dtype = x.dtype

    def epilogue(out, x, bias, scale, shift):
        return cast(activation(out + bias) * scale + shift + x, dtype)

    def unfused(x, weights, *vectors):
        return epilogue(_shift_add_jax(x, weights, "channels_last"), x, *vectors)

    @jax.custom_vjp
    def fused(x, weights, *vectors):
        return _shift_add_row_blocked(x, weights, padding, epilogue, vectors)

    def forward(*args):
        return fused(*args), args

    def backward(args, grad):
        return jax.vjp(unfused, *args)[1](grad)

    fused.defvjp(forward, backward)
    return fused(x, weights, *vectors)


def _materialised(f, *args):
    """`f(*args)` on JAX, written out as a buffer of its own: the result of a `lax.cond` whose
    two branches are both `f`, on a predicate that XLA cannot fold."""
    import jax.numpy as jnp
    from jax import lax

    opaque_true = lax.optimization_barrier(jnp.bool_(True))
    return lax.cond(opaque_true, f, f, *args)


def _depthwise_weight_grad(x, grad, k: int, data_format: str):
    """dw[i, j, c] = Σ_{n,h,w} x_padded[n, h+i, w+j, c] · grad[n, h, w, c] on JAX.

    A loop over the gradient's rows h; each step adds Σ_w rows[:, :, w:w+k] · grad[:, h, w]
    (rows: the k padded input rows h..h+k-1), the k × k window sums of one row written out
    over w, which XLA fuses into one loop vectorised over the channels. 38 ms for one 7×7
    layer of ConvMixer-768/32 at batch 8 on 2 cores, against 157 for banded matrix products
    and 410 for k² separate reductions.
    """
    import jax.numpy as jnp
    from jax import lax

    if data_format == "channels_first":
        x, grad = jnp.moveaxis(x, 1, -1), jnp.moveaxis(grad, 1, -1)
    padded = _pad_spatial(x.astype(grad.dtype), same_padding(k), "channels_last")
    batch, height, width, channels = grad.shape

    def add_row(h, total):
        rows = lax.dynamic_slice_in_dim(padded, h, k, axis=1)  # (N, k, W + k - 1, C)
        row = lax.dynamic_slice_in_dim(grad, h, 1, axis=1)  # (N, 1, W, C)
        for w in range(width):
            total = total + rows[:, :, w : w + k, :] * row[:, :, w : w + 1, :]
        return total

    total = jnp.zeros((batch, k, k, channels), jnp.float32)
    return lax.fori_loop(0, height, add_row, total).sum(axis=0)


def _resolved(impl: str) -> str:
    """The depthwise convolution's form that `impl` ("auto", "native" or "shift") runs here."""
    if impl == "auto":
        return "shift" if _xla_on_cpu() else "native"
    return impl


def fuses_depthwise_residual(impl: str, data_format: str) -> bool:
    """Whether `depthwise_residual` computes a block's first half in inference: the shift
    form of a channels-last block on JAX."""
    backend_fits = keras.backend.backend() == "jax" and data_format == "channels_last"
    return backend_fits and _resolved(impl) == "shift"


def depthwise_conv2d(
    x, kernel, bias, activation, data_format: str = "channels_last", impl: str = "auto"
):
    """`activation(stride-1 "same" depthwise convolution + bias)`.

    Args:
        x: 4D tensor in `data_format`.
        kernel: `(k, k, channels, 1)`, the layout of `keras.layers.DepthwiseConv2D`.
        bias: `(channels,)`.
        activation: callable.
        data_format: `"channels_last"` or `"channels_first"`.
        impl: `"auto"`, `"native"` or `"shift"` (see the module docstring).

    Returns:
        The `"native"` form: a tensor of `x`'s dtype. The `"shift"` form: float32 whatever
        `x`'s precision, for the caller to round once after the ops that follow.
    """
    if _resolved(impl) == "shift":
        # The k² terms are summed in float32 whatever the input's precision: XLA's CPU backend
        # computes 16-bit floats through float32 anyway, and rounding each partial sum to 16
        # bits cost both time (69 against 32 ms a ConvMixer-768 layer) and digits.
        # The result stays float32 too: rounding it, then the activation, BatchNorm and
        # residual each to 16 bits, took XLA 42 against 28 ms for that fused loop.
        weights = ops.cast(kernel[:, :, :, 0], "float32")
        if keras.backend.backend() == "jax":
            out = _shift_add_jax(x, weights, data_format)
        else:
            out = _shift_add(x, weights, data_format, same_padding(kernel.shape[0]))
        return activation(out + _channel_bias(ops.cast(bias, "float32"), data_format))
    if _nchw_unsupported(data_format):
        return _channels_last(depthwise_conv2d, x, kernel, bias, activation, impl="native")
    if data_format == "channels_last" and keras.backend.backend() == "torch":
        padding = same_padding(kernel.shape[0])
        return _torch_conv2d(x, kernel, bias, activation, padding, depthwise=True)
    kernel = ops.cast(kernel, x.dtype)
    bias = ops.cast(bias, x.dtype)
    if data_format == "channels_last" and _tf_depthwise_grad_applies(x):
        return activation(_tf_depthwise_conv(x, kernel) + bias)
    out = ops.depthwise_conv(x, kernel, strides=1, padding="same", data_format=data_format)
    return activation(out + _channel_bias(bias, data_format))


def _tf_depthwise_grad_applies(x) -> bool:
    """Whether `_tf_depthwise_conv` computes the depthwise convolution: float32 on TensorFlow
    on a CPU, outside XLA."""
    if keras.backend.backend() != "tensorflow" or x.dtype.name != "float32":
        return False
    return _tf_kernels_on_cpu()


def _tf_depthwise_conv(x, kernel):
    """TensorFlow's stride-1 "same" depthwise convolution of an NHWC tensor, whose kernel
    gradient is a depthwise convolution of its own (see `_torch_depthwise_conv`): 24 against
    55 ms for TensorFlow's own on one 7×7 layer of ConvMixer-768 at batch 8 on 2 cores."""
    import tensorflow as tf

    k = kernel.shape[0]
    padding = [[0, 0], same_padding(k), same_padding(k), [0, 0]]

    @tf.custom_gradient
    def convolve(x, kernel):
        def gradient(upstream):
            grad_x = tf.nn.depthwise_conv2d_backprop_input(
                tf.shape(x), kernel, upstream, [1, 1, 1, 1], "SAME"
            )
            # Planes (n, c) side by side as channels of one image; the kernels are the
            # gradient's planes.
            height, width, channels = tf.unstack(tf.shape(x)[1:])
            planes = tf.reshape(tf.transpose(x, (1, 2, 0, 3)), (1, height, width, -1))
            kernels = tf.reshape(tf.transpose(upstream, (1, 2, 0, 3)), (height, width, -1, 1))
            sums = tf.nn.depthwise_conv2d(planes, kernels, [1, 1, 1, 1], padding)
            grad_kernel = tf.reduce_sum(tf.reshape(sums, (k, k, -1, channels)), axis=2)
            return grad_x, grad_kernel[..., None]

        # "SAME" pads as `same_padding` does. (Explicit padding here crashes TensorFlow 2.21's
        # graph optimizer when it fuses the convolution with the bias and ReLU that follow.)
        return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME"), gradient

    return convolve(x, kernel)


def add_residual(out, x):
    """`out + x`, where `out` is a tensor the caller has just made and no one else holds. On
    PyTorch outside autograd the sum is written into `out` rather than a new tensor: 2.9
    against 3.6 ms for a ConvMixer-768 BatchNorm and residual at batch 8."""
    if keras.backend.backend() == "torch":
        import torch

        if not torch.is_grad_enabled() and torch.promote_types(out.dtype, x.dtype) == out.dtype:
            return out.add_(x)
    return ops.add(out, x)


def cast(x, dtype):
    """`ops.cast(x, dtype)`. From float32 to bfloat16 on JAX on a CPU, the rounding is written
    as integer operations on the bits (round to nearest, ties to even; NaN stays NaN), the
    same bits as XLA's conversion: XLA's CPU backend converts to bfloat16 one element at a
    time, and that kept the rest of the fused depthwise loop of a ConvMixer-768 layer from
    being vectorised (26 against 19 ms at batch 8 on 2 cores)."""
    if (
        keras.backend.standardize_dtype(x.dtype) != "float32"
        or keras.backend.standardize_dtype(dtype) != "bfloat16"
        or not _jax_on_cpu()
    ):
        return ops.cast(x, dtype)
    return _bfloat16_by_bits()(x)


@functools.cache
def _bfloat16_by_bits():
    """float32 → bfloat16 as integer operations (JAX), differentiable as a cast."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    @jax.custom_jvp
    def round_bits(x):
        bits = lax.bitcast_convert_type(x, jnp.uint32)
        rounded = (bits + jnp.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16
        rounded = jnp.where(jnp.isnan(x), jnp.uint32(0x7FC0), rounded)
        return lax.bitcast_convert_type(rounded.astype(jnp.uint16), jnp.bfloat16)

    @round_bits.defjvp
    def _(primals, tangents):
        return round_bits(primals[0]), tangents[0].astype(jnp.bfloat16)

    return round_bits


# erf(x) ≈ x · P(x²) / Q(x²) on [-4, 4], coefficients lowest power first: a rational fit
# made for this package (weighted least squares iterated towards the smallest largest relative
# error against mpmath's erf, in float64): relative error 2.5e-8 as fitted, at most 7 float32
# ulps as evaluated here in float32 (2e7 points on [-6, 6] against scipy's erf).
ERF_NUMERATOR = (1.12837911, 0.193542406, 0.0531014018, 0.0038832319, 0.000284563634, 1.98680618e-6)
ERF_DENOMINATOR = (1.0, 0.504855037, 0.115348905, 0.0152070262, 0.00118554442, 3.74203046e-5)


def fast_activation(activation):
    """`activation` in the form this backend computes fastest: the same function, to float32
    rounding. On JAX on a CPU, Keras' exact GELU becomes `_gelu_erf`: `jax.nn.gelu` computes
    it through erfc, which XLA's CPU backend expands into two branches, written out in three
    loops after each matmul and computed again in each consumer."""
    if activation is keras.activations.gelu and _jax_on_cpu():
        return _gelu_erf()
    return activation


def _erf(x):
    """erf of a float32 tensor as the rational function above (plain multiplies, adds and one
    divide, which XLA fuses and every exporter reads); exactly ±1 beyond |x| = 4."""
    import jax.numpy as jnp

    x = jnp.clip(x, -4.0, 4.0)
    square = x * x
    numerator, denominator = (
        functools.reduce(lambda total, c: total * square + c, reversed(coefficients))
        for coefficients in (ERF_NUMERATOR, ERF_DENOMINATOR)
    )
    return jnp.clip(x * numerator / denominator, -1.0, 1.0)


@functools.cache
def _gelu_erf():
    """The exact GELU, x · Φ(x) with Φ(x) = (1 + erf(x / √2)) / 2, as PyTorch writes it, in
    float32 whatever the input's precision, with the exact derivative Φ(x) + x · φ(x).
    `lax.erf` would do, but it lowers to a StableHLO composite that TensorFlow 2.21 cannot
    read, so a model using it no longer exports as a SavedModel."""
    import jax
    import jax.numpy as jnp

    def cdf(x):
        return 0.5 + 0.5 * _erf(x * math.sqrt(0.5))

    @jax.custom_jvp
    def gelu(x):
        wide = x.astype(jnp.float32)
        return (wide * cdf(wide)).astype(x.dtype)

    @gelu.defjvp
    def _(primals, tangents):
        x, tangent = primals[0], tangents[0]
        wide = x.astype(jnp.float32)
        probability = cdf(wide)
        density = jnp.exp(-0.5 * wide * wide) / math.sqrt(2 * math.pi)
        slope = probability + wide * density
        return (wide * probability).astype(x.dtype), (slope * tangent).astype(tangent.dtype)

    return gelu


def global_average_pool(x, data_format: str = "channels_last", keepdims: bool = False):
    """The mean over the spatial axes. Where XLA compiles for a CPU on JAX, a product with the
    averaging weights: as a reduction, XLA's YNNPACK fusion takes it together with everything
    before it up to the last block's shifted sums (materialising the windows, and running the
    1×1 convolution in YNNPACK's slower float32 matmul): ConvMixer-768 inference at batch 8 on
    2 cores spent 180-220 ms a batch outside its blocks, against 40 ms with the product."""
    spatial = (1, 2) if data_format == "channels_last" else (2, 3)
    if not _jax_on_cpu():
        return ops.mean(x, axis=spatial, keepdims=keepdims)
    height, width = x.shape[spatial[0]], x.shape[spatial[1]]
    # In float32 whatever the input's precision, like the mean: 1/(H·W) in bfloat16 is off
    # by up to 0.2% when H·W is not a power of two.
    weights = ops.full((height, width), 1.0 / (height * width), "float32")
    spec = "nhwc,hw->nc" if spatial == (1, 2) else "nchw,hw->nc"
    mean = ops.cast(ops.einsum(spec, ops.cast(x, "float32"), weights), x.dtype)
    return ops.expand_dims(mean, spatial) if keepdims else mean


def _channel_bias(bias, data_format: str):
    return ops.reshape(bias, (-1, 1, 1)) if data_format == "channels_first" else bias


def _torch_conv2d(
    x, kernel, bias, activation, padding=(0, 0), stride: int = 1, depthwise: bool = False
):
    """`activation(convolution + bias)` of a channels-last (NHWC) PyTorch tensor, padded
    (before, after) on both spatial axes; `kernel` in Keras' layout, `(k, k, in, out)`, or
    `(k, k, channels, 1)` if `depthwise`.

    It runs on the NCHW view with channels-last strides: oneDNN takes it without a copy and
    returns channels-last memory, so the permute back is a view too. In inference on a CPU
    (`_onednn_activation`), oneDNN applies the activation as it writes the output, rather than
    in a pass of its own, with the weight in its own layout (`_onednn_weight`)."""
    import torch
    from torch.nn import functional

    x = x.permute(0, 3, 1, 2)
    before, after = padding
    if before != after:
        x, before = functional.pad(x, (before, after, before, after)), 0
    groups = x.shape[1] if depthwise else 1
    bias = ops.cast(bias, x.dtype)
    fused = _onednn_activation(activation, x)
    if fused:
        geometry = ([before] * 2, [stride] * 2, [1, 1], groups)
        weight = _onednn_weight(kernel, x, depthwise, geometry)
        out = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, *fused)
        return out.permute(0, 2, 3, 1)
    weight = _torch_weight(ops.cast(kernel, x.dtype), depthwise)
    if depthwise and _torch_depthwise_grad_applies(x):
        out = _torch_depthwise_conv().apply(x, weight, bias, before)
    else:
        out = functional.conv2d(x, weight, bias, stride, before, groups=groups)
    return activation(out.permute(0, 2, 3, 1))


def _torch_depthwise_grad_applies(x) -> bool:
    """Whether `_torch_depthwise_conv` computes the depthwise convolution: in float32 autograd
    on a CPU, outside `torch.compile`."""
    import torch

    on_cpu = x.device.type == "cpu" and x.dtype == torch.float32
    return on_cpu and torch.is_grad_enabled() and not torch.compiler.is_compiling()


@functools.cache
def _torch_depthwise_conv():
    """A stride-1 depthwise convolution of an NCHW tensor, `apply(x, weight, bias, padding)`,
    whose weight gradient is a convolution of its own.

    dw[c, i, j] = Σ_n Σ_{h,w} x[n, c, h+i, w+j] · grad[n, c, h, w] is, for each (n, c), the
    plane x[n, c] convolved with the plane grad[n, c] as its kernel: one depthwise convolution
    over N·C channels, summed over n. oneDNN's own depthwise weight gradient is 2-5× slower on
    a CPU: 47 against 19 ms for one 7×7 layer of ConvMixer-768 at batch 8, 167 against 54 ms
    for a 9×9 layer of ConvMixer-1536 (2 cores, both counting the copies into NCHW order)."""
    import torch
    from torch.nn import functional

    class DepthwiseConv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, padding: int):
            ctx.save_for_backward(x, weight)
            ctx.padding = padding
            return functional.conv2d(x, weight, bias, 1, padding, groups=x.shape[1])

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            batch, channels, height, width = x.shape
            grad_x = grad_weight = grad_bias = None
            if ctx.needs_input_grad[0]:
                # With `x` itself (not `torch.nn.grad.conv2d_input`'s stand-in), the gradient
                # keeps x's channels-last memory, which the sums it meets downstream expect.
                geometry = ([1, 1], [ctx.padding] * 2, [1, 1], False, [0, 0], channels)
                grad_x = torch.ops.aten.convolution_backward(
                    grad, x, weight, None, *geometry, [True, False, False]
                )[0]
            if ctx.needs_input_grad[1]:
                planes = x.contiguous().view(1, batch * channels, height, width)
                kernels = grad.contiguous().view(batch * channels, 1, *grad.shape[2:])
                sums = functional.conv2d(planes, kernels, None, 1, ctx.padding, groups=len(kernels))
                grad_weight = sums.view(batch, *weight.shape).sum(0)
            if ctx.needs_input_grad[2]:
                grad_bias = grad.sum((0, 2, 3))
            return grad_x, grad_weight, grad_bias, None

    return DepthwiseConv


def _torch_weight(kernel, depthwise: bool):
    """A Keras convolution kernel as a view in PyTorch's layout, `(out, in, k, k)`."""
    return kernel.permute(2, 3, 0, 1) if depthwise else kernel.permute(3, 2, 0, 1)


def _onednn_activation(activation, x) -> tuple | None:
    """The arguments that have oneDNN's convolution apply `activation` itself
    (`torch.ops.mkldnn._convolution_pointwise`, the op PyTorch's compiler emits for this
    pattern), or None. For ReLU and the exact GELU, on a CPU, in float32 or (where oneDNN has
    it) bfloat16, outside autograd (the op has no gradient) and outside `torch.compile` (which
    fuses by itself). The 1×1 convolution of ConvMixer-768 at batch 8 with its activation: 45.0
    against 48.1 ms (median of 40)."""
    import torch

    names = {keras.activations.relu: ("relu", [], ""), keras.activations.gelu: ("gelu", [], "none")}
    if activation not in names or x.device.type != "cpu" or torch.is_grad_enabled():
        return None
    if torch.compiler.is_compiling() or not torch.backends.mkldnn.is_available():
        return None
    supported = x.dtype == torch.float32 or (
        x.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    return names[activation] if supported else None


@functools.cache
def _onednn_weights():
    """A Keras variable's PyTorch tensor → (what it was reordered for, the reordered weight),
    for as long as the tensor lives."""
    from torch.utils.weak import WeakIdKeyDictionary

    return WeakIdKeyDictionary()


def _onednn_weight(kernel, x, depthwise: bool, geometry: tuple):
    """`kernel` for `_convolution_pointwise` on `x`. Where `kernel` is a Keras variable read as
    its own PyTorch parameter (not through Keras' autocast, which makes a new tensor at each
    read): the weight reordered into oneDNN's blocked layout, which oneDNN otherwise does in
    every call, made once and kept beside the variable until its value changes (PyTorch counts
    each in-place write in `_version`) or the input's dtype or shape does. It costs one more
    copy of the weights in memory. ConvMixer-768/32 at batch 8: inference 2% faster (three
    runs each against timm's: 1.00-1.03× → 1.02-1.05×)."""
    import torch

    weight = _torch_weight(ops.cast(kernel, x.dtype), depthwise)
    value = kernel.value if isinstance(kernel, keras.Variable) else None
    if not isinstance(value, torch.nn.Parameter):
        return weight
    key = (value._version, x.dtype, tuple(x.shape))
    cached = _onednn_weights().get(value)
    if cached is None or cached[0] != key:
        reordered = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.contiguous().to_mkldnn(), *geometry, list(x.shape)
        )
        cached = _onednn_weights()[value] = (key, reordered)
    return cached[1]


def patch_conv2d(x, kernel, bias, patch_size: int, activation, data_format: str = "channels_last"):
    """`activation` of the stem's convolution (stride = kernel = `patch_size`, "valid") plus
    bias. On PyTorch with channels-last tensors it runs on a channels-last view like the other
    convolutions: 10 against 30 ms for Keras' `Conv2D`, which copies its input and output
    (ConvMixer-768/32 at batch 8)."""
    if _nchw_unsupported(data_format):
        return _channels_last(patch_conv2d, x, kernel, bias, patch_size, activation)
    if data_format == "channels_last" and keras.backend.backend() == "torch":
        return _torch_conv2d(x, kernel, bias, activation, stride=patch_size)
    kernel = ops.cast(kernel, x.dtype)
    bias = ops.cast(bias, x.dtype)
    out = ops.conv(x, kernel, strides=patch_size, padding="valid", data_format=data_format)
    return activation(out + _channel_bias(bias, data_format))


def pointwise_conv2d(x, kernel, bias, activation, data_format: str = "channels_last"):
    """`activation(1×1 convolution + bias)`; `kernel` is `(1, 1, in, out)` as in
    `keras.layers.Conv2D`."""
    if _nchw_unsupported(data_format):
        return _channels_last(pointwise_conv2d, x, kernel, bias, activation)
    if data_format == "channels_last" and keras.backend.backend() == "torch":
        # oneDNN's 1×1 convolution: 15% faster than `addmm` (43.7 vs 51.6 ms for
        # ConvMixer-768/32 at batch 8).
        return _torch_conv2d(x, kernel, bias, activation)
    kernel = ops.cast(kernel, x.dtype)
    bias = ops.cast(bias, x.dtype)
    if data_format == "channels_first":
        return activation(
            ops.conv(x, kernel, data_format=data_format) + _channel_bias(bias, data_format)
        )
    # A reshape rather than kernel[0, 0]: its gradient is free, a slice's is a scatter
    # (StridedSliceGrad: about 3% of a TensorFlow training step of ConvMixer-768/32).
    matrix = ops.reshape(kernel, kernel.shape[2:])
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # MatMul, BiasAdd and the exact GELU, in this order, are what TensorFlow's graph
        # optimizer fuses into one oneDNN matmul: 47 against 55 ms for a ConvMixer-768 layer
        # at batch 8.
        out = tf.nn.bias_add(tf.matmul(tf.reshape(x, (-1, x.shape[-1])), matrix), bias)
        return tf.reshape(activation(out), tf.concat([tf.shape(x)[:-1], [-1]], 0))
    if keras.backend.standardize_dtype(x.dtype) in ("bfloat16", "float16") and _jax_on_cpu():
        import jax.numpy as jnp

        # XLA's CPU backend runs a 16-bit matmul with a 16-bit result as a float32 one plus
        # conversions (74 ms for ConvMixer-768's at batch 8, against 52 in float32); asking
        # for a float32 result runs the native bfloat16 kernel (24-29 ms). Same rounding: the
        # sum is float32 either way, rounded once. On a GPU the 16-bit result is the usual
        # form: the float32 one would write and read twice the bytes.
        out = jnp.matmul(x, matrix, preferred_element_type=jnp.float32)
        return activation(ops.cast(out + ops.cast(bias, "float32"), x.dtype))
    return activation(ops.matmul(x, matrix) + bias)


def batch_norm(norm: keras.layers.BatchNormalization, x, training):
    """`norm(x)`; in inference, one pass: the backend's fused kernel on TensorFlow and PyTorch,
    elsewhere the moving statistics folded into one scale and shift."""
    if training and norm.trainable:
        out, mean, variance = batch_norm_training(norm, x)
        update_moving_statistics(norm, mean, variance)
        return out
    if _fused_applies(norm, x):
        return _fused_inference(norm, x)
    scale, shift = (ops.cast(v, x.dtype) for v in folded_batch_norm(norm))
    if norm.axis in (1, -3) and len(x.shape) == 4:  # channels_first
        scale, shift = ops.reshape(scale, (-1, 1, 1)), ops.reshape(shift, (-1, 1, 1))
    return x * scale + shift


def folded_batch_norm(norm: keras.layers.BatchNormalization) -> tuple:
    """`(scale, shift)` with `norm(x) == x · scale + shift` in inference."""
    scale = ops.rsqrt(norm.moving_variance + norm.epsilon)
    if norm.scale:
        scale = norm.gamma * scale
    shift = -norm.moving_mean * scale
    return scale, shift + norm.beta if norm.center else shift


def batch_norm_training(norm: keras.layers.BatchNormalization, x):
    """Training-mode `norm(x)` that leaves the moving statistics alone: `(output, batch mean,
    batch variance)`, the statistics for `update_moving_statistics`. A function without side
    effects, which rematerialisation may run twice. Keras' arithmetic (16-bit inputs in float32)
    where the fused kernel does not apply."""
    if _fused_training_applies(norm, x):
        return _fused_training(norm, x)
    if _jax_on_cpu() and norm.center and norm.scale and not norm.synchronized:
        return _jax_training(norm, x)
    wide = ops.cast(x, keras.backend.result_type(x.dtype, "float32"))
    axes = [i for i in range(len(x.shape)) if i != norm.axis % len(x.shape)]
    mean, variance = ops.moments(wide, axes, synchronized=norm.synchronized)
    gamma, beta = (ops.cast(v, wide.dtype) for v in (norm.gamma, norm.beta))
    # `norm.axis` as Keras' layer passes it: on TensorFlow any other axis than -1 reshapes the
    # statistics, whose length a synchronised (all-reduced) mean no longer knows.
    out = ops.batch_normalization(wide, mean, variance, norm.axis, beta, gamma, norm.epsilon)
    return ops.cast(out, norm.compute_dtype), ops.stop_gradient(mean), ops.stop_gradient(variance)


def update_moving_statistics(norm: keras.layers.BatchNormalization, mean, variance) -> None:
    """Keras' update of `norm`'s moving statistics with a batch's mean and (biased) variance."""
    momentum = norm.momentum
    norm.moving_mean.assign(
        norm.moving_mean * momentum + ops.cast(mean, "float32") * (1 - momentum)
    )
    norm.moving_variance.assign(
        norm.moving_variance * momentum + ops.cast(variance, "float32") * (1 - momentum)
    )


def _fused_applies(norm: keras.layers.BatchNormalization, x) -> bool:
    """Whether the backend's fused BatchNorm kernel computes `norm` on `x`."""
    backend = keras.backend.backend()
    channels_last = norm.axis in (-1, 3)
    return (
        (backend == "torch" or (backend == "tensorflow" and channels_last))
        and len(x.shape) == 4
        and norm.center
        and norm.scale
        and not norm.synchronized
    )


def _fused_training_applies(norm: keras.layers.BatchNormalization, x) -> bool:
    return _fused_applies(norm, x) and keras.backend.standardize_dtype(x.dtype) == "float32"


def _fused_inference(norm: keras.layers.BatchNormalization, x):
    """Inference BatchNorm as `torch.nn.functional.batch_norm` / TensorFlow's
    `FusedBatchNormV3`: one pass over `x` (16-bit inputs with float32 statistics included).
    Inference of an 8-block ConvMixer-768 at batch 8 against the folded scale and shift:
    PyTorch 606 vs 664 ms (float32), 343 vs 366 ms (bfloat16); TensorFlow 479 vs 505 ms
    (bfloat16), the same in float32.
    """
    if keras.backend.backend() == "torch":
        from torch.nn import functional

        channels_last = norm.axis in (-1, 3)
        view = x.permute(0, 3, 1, 2) if channels_last else x
        statistics = [v.value for v in (norm.moving_mean, norm.moving_variance)]
        affine = [v.value for v in (norm.gamma, norm.beta)]
        out = functional.batch_norm(view, *statistics, *affine, False, 0.0, norm.epsilon)
        return out.permute(0, 2, 3, 1) if channels_last else out
    import tensorflow as tf

    return tf.compat.v1.nn.fused_batch_norm(
        x,
        norm.gamma,
        norm.beta,
        norm.moving_mean,
        norm.moving_variance,
        epsilon=norm.epsilon,
        is_training=False,
    )[0]


def _fused_training(norm: keras.layers.BatchNormalization, x):
    """Training-mode BatchNormalization as the backend's fused kernel (PyTorch's
    `native_batch_norm`, TensorFlow's `FusedBatchNormV3`): `(output, batch mean, biased batch
    variance)` for Keras' update of the moving statistics (both kernels' own updates use the
    unbiased variance).
    Keras' layer takes about 10 elementwise and reduction ops forward and as many backward:
    1.5 s of a 9.4 s PyTorch training step of ConvMixer-768/32 at batch 8; on TensorFlow 31 ms
    against 13 ms forward and backward per layer."""
    if keras.backend.backend() == "torch":
        import torch

        channels_last = norm.axis in (-1, 3)
        view = x.permute(0, 3, 1, 2) if channels_last else x
        out, mean, inverse_std = torch.ops.aten.native_batch_norm(
            view, norm.gamma.value, norm.beta.value, None, None, True, 0.0, norm.epsilon
        )
        out = out.permute(0, 2, 3, 1) if channels_last else out
        with torch.no_grad():
            variance = inverse_std.pow(-2) - norm.epsilon
    else:
        import tensorflow as tf

        out, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
            x, norm.gamma, norm.beta, epsilon=norm.epsilon, is_training=True
        )
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), unbiased.dtype)
        mean, variance = tf.stop_gradient(mean), tf.stop_gradient(unbiased * (count - 1) / count)
    return out, mean, variance


def _jax_training(norm: keras.layers.BatchNormalization, x):
    """`batch_norm_training` on JAX on a CPU, float32 arithmetic, with the gradient written out.

    XLA's CPU backend hands reductions to YNNPACK, which reads only tensors in memory, so each
    reduction of Keras' two-pass variance and of its differentiated normalisation (`x - mean`,
    `grad * x̂`) first wrote its operand out in full. Here the reductions read `x`, `x²`, `grad`
    and `grad · x`, and the input gradient is one multiply-add per element. The variance is
    E[x²] - mean², as with Flax's `use_fast_variance`: it loses digits where a channel's mean
    is large against its spread: up to 5e-7 · (mean / std)² of the variance, measured over
    8,192 values a channel (5e-3 at a mean of 100 standard deviations).

    One BatchNorm and its gradient at ConvMixer-768's shape: 20 → 12.5 ms; a ConvMixer-768/32
    training step: 9.05 → 8.47 s (batch 8, 2 cores, alternating steps in one process).
    """
    import jax
    import jax.numpy as jnp

    axis = norm.axis % len(x.shape)
    axes = tuple(i for i in range(len(x.shape)) if i != axis)
    count = math.prod(x.shape[i] for i in axes)
    shape = tuple(-1 if i == axis else 1 for i in range(len(x.shape)))

    def forward(x, gamma, beta):
        wide = x.astype(jnp.float32)
        mean = jnp.sum(wide, axes) / count
        variance = jnp.maximum(jnp.sum(jnp.square(wide), axes) / count - jnp.square(mean), 0.0)
        inverse = jax.lax.rsqrt(variance + norm.epsilon)
        scale = gamma * inverse
        out = wide * scale.reshape(shape) + (beta - mean * scale).reshape(shape)
        return (out, mean, variance), (x, mean, inverse, gamma)

    def backward(saved, cotangents):
        x, mean, inverse, gamma = saved
        grad = cotangents[0]  # the statistics leave through `stop_gradient`
        wide = x.astype(jnp.float32)
        d_beta = jnp.sum(grad, axes)
        d_gamma = (jnp.sum(grad * wide, axes) - mean * d_beta) * inverse
        # d_x = scale · (grad - d_beta / count - x̂ · d_gamma / count), x̂ = (x - mean) · inverse
        scale = gamma * inverse
        slope = scale * inverse * d_gamma / count
        offset = scale * (mean * inverse * d_gamma - d_beta) / count
        d_x = grad * scale.reshape(shape) - wide * slope.reshape(shape) + offset.reshape(shape)
        return d_x.astype(x.dtype), d_gamma, d_beta

    normalize = jax.custom_vjp(lambda x, gamma, beta: forward(x, gamma, beta)[0])
    normalize.defvjp(forward, backward)
    gamma, beta = (ops.cast(v, "float32") for v in (norm.gamma, norm.beta))
    out, mean, variance = normalize(x, gamma, beta)
    return ops.cast(out, norm.compute_dtype), ops.stop_gradient(mean), ops.stop_gradient(variance)
