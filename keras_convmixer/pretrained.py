"""Pretrained weights: the table of published checkpoints, download, conversion, loading.

Conversion needs NumPy only for timm's `.safetensors`; PyTorch `.pth`/`.pth.tar`/`.bin` files
need torch. Checkpoints may use timm's key layout (`stem.0.weight`, `blocks.3.0.fn.0.weight`,
`head.weight`) or the original repository's `nn.Sequential` numbering (`0.weight`,
`6.0.fn.0.weight`, `{depth + 5}.weight`), with or without DataParallel's `module.` prefix.
`save_timm` goes the other way, for sharing a model trained here with timm users.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
import urllib.parse
import uuid

import keras
import numpy as np

from keras_convmixer import imagenet
from keras_convmixer.layers import get_activation
from keras_convmixer.model import VARIANTS, block_count, find_variant

DEFAULT_ENDPOINT = "https://huggingface.co"
TORCH_SUFFIXES = (".pth", ".pth.tar", ".tar", ".bin", ".pt")
KERAS_SUFFIXES = (".weights.h5", ".h5", ".keras")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint on timm's hub repositories (licence MIT)."""

    repo: str
    filename: str
    sha256: str | None  # None: no published hash; the structure is still checked
    top1: float


WEIGHTS: dict[str, Checkpoint] = {
    "convmixer_1536_20": Checkpoint("convmixer_1536_20.in1k", "model.safetensors", None, 81.37),
    "convmixer_768_32": Checkpoint(
        "convmixer_768_32.in1k",
        "model.safetensors",
        "62ed5ec91004012a90d1a1ad043c4a74724ad444c82a277a6fff10803391743b",
        80.16,
    ),
    "convmixer_1024_20": Checkpoint(
        "convmixer_1024_20_ks9_p14.in1k",
        "model.safetensors",
        "e9ee7c2d21eadc21b1538011aedb65d8122a368c5967ff01a1a9cbbaf8cc9571",
        76.94,
    ),
}

# How each kind of layer's Keras variables come from PyTorch tensors:
# (Keras attribute, PyTorch tensor name, transpose from PyTorch's layout to Keras').
PORTS = {
    # Conv2d weight (out, in, kh, kw) -> Conv2D kernel (kh, kw, in, out)
    "conv": (("kernel", "weight", (2, 3, 1, 0)), ("bias", "bias", None)),
    # grouped Conv2d weight (C, 1, kh, kw) -> DepthwiseConv2D kernel (kh, kw, C, 1)
    "depthwise": (("kernel", "weight", (2, 3, 0, 1)), ("bias", "bias", None)),
    "batchnorm": (
        ("gamma", "weight", None),
        ("beta", "bias", None),
        ("moving_mean", "running_mean", None),
        ("moving_variance", "running_var", None),
    ),
    # Linear weight (out, in) -> Dense kernel (in, out)
    "dense": (("kernel", "weight", (1, 0)), ("bias", "bias", None)),
}


def layer_table(depth: int) -> list[tuple[str, str, str]]:
    """(Keras layer path, timm checkpoint prefix, kind) for every layer with weights."""
    rows = [("stem/conv", "stem.0", "conv"), ("stem/norm", "stem.2", "batchnorm")]
    for i in range(depth):
        rows += [
            (f"block_{i}/depthwise", f"blocks.{i}.0.fn.0", "depthwise"),
            (f"block_{i}/depthwise_norm", f"blocks.{i}.0.fn.2", "batchnorm"),
            (f"block_{i}/pointwise", f"blocks.{i}.1", "conv"),
            (f"block_{i}/pointwise_norm", f"blocks.{i}.3", "batchnorm"),
        ]
    rows.append(("predictions", "head", "dense"))
    return rows


def timm_layout(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a state dict to timm's keys: drops `module.` and maps `nn.Sequential` numbering."""
    state = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}
    if not any(re.match(r"^\d+\.", k) for k in state):
        return state
    block_ids = {int(m.group(1)) for k in state if (m := re.match(r"^(\d+)\.0\.fn\.", k))}
    renamed = {}
    for key, value in state.items():
        index, rest = key.split(".", 1)
        index = int(index)
        if index in (0, 2):
            renamed[f"stem.{index}.{rest}"] = value
        elif index in block_ids:
            renamed[f"blocks.{index - 3}.{rest}"] = value
        elif index > 2 and rest in ("weight", "bias") and np.ndim(value) in (1, 2):
            renamed[f"head.{rest}"] = value
        else:
            renamed[key] = value
    return renamed


