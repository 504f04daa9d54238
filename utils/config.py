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
    RunSettings,
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
           "parse_args", "read_json_file", "resolve_config", "resolve_settings", "model_from_config", "transforms_for"]


def resolve_settings(arch, args):
    """The run's `RunSettings`: command-line values, with the dataset's recipe filling everything left unset."""
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
    settings = RunSettings.from_mapping(config)
    if settings.compile:
        check_compile_backend(settings.compile_backend)
    if settings.tensorboard and not tensorboard_available():
        raise UsageError("--tensorboard needs the tensorboard package: pip install -r requirements-tensorboard.txt")
    if not args.evaluate:
        refuse_inapplicable(settings, given)
    return settings


def resolve_config(arch, args):
    """`resolve_settings` as the plain dict a run saves."""
    return resolve_settings(arch, args).as_dict()


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


def refuse_inapplicable(settings, given):
    """Refuse, naming both options, a given option that the rest of the settings ignore."""
    for key, reason in inapplicable_options(settings):
        if key in given:
            raise UsageError(f"{flag(key)} has no effect {reason}")


def inapplicable_options(settings):
    """`(option, why it has no effect)` for every option these settings ignore."""
    ignored, arch = [], architecture(settings.arch)
    if not arch.cross:
        ignored += [(key, "with --baseline (no cross module)") for key in names(CROSS)]
    elif not arch.diff_class_pairs:
        ignored.append(("matrix", f"with main_{arch.title}.py (the S/D terms are QCS's)"))
    if settings.connection != "vit":
        ignored.append(("cross_drop", f"with --connection {settings.connection} (no cross ViT)"))
    if settings.select_on != "val":
        ignored.append(("val_fraction", "without --select-on val (nothing would use the held-out images)"))
    if settings.distill == "none":
        ignored += [(key, "without --distill") for key in ("distill_weight", "temperature")]
    elif settings.distill not in TEMPERATURE_DISTILLS:
        ignored.append(("temperature", f"with --distill {settings.distill} (only {' and '.join(TEMPERATURE_DISTILLS)} "
                                       "have a temperature)"))
    cross_vit_drop = arch.cross and settings.connection == "vit" and settings.cross_drop > 0
    if settings.drop == 0 and not cross_vit_drop:
        ignored.append(("proj_drop_rule", "when no ViT has dropout (--drop 0, and --cross-drop 0 or no "
                                          "cross ViT): both rules give no projection dropout"))
    return ignored


def tensorboard_available():
    """Whether `--tensorboard` can work (the optional `tensorboard` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


def model_from_config(config):
    """The network the settings (RunSettings, or their dict) describe."""
    settings = RunSettings.of(config)
    options = {key: getattr(settings, key) for key in names(MODEL) if getattr(settings, key) is not None}
    return build_model(settings.arch, settings.num_classes, checkpoint_backbone=settings.checkpoint_backbone,
                       **options)


def transforms_for(settings):
    """The run's train augmentation and the test transform that goes with it."""
    augmentation, image_size = dict(settings.augmentation), settings.image_size
    return (train_transform(**augmentation, image_size=image_size),
            test_transform_for(augmentation, image_size=image_size))
