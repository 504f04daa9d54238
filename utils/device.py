"""Where the network runs: device choice, bf16 autocast and memory format."""
from contextlib import nullcontext

import torch

from .settings import DEVICE_CHOICES  # noqa: F401 (the tools' `--device` choices, imported from here)


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


class TestTimeModel(torch.nn.Module):
    """A classifier as evaluated: its float32 logits, computed in bf16 autocast with `amp`, from
    channels_last inputs with `channels_last`, and with `tta="flip"` the mean of the logits of the
    images and their mirrors. `model` may be any callable of an N×3×S×S tensor (e.g. onnxruntime)."""

    def __init__(self, model, tta="none", amp=False, channels_last=False):
        super().__init__()
        self.model, self.tta, self.amp, self.channels_last = model, tta, amp, channels_last

    def forward(self, images):
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(images.device, self.amp):
            logits = self.model(images).float()
            if self.tta == "flip":
                logits = (logits + self.model(images.flip(3)).float()) / 2
        return logits


def place_model(model, device, channels_last=False, compile=False, compile_backend="inductor"):
    """`model` moved to `device` (in place), its convolutions in channels_last when asked; with
    `compile`, the `torch.compile`d module is returned (it shares the parameters)."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.compile(model, backend=compile_backend) if compile else model


def fast_path(model, device, amp=False, channels_last=False, compile=False, tta="none"):
    """`model` (a PyTorch network, in eval mode) on `device` as `TestTimeModel`: the options that make
    inference faster on a CPU with bf16 support and a GPU alike (`amp`, `channels_last`, `compile`)."""
    return TestTimeModel(place_model(model, device, channels_last, compile), tta=tta, amp=amp,
                         channels_last=channels_last)
