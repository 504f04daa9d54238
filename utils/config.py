"""The command line of `main_DCS.py` / `main_QCS.py` and the run configuration it resolves to.

One place decides what a run's settings are: the parser, the dataset recipe filling what the
command line leaves unset, range checks, options that cannot apply, and the settings a resumed
run takes from its checkpoint.
"""
import argparse
import copy
import importlib.util
import json
import math
import os
from pathlib import Path

from data_preprocessing import DATASET_NAMES, MAX_IMAGE_SIDE, test_transform_for, train_transform
from data_preprocessing.files import InputError, read_bytes, read_json
from models import ARCHS, DISTILL_CHOICES, OPTION_CHOICES, TEMPERATURE_DISTILLS, build_model
from models.architectures import architecture, scripts

from .device import DEVICE_CHOICES
from .recipes import recipe

DEFAULT_PRETRAINED = Path("models/pretrain/ir50.pth")
MAX_WORKERS = 64  # DataLoader worker processes; far more than a machine's cores only costs memory
DEFAULT_DATASET = "RAF-DB"
# Options a resumed run may change; everything else comes from the checkpoint.
RESUME_OVERRIDABLE = {"epochs", "workers", "device", "amp", "compile", "compile_backend", "channels_last",
                      "print_freq", "save_every", "resume", "output_dir", "tensorboard"}
# Options that name this invocation's files, never replayed from another run's config.json.
NOT_REPLAYED = {"resume", "evaluate", "predictions", "output_dir", "config"}
# Settings that follow from the dataset's recipe rather than from an option.
RECIPE_DERIVED = ("augmentation", "negatives", "anchor_divisor")
# Options that only shape training; `--evaluate` follows the checkpoint and refuses them.
TRAINING_ONLY = ("epochs", "lr", "rho", "gamma", "seed", "pretrained", "baseline", "balanced_sampler",
                 "attention", "matrix", "connection", "drop", "cross_drop", "proj_drop_rule", "cross_block",
                 "distill", "distill_weight", "temperature", "output_dir", "print_freq", "save_every",
                 "checkpoint_backbone", "tensorboard", "config", "select_on", "val_fraction", "device_augment",
                 "vit_init")
CROSS_MODULE_ONLY = ("attention", "matrix", "connection", "cross_drop", "cross_block", "distill",
                     "distill_weight", "temperature")
# option → (lowest, highest, whether the bounds themselves are allowed)
OPTION_RANGES = {
    "epochs": (1, None, True), "batch_size": (1, None, True), "workers": (0, MAX_WORKERS, True),
    "image_size": (16, MAX_IMAGE_SIDE, True), "lr": (0, None, False), "rho": (0, None, True),
    "gamma": (0, 1, False), "drop": (0, 1, None), "cross_drop": (0, 1, None),
    "temperature": (0, None, False), "distill_weight": (0, None, True), "print_freq": (0, None, True),
    "save_every": (0, None, True), "seed": (0, 2 ** 32 - 1, True), "anchor_divisor": (1, None, True),
}
TTA_CHOICES = ("none", "flip")
# Settings with a fixed set of values, as a resumed run's saved configuration must hold them.
SETTING_CHOICES = {**{key: OPTION_CHOICES[key] for key in OPTION_CHOICES}, "dataset": DATASET_NAMES,
                   "distill": DISTILL_CHOICES, "device": DEVICE_CHOICES, "arch": tuple(ARCHS),
                   "recipe_arch": scripts(), "negatives": ("by_sample", "by_class"), "tta": TTA_CHOICES,
                   "select_on": ("test", "val")}
FLAGS = ("baseline", "amp", "compile", "checkpoint_backbone", "tensorboard", "device_augment", "balanced_sampler")
WHOLE_NUMBERS = ("epochs", "batch_size", "workers", "image_size", "seed", "print_freq", "anchor_divisor",
                 "num_classes")
