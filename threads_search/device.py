"""Device choice: ``auto`` means CUDA when torch sees a GPU, else CPU."""

from __future__ import annotations

from threads_search.errors import ConfigError, ThreadsSearchError


class DeviceUnavailableError(ThreadsSearchError, RuntimeError):
    """A GPU was asked for (``--device cuda``, ``use_gpu=True``) but none is visible; a
    ``RuntimeError`` too, as before."""


def resolve_device(device: str = "auto") -> str:
    """``device`` ("auto", "cpu", "cuda" or "cuda:N") as a torch device name. A GPU asked for
    without one → :class:`DeviceUnavailableError`; another name → ``ConfigError``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"--device {device} asked for, but torch sees no CUDA GPU; use --device cpu or auto"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    return device