def _guess_variant(state: dict[str, np.ndarray]) -> str | None:
    stem = state.get("stem.0.weight")
    depthwise = state.get("blocks.0.0.fn.0.weight")
    if stem is None or depthwise is None or np.ndim(stem) != 4 or np.ndim(depthwise) != 4:
        return None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return find_variant(stem.shape[0], depth, depthwise.shape[-1], stem.shape[-1])


def to_keras_arrays(
    state_dict: dict[str, np.ndarray], depth: int, include_top: bool = True
) -> dict[str, np.ndarray]:
    """Converts a PyTorch ConvMixer state dict to `{"stem/conv/kernel": array, ...}`.

    Every checkpoint tensor must be used (but `num_batches_tracked`, and the head when
    `include_top=False`); a missing or unexpected key raises a ValueError listing them.
    """
    state = timm_layout(state_dict)
    arrays, used = {}, set()
    missing = []
    for keras_path, prefix, kind in layer_table(depth):
        for attribute, tensor, transpose in PORTS[kind]:
            key = f"{prefix}.{tensor}"
            if keras_path == "predictions" and not include_top:
                used.add(key)
                continue
            if key not in state:
                missing.append(key)
                continue
            value = np.asarray(state[key], dtype="float32")
            arrays[f"{keras_path}/{attribute}"] = value.transpose(transpose) if transpose else value
            used.add(key)
    unexpected = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if missing or unexpected:
        guess = _guess_variant(state)
        hint = f" The tensors look like {guess}." if guess else ""
        raise ValueError(
            f"The checkpoint does not fit a ConvMixer of depth {depth}.{hint} "
            f"Missing keys: {missing[:8]}{' …' if len(missing) > 8 else ''}. "
            f"Unexpected keys: {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}."
        )
    return arrays


def assign(model: keras.Model, arrays: dict[str, np.ndarray], include_top: bool = True) -> None:
    """Assigns `{"stem/conv/kernel": array, ...}` to the model, every variable exactly once.

    A shape mismatch raises a ValueError naming the variable, both shapes, and the variant
    the arrays seem to come from.
    """
    depth = block_count(model)
    mismatches, pairs = [], []
    for keras_path, _, kind in layer_table(depth):
        if keras_path == "predictions" and not include_top:
            continue
        layer = _layer_at(model, keras_path)
        for attribute, _, _ in PORTS[kind]:
            variable = getattr(layer, attribute)
            value = arrays[f"{keras_path}/{attribute}"]
            if tuple(variable.shape) != value.shape:
                mismatches.append(
                    f"{keras_path}/{attribute}: model {tuple(variable.shape)}, "
                    f"weights {value.shape}"
                )
            pairs.append((variable, value))
    if mismatches:
        guess = _variant_of_arrays(arrays)
        hint = f" The weights look like {guess}." if guess else ""
        if all(m.startswith("predictions/") for m in mismatches):
            classes = arrays["predictions/bias"].shape[0]
            hint = f" They classify {classes} classes: pass classes={classes}."
        raise ValueError(
            f"The weights do not fit model {model.name!r}.{hint} Shape mismatches: "
            + "; ".join(mismatches[:6])
            + (" …" if len(mismatches) > 6 else "")
        )
    for variable, value in pairs:
        variable.assign(value)


def _layer_at(model: keras.Model, keras_path: str) -> keras.layers.Layer:
    owner, _, sub = keras_path.partition("/")
    layer = model.get_layer(owner)
    return getattr(layer, sub) if sub else layer


def has_classifier(model: keras.Model) -> bool:
    return any(layer.name == "predictions" for layer in model.layers)


