"""Map tensor names (ours, the authors', face-recognition IR50's; layouts in METHOD.md §7) and load
state dicts into a model, with a report of what went where. Reading files is `utils.checkpoint`'s."""
import re
from dataclasses import dataclass, field

import torch

from .architectures import describe_keys, with_branches
from .qcs import BaseBranch, CrossModel

# The authors' module names → ours (applied in order, after stripping `module.`).
AUTHOR_RENAMES = (
    (r"^ir_back\.", "base.backbone."),
    (r"^conv([123])\.", lambda m: f"base.downsample.{int(m[1]) - 1}."),
    (r"^embed_(q|1)\.", "base.embed.0."),  # some releases name the embeddings embed_1/2/3
    (r"^embed_(k|2)\.", "base.embed.1."),
    (r"^embed_(v|3)\.proj\.", "base.embed.2.0."),
    (r"^VIT_base\.", "base.vit."),
    (r"^VIT_cross\.", "cross_head."),
    (r"^cross_attention_([123])\.", lambda m: f"cross_blocks.{int(m[1]) - 1}."),
    (r"\.se_block\.linear([12])\.", r".head.fc\1."),
    (r"\.head\.linear\.", ".head.classifier."),
)
# Keys the authors' models define but never use, in our namespace after renaming.
AUTHOR_UNUSED = re.compile(
    r"^base\.backbone\.output_layer\.|^fusion\.classifier\.|"
    r"^(base\.vit|cross_head)\.(blocks\.\d+\.conv|patch_embed|eca_block|CON1|IRLinear[12])\.")
# face.evoLVe IR50 numbers its units 0..23 over four stages of 3, 4, 14 and 3 units: `(stage, unit)` of each.
IR50_UNITS = [(stage, unit) for stage, units in enumerate((3, 4, 14, 3), start=1) for unit in range(units)]
IR50_UNUSED = re.compile(r"^(output_layer|body4)\.")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model; the message says what, where and why.

    The one error type for checkpoints and weights, here and in `utils.checkpoint`.
    """


@dataclass
class LoadReport:
    """What `load_weights` did: the source format and the keys loaded, ignored and missing."""
    source_format: str
    loaded: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    checkpoint: dict = field(default_factory=dict, repr=False)

    def summary(self):
        """One line: the source format and how many tensors were loaded, ignored and missing."""
        return (f"{self.source_format}: {len(self.loaded)} tensors loaded, "
                f"{len(self.ignored)} ignored, {len(self.missing)} missing")


def checkpoint_state_dict(checkpoint):
    """`(format, state_dict)` of a loaded checkpoint object of any supported kind."""
    if isinstance(checkpoint, dict) and "model" in checkpoint and "config" in checkpoint:
        return "ours", _tensors_of(checkpoint["model"], "its 'model' entry")
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        return "authors", _tensors_of(checkpoint["state_dict"], "its 'state_dict' entry")
    if isinstance(checkpoint, dict) and checkpoint and all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return "state_dict", _tensors_of(checkpoint, "the state dict")
    raise CheckpointError("unrecognised checkpoint: expected this project's checkpoint, the authors' "
                          "({'state_dict': ...}), a bare state dict or IR50 weights")


def _tensors_of(state_dict, what):
    """`state_dict` when it maps tensor names to tensors (other values, such as the authors' epoch
    counters in a state dict, are kept for the key checks); else CheckpointError."""
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointError(f"{what} is not a state dict (a {type(state_dict).__name__}); the file is damaged")
    if not all(isinstance(k, str) for k in state_dict) or not any(isinstance(v, torch.Tensor)
                                                                  for v in state_dict.values()):
        raise CheckpointError(f"{what} does not map tensor names to tensors; the file is damaged")
    return state_dict


def to_our_names(state_dict):
    """`(format, state dict in this project's names)`, for any supported naming."""
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith(("ir_back.", "VIT_base.")) for k in state_dict):
        return "authors", {_rename(k, AUTHOR_RENAMES): v for k, v in state_dict.items()}
    if any(k.startswith(("input_layer.", "body.", "body1.")) for k in state_dict):
        return "ir50", {_ir50_name(k): v for k, v in state_dict.items()}
    return "ours", state_dict


def _rename(key, renames):
    for pattern, replacement in renames:
        key = re.sub(pattern, replacement, key)
    return key


def _ir50_name(key):
    match = re.match(r"^body\.(\d+)\.(.*)$", key)
    if match and int(match[1]) < len(IR50_UNITS):
        stage, unit = IR50_UNITS[int(match[1])]
        key = f"body{stage}.{unit}.{match[2]}"
    return ("ir50-unused." if IR50_UNUSED.match(key) else "base.backbone.") + key


def describe_state_dict(state_dict):
    """`(arch, num_classes)` of a state dict in our names; arch a registered architecture's name."""
    arch = describe_keys(state_dict)
    head = state_dict.get("base.vit.head.classifier.weight", state_dict.get("vit.head.classifier.weight"))
    if head is not None and (not isinstance(head, torch.Tensor) or head.dim() != 2 or not head.shape[0]):
        shape = tuple(head.shape) if isinstance(head, torch.Tensor) else type(head).__name__
        raise CheckpointError(f"the classifier weight (vit.head.classifier.weight) has shape {shape}, "
                              "not (classes, features); the file is damaged")
    return arch, (None if head is None else int(head.shape[0]))


