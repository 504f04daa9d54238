"""`build_model`: one entry point for the base, DCS and QCS networks and their ablations."""
from torch import nn

from .architectures import ARCHITECTURES, architecture
from .options import DROPOUT_OPTIONS, MODEL_SIZES, OPTION_CHOICES
from .qcs import BaseBranch, CrossModel

# `{name: branches}` of the released architectures
ARCHS = {name: a.branches for name, a in ARCHITECTURES.items()}


def build_model(arch, num_classes, size="paper", attention="csa", matrix="sd", connection="vit",
                drop=0.0, cross_drop=0.0, proj_drop_rule="auto", cross_block="auto",
                checkpoint_backbone=False, vit_init="released"):
    """Build the `"base"`, `"dcs"` or `"qcs"` network.

    - `size`: "paper" (the published network) or a smaller preset of the same structure ("small", "tiny").
    - `attention`: "csa" or the "sdpa" ablation (for QCS an extension: the release has none);
      `matrix` (QCS): "sd", "s" or "d" (the last two without k, as released);
      `connection`: "vit" (contrastive residual distillation), "gap" or "bp".
    - `drop` / `cross_drop`: dropout of the base / cross ViT.
    - `proj_drop_rule`: dropout on the attention output projection: "attn" uses the attention
      dropout (0, the 7-class releases), "drop" the ViT's dropout (the 8-class releases);
      "auto" picks by `num_classes`.
    - `cross_block`: "inplace" (7-class DCS and all QCS releases) or "prenorm" (8-class DCS
      releases) form of the cross blocks; "auto" picks the released one.
    - `checkpoint_backbone`: recompute the backbone in backward to save memory.
    - `vit_init`: initial weights of the ViTs' linear layers: "released" (truncated normal,
      std 0.01) or "xavier" (Xavier-uniform, for training from random weights; METHOD.md §8).
    The returned model carries its arguments in `model.config`.
    """
    config = dict(arch=arch, num_classes=num_classes, size=size, attention=attention, matrix=matrix,
                  connection=connection, drop=drop, cross_drop=cross_drop,
                  proj_drop_rule=proj_drop_rule, cross_block=cross_block, vit_init=vit_init)
    layout = architecture(arch)
    _check_options(config)
    if cross_block == "auto":
        config["cross_block"] = layout.released_cross_block(num_classes)
    rule = proj_drop_rule if proj_drop_rule != "auto" else ("attn" if num_classes == 7 else "drop")
    dims = MODEL_SIZES[size]
    model = BaseBranch(num_classes, **dims, drop=drop, proj_drop=drop if rule == "drop" else 0.0,
                       checkpoint_backbone=checkpoint_backbone, vit_init=vit_init)
    if layout.cross:
        model = CrossModel(model, layout.branches, num_classes, dims["dim"], dims["num_heads"],
                           attention=attention, matrix=matrix, connection=connection,
                           cross_block=config["cross_block"], cross_drop=cross_drop,
                           cross_proj_drop=cross_drop if rule == "drop" else 0.0, vit_init=vit_init)
    model.config = config
    return model


def _check_options(config):
    """ValueError naming the option, its value and its choices or range (models/options.py)."""
    if not isinstance(config["num_classes"], int) or config["num_classes"] < 2:
        raise ValueError(f"num_classes must be an integer ≥ 2, got {config['num_classes']!r}")
    for name, choices in OPTION_CHOICES.items():
        if config[name] not in choices:
            raise ValueError(f"unknown {name} {config[name]!r}; choose one of {', '.join(choices)}")
    for name in DROPOUT_OPTIONS:
        if not 0.0 <= config[name] < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {config[name]}")


def inference_model(model):
    """The base branch alone (cross modules dropped): same logits as `model(x)`."""
    base = model.base if isinstance(model, CrossModel) else model
    if not isinstance(base, BaseBranch):  # e.g. a compiled or DDP-wrapped model: its cross module would stay
        raise TypeError(f"expected a model from build_model, got {type(model).__name__}")
    return base


def count_parameters(module: nn.Module):
    return sum(p.numel() for p in module.parameters())