def timm_state_dict(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights as a timm `ConvMixer` state dict: NumPy arrays in PyTorch's layouts
    and timm's names, the inverse of `to_keras_arrays`. No `head` for a model without one."""
    state = {}
    for keras_path, prefix, kind in layer_table(block_count(model)):
        if keras_path == "predictions" and not has_classifier(model):
            continue
        layer = _layer_at(model, keras_path)
        for attribute, tensor, transpose in PORTS[kind]:
            value = np.asarray(keras.ops.convert_to_numpy(getattr(layer, attribute)), "float32")
            if transpose:
                value = np.ascontiguousarray(value.transpose(np.argsort(transpose)))
            state[f"{prefix}.{tensor}"] = value
        if kind == "batchnorm":  # PyTorch's BatchNorm2d keeps a step count; strict loads need it
            state[f"{prefix}.num_batches_tracked"] = np.zeros((), "int64")
    return state


def timm_architecture(model: keras.Model) -> str | None:
    """timm's registered name for the model's shape and activation (the architectures with
    published weights), or None."""
    stem, block = model.get_layer("stem"), model.get_layer("block_0")
    variant = find_variant(stem.dim, block_count(model), block.kernel_size, stem.patch_size)
    if variant not in WEIGHTS:
        return None
    if get_activation(block.activation) is not get_activation(VARIANTS[variant].activation):
        return None
    return _timm_name(variant)


def _timm_name(variant: str) -> str:
    """timm's architecture name of a variant with published weights: its repository's stem."""
    return WEIGHTS[variant].repo.split(".")[0]


def save_timm(
    model: keras.Model,
    path: str | os.PathLike,
    label_names: list[str] | None = None,
    data_config: dict | None = None,
) -> list[str]:
    """Writes the model's weights for timm (and `weights="hf://…"`); returns the files written.

    `path` ending in `.safetensors`: that file, timm's state dict. Otherwise a folder in
    timm's Hugging Face Hub layout, ready to upload: `model.safetensors`, plus `config.json`
    when timm has the architecture (`timm_architecture`), so that
    `timm.create_model("hf-hub:OWNER/REPO")` builds and loads it. `label_names` (in class
    order) and `data_config` (timm's `input_size`, `mean`, `std`, `crop_pct`,
    `interpolation`; ConvMixer's ImageNet evaluation by default) go into `config.json`.
    """
    from safetensors.numpy import save_file

    path = str(path)
    state = timm_state_dict(model)
    if _has_suffix(path, (".safetensors",)):
        save_file(state, path)
        return [path]
    os.makedirs(path, exist_ok=True)
    weights_file = os.path.join(path, "model.safetensors")
    save_file(state, weights_file)
    architecture = timm_architecture(model)
    if architecture is None:
        return [weights_file]
    classes = int(state["head.weight"].shape[0]) if "head.weight" in state else 0
    if label_names is not None and len(label_names) != classes:
        raise ValueError(
            f"label_names must name each of the model's {classes} classes. "
            f"Received {len(label_names)} names."
        )
    channels = int(state["stem.0.weight"].shape[1])
    shape = model.input_shape[1:]
    spatial = shape[:2] if model.get_layer("stem").data_format == "channels_last" else shape[1:]
    size = list(spatial) if all(isinstance(d, int) for d in spatial) else [224, 224]
    pretrained_cfg = {
        "input_size": [channels, *size],
        "interpolation": "bicubic",
        "crop_pct": 0.96,
        "mean": list(imagenet.MEAN),
        "std": list(imagenet.STD),
        "num_classes": classes,
        "first_conv": "stem.0",
        "classifier": "head",
        **(data_config or {}),
    }
    config = {
        "architecture": architecture,
        "num_classes": classes,
        "num_features": int(state["stem.0.weight"].shape[0]),
        "global_pool": "max" if any(layer.name == "max_pool" for layer in model.layers) else "avg",
        "pretrained_cfg": pretrained_cfg,
    }
    if channels != 3:
        config["model_args"] = {"in_chans": channels}
    if label_names is not None:
        config["label_names"] = list(label_names)
    config_file = os.path.join(path, "config.json")
    with open(config_file, "w") as f:
        json.dump(config, f, indent=2)
    return [weights_file, config_file]


def _variant_of_arrays(arrays: dict[str, np.ndarray]) -> str | None:
    stem, depthwise = arrays.get("stem/conv/kernel"), arrays.get("block_0/depthwise/kernel")
    if stem is None or depthwise is None:
        return None
    depth = len({k.split("/")[0] for k in arrays if k.startswith("block_")})
    return find_variant(stem.shape[-1], depth, depthwise.shape[0], stem.shape[0])


def _has_suffix(path: str, suffixes: tuple[str, ...]) -> bool:
    return str(path).lower().endswith(suffixes)


def read_state_dict(path: str | os.PathLike, file_type: str | None = None) -> dict[str, np.ndarray]:
    """Reads a PyTorch checkpoint as NumPy arrays: `.safetensors` (NumPy only) or a torch
    pickle (`.pth`, `.pth.tar`, `.bin`, `.pt`; needs torch, loaded with `weights_only=True`,
    unwrapping `state_dict`/`model` entries). `file_type` (a suffix) overrides the file name's.
    """
    path = str(path)
    file_type = file_type or path
    if _has_suffix(file_type, (".safetensors",)):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable .safetensors file: {error}") from None
    if not _has_suffix(file_type, TORCH_SUFFIXES):
        raise ValueError(
            f"Unknown checkpoint type: {path}. Allowed: .safetensors, "
            f"{', '.join(TORCH_SUFFIXES)} (PyTorch) and {', '.join(KERAS_SUFFIXES)} (Keras)."
        )
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"Reading {path} needs PyTorch (`pip install torch`); .safetensors files need only "
            "NumPy."
        ) from None
    try:
        # Training checkpoints carry their argparse.Namespace of arguments: allow that class only.
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {error}") from None
    for key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    return {k: v.float().numpy() for k, v in checkpoint.items() if hasattr(v, "numpy")}