def load_weights(model, source, name="the given state dict"):
    """Load `source` (a loaded checkpoint object or state dict) into `model`; errors call it `name`.

    Accepts this project's checkpoints, the authors' releases (METHOD.md §7), bare state dicts and
    face-recognition IR50 weights (backbone only, either naming). Returns a `LoadReport`.
    Every parameter the source should fill must be filled and leftovers may only
    be the known-unused keys; otherwise `CheckpointError` lists the offending keys.
    """
    container_format, state_dict = checkpoint_state_dict(source)
    naming, state_dict = to_our_names(state_dict)
    source_format = container_format if naming == "ours" else naming
    target = dict(model.state_dict(keep_vars=True))
    state_dict = _fit_to_model(model, state_dict)
    if source_format != "ir50":
        _check_same_model(model, state_dict, name)

    ignored = [k for k in state_dict if k not in target]
    unexpected = [k for k in ignored if not _known_unused(k, model)]
    missing = [k for k in target if k not in state_dict
               and (source_format != "ir50" or k.removeprefix("base.").startswith("backbone."))]
    loaded = [k for k in target if k in state_dict]
    _check_values(name, state_dict, target, loaded)
    shape_errors = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
                    for k in loaded if state_dict[k].shape != target[k].shape]
    if shape_errors:
        raise CheckpointError(f"{name}: shapes differ for {len(shape_errors)} tensors "
                              f"(is the model size right?):\n  " + "\n  ".join(shape_errors[:20]))
    if missing or unexpected:
        raise CheckpointError(f"{name} does not fit the model:"
                              + _key_list("missing from the checkpoint", missing)
                              + _key_list("unexpected in the checkpoint", unexpected))
    with torch.no_grad():
        for k in loaded:
            target[k].copy_(state_dict[k])
    return LoadReport(source_format, loaded, ignored, [k for k in target if k not in state_dict], source)