# Settings that hold a text (a path, a list of names, a backend) or nothing, when read from a file.
TEXTS = ("data_root", "classes", "output_dir", "resume", "evaluate", "predictions", "config", "pretrained",
         "compile_backend", "size", "run_id", "replayed_from", "branched_from")


class UsageError(Exception):
    """A problem with the command line or its inputs, reported before any training starts."""


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with each option's default shown once: `(default: X)` is added only where the help
    does not state the default already and there is one to show (not None, not an off switch)."""

    def _format_action(self, action):
        if action.help is None and shows_default(action):  # argparse prints no help line at all for these
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        help_text = action.help or ""
        if "default" in help_text or not shows_default(action):
            return help_text
        return super()._get_help_string(action)


def shows_default(action):
    """Whether `--help` should show the action's default: an option (or optional positional) whose
    default is a value, not None, an off switch or suppressed (identity: 0 is a value, False is not)."""
    default = action.default
    optional = bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
    return optional and default is not None and default is not False and default is not argparse.SUPPRESS


def flag(key):
    """`batch_size` → `--batch-size`."""
    return "--" + key.replace("_", "-")


def build_parser(arch):
    """The parser of `main_<ARCH>.py` (`arch` "dcs" or "qcs")."""
    parser = argparse.ArgumentParser(
        prog=f"main_{arch.upper()}.py",
        description=f"Train or evaluate {arch.upper()} (IR50+ViT base branch with the "
                    f"{architecture(arch).cross_module}). Defaults per dataset "
                    "reproduce the authors' released scripts; every one can be overridden.",
        formatter_class=DefaultsOnceFormatter)
    _add_data_options(parser.add_argument_group("data"))
    _add_training_options(parser.add_argument_group("training (defaults: the dataset's released recipe)"))
    _add_model_options(parser.add_argument_group("model (ablations of the paper)"))
    _add_run_options(parser.add_argument_group("run"))
    return parser


def _add_data_options(data):
    data.add_argument("--dataset", choices=DATASET_NAMES,
                      help="default RAF-DB; with --evaluate of our checkpoint, the dataset it was trained on")
    data.add_argument("--data-root", help="dataset folder (default: ./datas/<dataset>)")
    data.add_argument("--classes", help="comma-separated class names in label order (folder datasets)")
    data.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                      help="DataLoader workers (default: the CPU count, at most 8)")
    data.add_argument("--balanced-sampler", action=argparse.BooleanOptionalAction, default=None,
                      help="class-balanced anchors (default: on for AffectNet only)")
    data.add_argument("--image-size", type=int, help="final image side in pixels (default 224; 56 for demo)")
    data.add_argument("--device-augment", action="store_true",
                      help="training only: the workers do decode and the geometric steps on uint8 images; "
                           "ColorJitter, ToTensor, Normalize and RandomErasing run batched on the training "
                           "device (the same distribution; for GPU training: on a CPU it moves the work into "
                           "the training process)")


def _add_training_options(train):
    train.add_argument("--epochs", type=int)
    train.add_argument("-b", "--batch-size", type=int, help="anchors per step and per process")
    train.add_argument("--lr", type=float)
    train.add_argument("--rho", type=float, default=0.05, help="SAM neighbourhood size")
    train.add_argument("--gamma", type=float, default=0.98, help="ExponentialLR decay per epoch")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--pretrained", default=str(DEFAULT_PRETRAINED),
                       help="initialise the IR50 backbone from this file: face-recognition IR50 weights "
                            "(either naming) or any checkpoint (ours, the authors', a state dict), of "
                            "which only the backbone is taken ('none' to skip)")
    train.add_argument("--baseline", action="store_true",
                       help="train the base branch alone (IR50+ViT, no cross module) on single images, "
                            "with this script's recipe: the paper's baseline")


def _add_model_options(model):
    model.add_argument("--size", choices=OPTION_CHOICES["size"],
                       help="model size preset (default paper; tiny for demo)")
    model.add_argument("--attention", default="csa", choices=OPTION_CHOICES["attention"],
                       help="csa, or the scaled dot-product ablation sdpa (as released for DCS; "
                            "for QCS an extension of this repository: the release has none)")
    model.add_argument("--matrix", default="sd", choices=OPTION_CHOICES["matrix"],
                       help="QCS similarity terms: sd = S + k·D, s = S only, d = D only (no k)")
    model.add_argument("--connection", default="vit", choices=OPTION_CHOICES["connection"])
    model.add_argument("--drop", type=float, help="base ViT dropout")
    model.add_argument("--cross-drop", type=float, help="cross ViT dropout")
    model.add_argument("--proj-drop-rule", default="auto", choices=OPTION_CHOICES["proj_drop_rule"],
                       help="dropout on the attention projection: auto = as released (none for 7 "
                            "classes, the ViT's dropout for 8)")
    model.add_argument("--cross-block", default="auto", choices=OPTION_CHOICES["cross_block"],
                       help="cross-block form: auto = as released (pre-norm for 8-class DCS, "
                            "in-place otherwise)")
    model.add_argument("--vit-init", default="released", choices=OPTION_CHOICES["vit_init"],
                       help="initial weights of the ViTs' linear layers: released = truncated normal with "
                            "std 0.01; xavier = Xavier-uniform, which lets training from random weights "
                            "(--pretrained none) start learning (see models/METHOD.md §8)")
    model.add_argument("--distill", default="none", choices=DISTILL_CHOICES,
                       help="extra base-vs-cross logit loss: kl and l2 as the release's helpers (teacher not "
                            "detached), kl-detached and mse with the cross logits detached (see models/METHOD.md)")
    model.add_argument("--distill-weight", type=float, default=1.0, help="with --distill: its weight")
    model.add_argument("--temperature", type=float, default=1.0,
                       help="with --distill kl or kl-detached: its temperature")


def _add_run_options(run):
    run.add_argument("--output-dir", help="run folder (default: log/<dataset>-<arch>-<time>); must be new")
    run.add_argument("--print-freq", type=int, default=50,
                     help="log a progress line every N steps, also into log.txt (0: only epoch lines)")
    run.add_argument("--save-every", type=float, default=30.0, metavar="MINUTES",
                     help="also write a resumable last.pth within an epoch this often (0: at epoch ends only)")
    run.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT (its last.pth)")
    run.add_argument("--config", metavar="RUN/config.json",
                     help="start a new run with the resolved settings of an earlier run; options given "
                          "on the command line override them")
    run.add_argument("--tensorboard", action="store_true",
                     help="also write TensorBoard logs into <run folder>/tensorboard (needs "
                          "requirements-tensorboard.txt)")
    run.add_argument("--evaluate", metavar="CKPT",
                     help="evaluate CKPT (ours or the authors') on the test split and exit")
    run.add_argument("--predictions", metavar="FILE.csv", help="with --evaluate: per-image logits")
    run.add_argument("--tta", default="none", choices=TTA_CHOICES,
                     help="test-time augmentation of every evaluation (--evaluate and the per-epoch test): "
                          "flip = the mean of the logits of the image and its mirror (not in the release)")
    run.add_argument("--select-on", default="test", choices=("test", "val"),
                     help="the split that picks best.pth: test (as released and in the paper) or val, a "
                          "validation split (FERPlus's, or --val-fraction of train); the test accuracy at "
                          "the chosen epoch is reported beside it")
    run.add_argument("--val-fraction", type=float, metavar="F",
                     help="with --select-on val: hold out this stratified, seeded fraction of train as the "
                          "validation split (for datasets without one)")
    run.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    run.add_argument("--amp", action="store_true",
                     help="bf16 autocast (CUDA or CPU): faster, results differ slightly from float32")
    run.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                     help="channels_last memory format for the convolutions (default: on with CUDA)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--compile-backend", default="inductor",
                     help="with --compile: the torch.compile backend (e.g. aot_eager, which compiles "
                          "much faster on the CPU but generates no fused kernels)")
    run.add_argument("--checkpoint-backbone", action="store_true",
                     help="recompute backbone activations in backward (less memory)")


def parse_args(arch, argv=None):
    """Parsed options, with `given`: the names of those given on the command line."""
    args = build_parser(arch).parse_args(argv)
    args.given = given_options(arch, argv)
    return args


def given_options(arch, argv):
    """Names of the options given on the command line, whatever their values."""
    probe = build_parser(arch)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def resolve_config(arch, args):
    """Command-line values, with the dataset's recipe filling everything left unset."""
    given = getattr(args, "given", set())
    refuse_mode_conflicts(args, given)
    config = {k: v for k, v in vars(args).items() if k != "given"}
    replayed = read_replayed_config(args.config, arch) if args.config else {}
    config.update({k: v for k, v in replayed.items() if k in config and k not in given | NOT_REPLAYED})
    config["dataset"] = config["dataset"] or DEFAULT_DATASET
    defaults = recipe(arch, config["dataset"])
    for key in ("epochs", "batch_size", "lr", "drop", "cross_drop", "size", "image_size", "balanced_sampler"):
        if config[key] is None:
            config[key] = defaults[key]
    same_recipe = replayed and "dataset" not in given
    for key in RECIPE_DERIVED:
        config[key] = replayed.get(key, defaults[key]) if same_recipe else defaults[key]
    config["arch"] = "base" if config["baseline"] else arch
    config["recipe_arch"] = arch
    if replayed:
        config["replayed_from"] = str(Path(args.config).resolve())
        config["replay_overrides"] = sorted(flag(key) for key in given - NOT_REPLAYED)
    check_ranges(config)
    if config["val_fraction"] is not None and not 0 < config["val_fraction"] < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {config['val_fraction']}")
    if config["compile"]:
        check_compile_backend(config["compile_backend"])
    if config["tensorboard"] and not tensorboard_available():
        raise UsageError("--tensorboard needs the tensorboard package: pip install -r requirements-tensorboard.txt")
    if not args.evaluate:
        refuse_inapplicable(config, given)
    return config