def cache_dir() -> str:
    """Where downloads and converted weights live: `$KERAS_HOME/models/keras_convmixer`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", "keras_convmixer")


def checkpoint_url(variant: str) -> str:
    """The checkpoint's address on the hub, honouring `HF_ENDPOINT` for mirrors."""
    checkpoint = WEIGHTS[variant]
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    return f"{endpoint}/timm/{checkpoint.repo}/resolve/main/{checkpoint.filename}"


# A revision with "/" in its name is written URL-encoded (`v1%2Fcifar`), as huggingface_hub
# does; a pull request's or conversion's ref may also be written as it is (`refs/pr/3`).
HUB_ADDRESS = re.compile(
    r"hf://([\w.-]+)/([\w.-]+)(?:@(refs/pr/\d+|refs/convert/\w+|[\w.%-]+))?(?:/([\w./-]+))?"
)


def is_hub_address(weights) -> bool:
    """Whether a `weights` argument names a file on the Hugging Face Hub (`hf://…`)."""
    return isinstance(weights, str) and weights.startswith("hf://")


def hub_url(address: str) -> tuple[str, str]:
    """(URL, cache path) of `hf://OWNER/REPO[@REVISION][/FILE]` (FILE defaults to
    `model.safetensors`, REVISION, a commit, tag, branch or ref, to `main`), honouring
    `HF_ENDPOINT`."""
    match = HUB_ADDRESS.fullmatch(address)
    names = re.split("[/@]", address[len("hf://") :])
    revision = urllib.parse.unquote(match.group(3) or "main") if match else ""
    if not match or any(name in ("", ".", "..") for name in [*names, *revision.split("/")]):
        raise ValueError(
            "weights on the Hugging Face Hub are named hf://OWNER/REPO[@REVISION][/FILE] "
            "(FILE defaults to model.safetensors, REVISION to main). "
            f"Received: weights={address!r}"
        )
    owner, repo, _, filename = match.groups()
    filename = filename or "model.safetensors"
    revision = urllib.parse.quote(revision, safe="")  # one name, in the URL and the cache
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    url = f"{endpoint}/{owner}/{repo}/resolve/{revision}/{filename}"
    return url, os.path.join(cache_dir(), "hub", owner, repo, revision, filename)


def hub_file(address: str) -> str:
    """The local copy of a checkpoint on the hub (`hf://OWNER/REPO[@REVISION][/FILE]`),
    downloaded once into the cache (delete it there to fetch a branch's newer file). No hash
    is published for it: its structure is checked when it loads; pin a commit for the same
    file every time."""
    url, path = hub_url(address)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.replace(_fetch(url, path), path)
    except Exception as error:
        raise OSError(
            f"Could not download {address} from {url} ({error}). Pass weights=PATH to a local "
            "copy, or set HF_ENDPOINT to a reachable mirror."
        ) from None
    return path


def local_weights_file(weights: str | os.PathLike) -> str:
    """The file of a local `weights` argument: the path itself, or a folder's
    `model.safetensors` (timm's Hub layout, as `save_timm` writes it)."""
    path = str(weights)
    return os.path.join(path, "model.safetensors") if os.path.isdir(path) else path