def _check_values(name, state_dict, target, keys):
    """Refuse values that are no tensors, integer tensors where the model holds floating-point
    weights (quantised or damaged files: copying would silently cast them) and NaN/inf weights."""
    not_tensors = [k for k in keys if not isinstance(state_dict[k], torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{name}: {len(not_tensors)} entries are not tensors (e.g. {not_tensors[0]}); "
                              "the file is damaged")
    integer = [k for k in keys if target[k].is_floating_point() and not state_dict[k].is_floating_point()]
    if integer:
        raise CheckpointError(f"{name}: {len(integer)} weights are stored as {state_dict[integer[0]].dtype} "
                              f"(e.g. {integer[0]}), not floating point: quantised weights are not supported")
    non_finite = [k for k in keys if state_dict[k].is_floating_point() and not torch.isfinite(state_dict[k]).all()]
    if non_finite:
        raise CheckpointError(f"{name}: {len(non_finite)} tensors hold NaN or infinite values (e.g. {non_finite[0]}); "
                              "the weights are damaged (a diverged run?)")


def _fit_to_model(model, state_dict):
    """Our names are rooted at the DCS/QCS model; a bare base branch drops the `base.` prefix."""
    if not isinstance(model, CrossModel):
        return {k.removeprefix("base."): v for k, v in state_dict.items()}
    if any(k.startswith("base.") for k in state_dict):
        return state_dict
    return {(k if k.startswith(("cross_", "ir50-unused.")) else "base." + k): v for k, v in state_dict.items()}


def _known_unused(key, model):
    return (key.startswith("ir50-unused.") or AUTHOR_UNUSED.match(key) or AUTHOR_UNUSED.match("base." + key)
            # the released S-only / D-only QCS blocks define θ without using it; ours have none
            or (isinstance(model, CrossModel) and model.cross_blocks[0].theta is None
                and re.match(r"^cross_blocks\.\d+\.theta$", key))
            # a base branch ignores the cross module of a DCS/QCS checkpoint
            or (isinstance(model, BaseBranch) and key.startswith(("cross_blocks.", "cross_head."))))


def _check_same_model(model, state_dict, name):
    cross = isinstance(model, CrossModel)
    model_arch = with_branches(model.num_branches).name if cross else "base"
    model_classes = (model.base if cross else model).vit.head.classifier.out_features
    arch, num_classes = describe_state_dict(state_dict if cross else {"base." + k: v for k, v in state_dict.items()})
    # a model may hold the key set of another architecture (QCS without θ, S or D only, that of DCS)
    arch_clash = cross and arch not in (model_arch, describe_keys(model.state_dict()))
    if arch_clash or (num_classes is not None and num_classes != model_classes):
        raise CheckpointError(f"{name} holds a {arch.upper()} model with {num_classes} classes; "
                              f"the model is {model_arch.upper()} with {model_classes} classes")


def _key_list(title, keys):
    if not keys:
        return ""
    shown = "\n    ".join(keys[:30])
    more = f"\n    ... and {len(keys) - 30} more" if len(keys) > 30 else ""
    return f"\n  {len(keys)} {title}:\n    {shown}{more}"


def load_backbone(model, source, name="the given state dict"):
    """Fill the IR50 backbone of `model`, and nothing else, from any supported checkpoint object.

    `source` may be face-recognition IR50 weights (either naming), this project's checkpoint,
    the authors' release or a bare state dict, of any architecture. Returns
    `(tensors_filled, source_format)`. A source without the backbone's tensors (or with only
    part of them, or other shapes) raises `CheckpointError`.
    """
    container_format, state_dict = checkpoint_state_dict(source)
    naming, state_dict = to_our_names(state_dict)
    found = {k.removeprefix("base.").removeprefix("backbone."): v for k, v in state_dict.items()
             if k.startswith(("backbone.", "base.backbone."))}
    if not found:
        raise CheckpointError(f"{name} holds no IR50 backbone tensors "
                              f"({len(state_dict)} tensors in {naming} names)")
    target = dict((model.base if isinstance(model, CrossModel) else model).backbone.state_dict(keep_vars=True))
    missing = ["backbone." + k for k in target if k not in found]
    _check_values(name, found, target, [k for k in target if k in found])
    shape_errors = [f"backbone.{k}: file {tuple(found[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in target.items() if k in found and found[k].shape != v.shape]
    if missing or shape_errors:
        raise CheckpointError(f"{name} does not fit the model's backbone (is the model size "
                              f"right?):" + _key_list("missing from the file", missing)
                              + _key_list("with other shapes", shape_errors))
    with torch.no_grad():
        for key, tensor in target.items():
            tensor.copy_(found[key])
    return len(target), container_format if naming == "ours" else naming
