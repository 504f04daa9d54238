"""Where the network runs: device choice, bf16 autocast and memory format."""
from contextlib import nullcontext

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")  # the `--device` option of every command


class DeviceUnavailable(ValueError):
    """`--device cuda` on a machine without CUDA."""


def resolve_device(name):
    """`"auto"` → CUDA when available, else CPU; `"cuda"` without CUDA raises `DeviceUnavailable`."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("--device cuda was requested but CUDA is not available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast(device, enabled):
    """bf16 autocast on `device` (CUDA or CPU) when `enabled` (the `--amp` option)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def use_channels_last(requested, device):
    """`--channels-last`: the requested setting, or by default on with CUDA only."""
    return requested if requested is not None else device.type == "cuda"


def to_device(images, device, channels_last):
    """Move a list of image batches to `device`, in channels_last format when asked."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return [x.to(device, non_blocking=True, memory_format=memory_format) for x in images]