def read_json_file(path, flag=None):
    """The JSON document in file `path` (a regular file, size and nesting bounded); UsageError
    `<path>: not valid JSON (...)` or `<path>: <why it cannot be read>` otherwise."""
    try:
        return read_json(path, flag)
    except InputError as error:
        raise UsageError(str(error)) from None


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
        check_saved_config(saved)
    except UsageError as error:
        raise UsageError(f"--config {path}: its settings are invalid: {error}") from None
    return saved


def refuse_mode_conflicts(args, given):
    """Options that belong to another mode (training, resuming, evaluating) than the one asked for."""
    if args.resume and args.evaluate:
        raise UsageError("--resume and --evaluate cannot be used together")
    if args.config and args.resume:
        raise UsageError("--config starts a new run from an earlier run's settings; --resume continues a "
                         "run with its own: give one of them")
    if args.predictions and not args.evaluate:
        raise UsageError("--predictions is only used with --evaluate")
    if "compile_backend" in given and not args.compile:
        raise UsageError("--compile-backend is only used with --compile")
    if args.evaluate:
        training = [flag(key) for key in TRAINING_ONLY if key in given]
        if training:
            raise UsageError(f"{', '.join(training)} only appl{'ies' if len(training) == 1 else 'y'} to "
                             "training; --evaluate follows the checkpoint")


