"""Models: the IR50+ViT base branch, DCS and QCS, and weight loading; the method is in METHOD.md."""
from .build import ARCHS, OPTION_CHOICES, build_model, count_parameters, inference_model
from .losses import DISTILL_CHOICES, TEMPERATURE_DISTILLS, distill_loss, group_loss, group_targets
from .qcs import MODEL_SIZES, BaseBranch, CrossModel
from .weights import CheckpointError, LoadReport, describe_state_dict, load_backbone, load_weights

__all__ = ["ARCHS", "DISTILL_CHOICES", "OPTION_CHOICES", "MODEL_SIZES", "TEMPERATURE_DISTILLS", "BaseBranch",
           "CheckpointError", "CrossModel", "LoadReport", "build_model", "count_parameters", "describe_state_dict",
           "distill_loss", "group_loss", "group_targets", "inference_model", "load_backbone", "load_weights"]