# The Hub config.json files (URL, cache path) that this process found missing: building one
# model looks its class count up more than once, and each would ask the network again.
_MISSING_CONFIGS: set[tuple[str, str]] = set()


def timm_config(weights: str) -> dict | None:
    """timm's `config.json` that goes with a checkpoint in its Hub layout: at the root of the
    repository and revision of `hf://OWNER/REPO[@REVISION][/FILE]`, or in a local folder
    beside its `model.safetensors` or `pytorch_model.bin`; None where there is none."""
    if is_hub_address(weights):
        weights_path = hub_url(weights)[1]  # checks the address
        owner, repo, revision, _ = HUB_ADDRESS.fullmatch(weights).groups()
        address = f"hf://{owner}/{repo}@{revision or 'main'}/config.json"
        config = hub_url(address)
        known_missing = os.path.exists(weights_path) or config in _MISSING_CONFIGS
        if known_missing and not os.path.exists(config[1]):
            return None  # known to have none: asking again would need the network
        try:
            path = hub_file(address)
        except OSError:  # no config.json in the repository (or no network: the weights say)
            _MISSING_CONFIGS.add(config)
            return None
    else:
        folder, name = os.path.split(local_weights_file(weights))
        path = os.path.join(folder, "config.json")
        if name not in ("model.safetensors", "pytorch_model.bin") or not os.path.isfile(path):
            return None  # a config.json beside another file may describe something else
    with open(path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not timm's config.json: {error}") from None
    return config if isinstance(config, dict) else None


def variant_of_timm_architecture(architecture: str | None) -> str | None:
    """This package's variant name for a timm architecture name (`timm_architecture`'s
    inverse), or None."""
    return next((variant for variant in WEIGHTS if _timm_name(variant) == architecture), None)


def converted_path(variant: str) -> str:
    return os.path.join(cache_dir(), f"{WEIGHTS[variant].repo}.npz")


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, near: str) -> str:
    """Downloads `url` to a private temporary name beside the path `near` (removed again if
    the download fails), so that concurrent or interrupted downloads never meet."""
    part = f"{near}.{uuid.uuid4().hex}.part"
    folder, name = os.path.split(part)
    try:
        # Keras prints its progress on stdout: on stderr it leaves `predict --json` readable.
        with contextlib.redirect_stdout(sys.stderr):
            keras.utils.get_file(name, url, cache_dir=folder, cache_subdir="")
    except BaseException:
        _remove(part)
        raise
    return part


def _download(variant: str) -> str:
    """Downloads the checkpoint to a private temporary name in the cache, verified."""
    checkpoint, url = WEIGHTS[variant], checkpoint_url(variant)
    try:
        target = _fetch(url, os.path.join(cache_dir(), checkpoint.repo))
    except Exception as error:
        raise OSError(
            f"Could not download the ImageNet weights of {variant} from {url} ({error}). "
            "Pass weights=PATH (--weights PATH on the command line) to a local checkpoint "
            "(.safetensors, .pth or .weights.h5; "
            "see weights/README.md), or set HF_ENDPOINT to a reachable mirror."
        ) from None
    actual = sha256(target)
    if checkpoint.sha256 is not None and actual != checkpoint.sha256:
        _remove(target)
        raise ValueError(
            f"The download of {url} is corrupt or incomplete: sha256 {actual}, expected "
            f"{checkpoint.sha256}. Nothing was cached; try again."
        )
    return target


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def imagenet_arrays(variant: str) -> dict[str, np.ndarray]:
    """The variant's ImageNet weights as Keras arrays: from the cache, else downloaded,
    verified, converted and cached (atomically, so concurrent loaders end with one good file).
    """
    cached = converted_path(variant)
    if os.path.exists(cached):
        with np.load(cached) as data:
            return dict(data)
    os.makedirs(cache_dir(), exist_ok=True)
    download = _download(variant)
    try:
        arrays = to_keras_arrays(
            read_state_dict(download, WEIGHTS[variant].filename), VARIANTS[variant].depth
        )
    except ValueError as error:
        raise ValueError(
            f"The download of {checkpoint_url(variant)} is unusable: {error}"
        ) from None
    finally:
        _remove(download)
    temporary = f"{cached}.{uuid.uuid4().hex}.tmp.npz"
    try:
        np.savez(temporary, **arrays)
        os.replace(temporary, cached)
    finally:
        _remove(temporary)
    return arrays


