"""Models: the IR50+ViT base branch, DCS and QCS, and weight loading; the method is in METHOD.md.

The names below load their module on first use, so `models.architectures` (no torch) can be read
without importing torch.
"""
import importlib

_MODULE_OF = {
    "ARCHS": "build", "build_model": "build", "count_parameters": "build", "inference_model": "build",
    "distill_loss": "losses", "group_loss": "losses", "group_targets": "losses",
    "BaseBranch": "qcs", "CrossModel": "qcs",
    "DISTILL_CHOICES": "options", "DROPOUT_OPTIONS": "options", "MODEL_SIZES": "options",
    "OPTION_CHOICES": "options", "TEMPERATURE_DISTILLS": "options",
    "CheckpointError": "weights", "LoadReport": "weights", "describe_state_dict": "weights",
    "load_backbone": "weights", "load_weights": "weights",
    "ARCHITECTURES": "architectures", "Architecture": "architectures", "architecture": "architectures",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)


def __dir__():
    return __all__