def refuse_inapplicable(config, given):
    """Refuse, naming both options, a given option that the rest of the configuration ignores."""
    for key, reason in inapplicable_options(config):
        if key in given:
            raise UsageError(f"{flag(key)} has no effect {reason}")


def inapplicable_options(config):
    """`(option, why it has no effect)` for every option this configuration ignores."""
    ignored = []
    if not architecture(config["arch"]).cross:
        ignored += [(key, "with --baseline (no cross module)") for key in CROSS_MODULE_ONLY]
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


def check_ranges(config):
    """One clear line, naming the flag, for the first numeric option out of its range."""
    for key, (low, high, inclusive) in OPTION_RANGES.items():
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{flag(key)} must be a number, got {value!r}")
        if inclusive is None:  # a rate: [low, high)
            ok, allowed = low <= value < high, f"in [{low}, {high})"
        elif inclusive:
            ok = value >= low and (high is None or value <= high)
            allowed = f"at least {low}" + (f" and at most {high}" if high is not None else "")
        else:
            ok = value > low and (high is None or value <= high)
            allowed = f"> {low}" + (f" and ≤ {high}" if high is not None else "")
        if not ok:  # NaN fails every comparison too
            raise UsageError(f"{flag(key)} must be {allowed}, got {value}")


def check_saved_config(config):
    """A configuration read from a file (a checkpoint's, or `config.json`) passes the same checks
    as the command line's, plus the types the command line enforces by parsing."""
    for key in FLAGS:
        if not isinstance(config.get(key, False), bool):
            raise UsageError(f"{flag(key)} must be true or false, got {config[key]!r}")
    for key in WHOLE_NUMBERS:
        if key in config and (isinstance(config[key], bool) or not isinstance(config[key], int)):
            raise UsageError(f"{flag(key)} must be a whole number, got {config[key]!r}")
    for key in TEXTS:
        if config.get(key) is not None and not isinstance(config[key], str):
            raise UsageError(f"{flag(key)} must be a text or null, got {config[key]!r}")
    if config.get("channels_last") not in (None, True, False):
        raise UsageError(f"--channels-last must be true, false or null, got {config['channels_last']!r}")
    check_ranges(config)
    for key, choices in SETTING_CHOICES.items():
        if key in config and config[key] not in choices:
            raise UsageError(f"{flag(key)} {config[key]!r} is not one of {', '.join(map(str, choices))}")
    check_augmentation(config.get("augmentation"), config.get("image_size"))


