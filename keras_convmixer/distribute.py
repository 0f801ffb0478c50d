"""Placeholder: filled in by the distribution work."""

from __future__ import annotations

import keras


def list_devices() -> list[str]:
    """The backend's devices, e.g. `["cpu:0"]` or `["gpu:0", "gpu:1"]` (PyTorch included)."""
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu:0"]
    return keras.distribution.list_devices()
