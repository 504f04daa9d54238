"""The allowed values of the model options, each declared once.

`build_model` checks its arguments against this table and the group loss its `distill` form;
the run settings offer the same choices. No torch here: settings code reads it too.
"""

# Same structure at every size; "paper" is the published network, the others are for CPU demos and tests.
MODEL_SIZES = {
    "paper": dict(channels=(64, 128, 256), units=(3, 4, 14), dim=768, num_heads=8, input_size=112),
    "small": dict(channels=(32, 64, 128), units=(2, 2, 4), dim=192, num_heads=4, input_size=112),
    "tiny": dict(channels=(16, 32, 64), units=(1, 1, 2), dim=64, num_heads=4, input_size=56),
}
# The choices of each `build_model` option that takes a name (their meaning: `build_model`'s docstring).
OPTION_CHOICES = {
    "size": tuple(MODEL_SIZES),
    "attention": ("csa", "sdpa"),
    "matrix": ("sd", "s", "d"),
    "connection": ("vit", "gap", "bp"),
    "proj_drop_rule": ("auto", "attn", "drop"),
    "cross_block": ("auto", "inplace", "prenorm"),
    "vit_init": ("released", "xavier"),
}
# The `build_model` options that are a dropout probability, each in [0, 1).
DROPOUT_OPTIONS = ("drop", "cross_drop")
# `--distill` forms: "kl" and "l2" are the release's helpers; "kl-detached" and "mse" are ours.
DISTILL_CHOICES = ("none", "kl", "l2", "kl-detached", "mse")
# The forms that use `temperature`.
TEMPERATURE_DISTILLS = ("kl", "kl-detached")