def check_augmentation(augmentation, image_size):
    """The saved train augmentation must build, with its test transform, at the saved image size."""
    if augmentation is None:
        return
    if not isinstance(augmentation, dict):
        raise UsageError(f"augmentation must be a mapping, got {augmentation!r}")
    numbers = [v for value in augmentation.values() for v in (value if isinstance(value, (list, tuple)) else [value])
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not all(math.isfinite(v) for v in numbers):
        raise UsageError(f"augmentation {augmentation!r} holds a value that is not a finite number")
    try:
        train_transform(**augmentation, image_size=image_size)
        test_transform_for(augmentation, image_size=image_size)
    except (TypeError, ValueError) as error:
        raise UsageError(f"augmentation {augmentation!r} is invalid: {error}") from None


def check_compile_backend(backend):
    """`--compile-backend` must name a backend `torch.compile` has here (checked before any work)."""
    import torch._dynamo  # imported only with --compile: it takes a few seconds

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise UsageError(f"--compile-backend {backend!r} is not a torch.compile backend here; "
                         f"choose one of {', '.join(known)}")


def tensorboard_available():
    """Whether `--tensorboard` can work (the optional `tensorboard` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


def model_from_config(config):
    """The network the configuration describes."""
    return build_model(config["arch"], config["num_classes"], size=config["size"],
                       attention=config["attention"], matrix=config["matrix"],
                       connection=config["connection"], drop=config["drop"],
                       cross_drop=config["cross_drop"], proj_drop_rule=config["proj_drop_rule"],
                       cross_block=config.get("cross_block", "auto"),
                       checkpoint_backbone=config["checkpoint_backbone"],
                       vit_init=config.get("vit_init", "released"))


def transforms_for(config):
    """The run's train augmentation and the test transform that goes with it."""
    augmentation, image_size = dict(config["augmentation"]), config["image_size"]
    return (train_transform(**augmentation, image_size=image_size),
            test_transform_for(augmentation, image_size=image_size))
