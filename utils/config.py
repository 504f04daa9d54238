"""The command line of `main_DCS.py` / `main_QCS.py` and the run configuration it resolves to.

One place decides what a run's settings are: the parser, the dataset recipe filling what the
command line leaves unset, range checks, options that cannot apply, and the settings a resumed
run takes from its checkpoint.
"""
import importlib.util
import json
from pathlib import Path

from data_preprocessing import test_transform_for, train_transform
from data_preprocessing.files import InputError, read_bytes
from models import build_model
from models.architectures import architecture

from .recipes import recipe
from .settings import (
    CROSS,
    DEFAULT_DATASET,
    DEFAULT_PRETRAINED,
    DERIVED,
    MODEL,
    NOT_REPLAYED,
    RECIPE,
    TEMPERATURE_DISTILLS,
    DefaultsOnceFormatter,
    UsageError,
    build_parser,
    check,
    check_compile_backend,
    flag,
    given_options,
    names,
    parse_args,
    read_json_file,
    refuse_mode_conflicts,
)

# re-exported: the settings' home was this module
__all__ = ["DEFAULT_PRETRAINED", "DefaultsOnceFormatter", "UsageError", "build_parser", "flag", "given_options",
           "parse_args", "read_json_file", "resolve_config", "model_from_config", "transforms_for"]


def resolve_config(arch, args):
    """Command-line values, with the dataset's recipe filling everything left unset."""
    given = getattr(args, "given", set())
    refuse_mode_conflicts(args, given)
    config = {k: v for k, v in vars(args).items() if k != "given"}
    replayed = read_replayed_config(args.config, arch) if args.config else {}
    not_replayed = given | set(names(NOT_REPLAYED))
    config.update({k: v for k, v in replayed.items() if k in config and k not in not_replayed})
    config["dataset"] = config["dataset"] or DEFAULT_DATASET
    defaults = recipe(arch, config["dataset"])
    for key in names(RECIPE):
        if config[key] is None:
            config[key] = defaults[key]
    same_recipe = replayed and "dataset" not in given
    for key in names(DERIVED):
        config[key] = replayed.get(key, defaults[key]) if same_recipe else defaults[key]
    config["arch"] = "base" if config["baseline"] else arch
    config["recipe_arch"] = arch
    if replayed:
        config["replayed_from"] = str(Path(args.config).resolve())
        config["replay_overrides"] = sorted(flag(key) for key in given - set(names(NOT_REPLAYED)))
    check(config)
    if config["compile"]:
        check_compile_backend(config["compile_backend"])
    if config["tensorboard"] and not tensorboard_available():
        raise UsageError("--tensorboard needs the tensorboard package: pip install -r requirements-tensorboard.txt")
    if not args.evaluate:
        refuse_inapplicable(config, given)
    return config


def read_replayed_config(path, arch):
    """`--config RUN/config.json`: an earlier run's resolved settings, checked like the command line's."""
    try:
        saved = json.loads(read_bytes(path, "--config"))
    except InputError as error:
        raise UsageError(str(error)) from None
    except (RecursionError, ValueError) as error:
        raise UsageError(f"--config {path}: not a readable JSON file ({error})") from None
    if not isinstance(saved, dict) or "recipe_arch" not in saved:
        raise UsageError(f"--config {path}: not a run's config.json (no recipe_arch)")
    if saved["recipe_arch"] != arch:
        raise UsageError(f"--config {path} is a {str(saved['recipe_arch']).upper()} run; replay it with "
                         f"main_{str(saved['recipe_arch']).upper()}.py")
    try:
        check(saved)
    except UsageError as error:
        raise UsageError(f"--config {path}: its settings are invalid: {error}") from None
    return saved


def refuse_inapplicable(config, given):
    """Refuse, naming both options, a given option that the rest of the configuration ignores."""
    for key, reason in inapplicable_options(config):
        if key in given:
            raise UsageError(f"{flag(key)} has no effect {reason}")


def inapplicable_options(config):
    """`(option, why it has no effect)` for every option this configuration ignores."""
    ignored = []
    if not architecture(config["arch"]).cross:
        ignored += [(key, "with --baseline (no cross module)") for key in names(CROSS)]
    elif not architecture(config["arch"]).diff_class_pairs:
        ignored.append(("matrix", f"with main_{architecture(config['arch']).title}.py (the S/D terms are QCS's)"))
    if config["connection"] != "vit":
        ignored.append(("cross_drop", f"with --connection {config['connection']} (no cross ViT)"))
    if config["select_on"] != "val":
        ignored.append(("val_fraction", "without --select-on val (nothing would use the held-out images)"))
    if config["distill"] == "none":
        ignored += [(key, "without --distill") for key in ("distill_weight", "temperature")]
    elif config["distill"] not in TEMPERATURE_DISTILLS:
        ignored.append(("temperature", f"with --distill {config['distill']} (only {' and '.join(TEMPERATURE_DISTILLS)} "
                                       "have a temperature)"))
    cross_vit_drop = architecture(config["arch"]).cross and config["connection"] == "vit" and config["cross_drop"] > 0
    if config["drop"] == 0 and not cross_vit_drop:
        ignored.append(("proj_drop_rule", "when no ViT has dropout (--drop 0, and --cross-drop 0 or no "
                                          "cross ViT): both rules give no projection dropout"))
    return ignored


def tensorboard_available():
    """Whether `--tensorboard` can work (the optional `tensorboard` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


def model_from_config(config):
    """The network the configuration describes."""
    options = {key: config[key] for key in names(MODEL) if key in config}  # files from before vit_init lack it
    return build_model(config["arch"], config["num_classes"], checkpoint_backbone=config["checkpoint_backbone"],
                       **options)


def transforms_for(config):
    """The run's train augmentation and the test transform that goes with it."""
    augmentation, image_size = dict(config["augmentation"]), config["image_size"]
    return (train_transform(**augmentation, image_size=image_size),
            test_transform_for(augmentation, image_size=image_size))