def check_weights_argument(
    weights,
    *,
    dim: int,
    depth: int,
    kernel_size: int,
    patch_size: int,
    activation,
    input_shape: tuple,
    data_format: str,
) -> None:
    """Validates `weights` against the model arguments before anything is built."""
    if weights is None:
        return
    if is_hub_address(weights):
        hub_url(weights)  # the address is checked; the download waits for the model
        return
    if weights != "imagenet":
        if not isinstance(weights, (str, os.PathLike)) or not os.path.isfile(
            local_weights_file(weights)
        ):
            raise ValueError(
                "weights must be None, 'imagenet', hf://OWNER/REPO[@REVISION][/FILE], the "
                "path of an existing weights file, or a folder holding model.safetensors. "
                f"Received: weights={weights!r}"
            )
        return
    variant = find_variant(dim, depth, kernel_size, patch_size)
    if variant not in WEIGHTS:
        raise ValueError(
            f"weights='imagenet' exists for {sorted(WEIGHTS)} only. Received a ConvMixer with "
            f"dim={dim}, depth={depth}, kernel_size={kernel_size}, patch_size={patch_size}."
        )
    expected = VARIANTS[variant].activation
    if get_activation(activation) is not get_activation(expected):
        raise ValueError(
            f"weights='imagenet' for {variant} needs activation={expected!r}, the one it was "
            f"trained with. Received: activation={activation!r}"
        )
    channels = input_shape[-1] if data_format == "channels_last" else input_shape[0]
    if channels != 3:
        raise ValueError(
            "weights='imagenet' needs 3 input channels (RGB). "
            f"Received: input_shape={input_shape!r}"
        )


def published_classes(weights) -> int | None:
    """How many classes a checkpoint's classifier has, where its source says so: 1000 for
    "imagenet", the `num_classes` of timm's config.json beside a Hub or folder checkpoint;
    None for a bare file."""
    if weights == "imagenet":
        return 1000
    if weights is None or _has_suffix(str(weights), KERAS_SUFFIXES):
        return None
    return (timm_config(weights) or {}).get("num_classes")


def load_weights(model: keras.Model, weights, include_top: bool = True) -> None:
    """Loads `weights` (None, "imagenet", a hub address or a path) into a model built by
    `ConvMixer`. Where the checkpoint publishes another class count than the model's
    classifier ("imagenet", timm's Hub layout), the backbone loads and the classifier keeps
    its initialisation, for fine-tuning (timm's `pretrained=True, num_classes=N`); a bare
    file must fit the model whole."""
    if weights is None:
        return
    theirs = published_classes(weights)  # before the weights: a config.json is asked for first
    if include_top and theirs is not None:
        include_top = model.get_layer("predictions").units == theirs
    if weights == "imagenet":
        stem = model.get_layer("stem")
        block = model.get_layer("block_0")
        variant = find_variant(stem.dim, block_count(model), block.kernel_size, stem.patch_size)
        assign(model, imagenet_arrays(variant), include_top)
        return
    path = hub_file(weights) if is_hub_address(weights) else local_weights_file(weights)
    if _has_suffix(path, KERAS_SUFFIXES):
        _load_keras_weights(model, path)
        return
    state = read_state_dict(path)
    assign(model, to_keras_arrays(state, block_count(model), include_top), include_top)


def _load_keras_weights(model: keras.Model, path: str) -> None:
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(_diagnose_keras_weights(model, path) or str(error)) from None


def _diagnose_keras_weights(model: keras.Model, path: str) -> str | None:
    """Names the first variables whose shapes differ between `model` and a `.weights.h5`."""
    if not _has_suffix(path, (".h5",)):
        return None
    import tempfile

    import h5py

    def shapes(file_path):
        found = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                found[name] = obj.shape

        with h5py.File(file_path, "r") as f:
            f.visititems(visit)
        return found

    with tempfile.TemporaryDirectory() as tmp:
        template = os.path.join(tmp, "model.weights.h5")
        model.save_weights(template)
        expected = shapes(template)
    received = shapes(path)
    problems = [
        f"{name}: model {expected.get(name)}, file {received.get(name)}"
        for name in sorted(set(expected) | set(received))
        if expected.get(name) != received.get(name)
    ]
    if not problems:
        return None
    return (
        f"The weights file {path} does not fit model {model.name!r}: "
        + "; ".join(problems[:6])
        + (" …" if len(problems) > 6 else "")
    )
