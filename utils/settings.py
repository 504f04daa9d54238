"""The run settings of `main_DCS.py` / `main_QCS.py`, each declared once.

`SETTINGS` lists every setting a run resolves and saves (`config.json`, a checkpoint's
`run_config`): its type, its allowed values, its `--help` entry and its roles. The command-line
parser is derived from it, and every value read from anywhere (the command line, a `--config`
file, a checkpoint, an export's `model_info.json`, a tool's options) is checked by `check`
against it. The module imports no torch, so `--help` and usage errors answer at once.
"""
import argparse
import copy
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from data_preprocessing.files import InputError, read_json
from models.architectures import ARCHITECTURES, scripts
from models.options import DISTILL_CHOICES, OPTION_CHOICES, TEMPERATURE_DISTILLS  # noqa: F401 (re-exported)

DEFAULT_PRETRAINED = Path("models/pretrain/ir50.pth")
DEFAULT_DATASET = "RAF-DB"
MAX_WORKERS = 64  # DataLoader worker processes; far more than a machine's cores only costs memory
MAX_COUNT = 10 ** 6  # epochs, batch size, classes, ...: far above any run, far below memory trouble
MAX_SEED = 2 ** 32 - 1  # numpy's seed range
DEFAULT_IMAGE_SIZE = 224  # every released recipe
EXPORT_INFO_FILE = "model_info.json"  # written by `export` beside its model files
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 16, 1024  # the smallest side the backbone's three stages take; a sanity cap
DATASET_NAMES = ("RAF-DB", "FERPlus", "AffectNet-7", "AffectNet-8", "FER2013", "folder", "demo")
DEVICE_CHOICES = ("auto", "cpu", "cuda")  # the `--device` option of every command
ARCH_NAMES = tuple(ARCHITECTURES)
TTA_CHOICES = ("none", "flip")
GROUPS = {"data": "data", "training": "training (defaults: the dataset's released recipe)",
          "model": "model (ablations of the paper)", "run": "run"}

# Roles of a setting
TRAINING = "training"  # only shapes training: `--evaluate` follows the checkpoint and refuses it
CROSS = "cross"  # only used by the cross module: `--baseline` refuses it
RESUMABLE = "resumable"  # a resumed run may change it; every other setting comes from the checkpoint
NOT_REPLAYED = "not_replayed"  # names this invocation's files: never taken from another run's config.json
RECIPE = "recipe"  # left unset, it comes from the dataset's recipe
DERIVED = "derived"  # follows from the recipe (never an option)
MODEL = "model"  # an argument of `build_model`


class UsageError(Exception):
    """A problem with the command line or its inputs, reported before any training starts."""


@dataclass(frozen=True)
class Setting:
    """One run setting. `kind`: int, float, str, bool or dict; `bounds`: an interval such as
    "[1, 64]", "(0, 1]" or "[0, inf)"; `nullable`: whether a file may hold null for it (an
    unset option, for texts); `group`: its `--help` group (None: not an option); `cli`: the
    parser's extra keywords (help, default, metavar, a short name, a tri-state switch)."""
    name: str
    kind: type
    group: str | None = None
    bounds: str | None = None
    choices: tuple | None = None
    nullable: bool = False
    roles: tuple = ()
    short: str | None = None
    cli: dict | None = None


def _option(name, kind, group, roles=(), bounds=None, choices=None, nullable=None, short=None, **cli):
    """A setting that is also a command-line option. A model option's choices come from
    `OPTION_CHOICES`; a text may be null unless it is one of given choices."""
    choices = OPTION_CHOICES.get(name) if choices is None else choices
    nullable = kind is str and choices is None if nullable is None else nullable
    return Setting(name, kind, group, bounds, choices, nullable, roles, short, cli)


SETTINGS = (
    _option("dataset", str, "data", choices=DATASET_NAMES,
            help="default RAF-DB; with --evaluate of our checkpoint, the dataset it was trained on"),
    _option("data_root", str, "data", help="dataset folder (default: ./datas/<dataset>)"),
    _option("classes", str, "data", help="comma-separated class names in label order (folder datasets)"),
    _option("workers", int, "data", (RESUMABLE,), f"[0, {MAX_WORKERS}]", default=min(8, os.cpu_count() or 1),
            help="DataLoader workers (default: the CPU count, at most 8)"),
    _option("balanced_sampler", bool, "data", (TRAINING, RECIPE), switch=True,
            help="class-balanced anchors (default: on for AffectNet only)"),
    _option("image_size", int, "data", (RECIPE,), f"[{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}]",
            help="final image side in pixels (default 224; 56 for demo)"),
    _option("device_augment", bool, "data", (TRAINING,),
            help="training only: the workers do decode and the geometric steps on uint8 images; "
                 "ColorJitter, ToTensor, Normalize and RandomErasing run batched on the training "
                 "device (the same distribution; for GPU training: on a CPU it moves the work into "
                 "the training process)"),
    _option("epochs", int, "training", (TRAINING, RESUMABLE, RECIPE), f"[1, {MAX_COUNT}]"),
    _option("batch_size", int, "training", (RECIPE,), f"[1, {MAX_COUNT}]", short="-b",
            help="anchors per step and per process"),
    _option("lr", float, "training", (TRAINING, RECIPE), "(0, inf)"),
    _option("rho", float, "training", (TRAINING,), "[0, inf)", default=0.05, help="SAM neighbourhood size"),
    _option("gamma", float, "training", (TRAINING,), "(0, 1]", default=0.98, help="ExponentialLR decay per epoch"),
    _option("seed", int, "training", (TRAINING,), f"[0, {MAX_SEED}]", default=0),
    _option("pretrained", str, "training", (TRAINING,), default=str(DEFAULT_PRETRAINED),
            help="initialise the IR50 backbone from this file: face-recognition IR50 weights "
                 "(either naming) or any checkpoint (ours, the authors', a state dict), of "
                 "which only the backbone is taken ('none' to skip)"),
    _option("baseline", bool, "training", (TRAINING,),
            help="train the base branch alone (IR50+ViT, no cross module) on single images, "
                 "with this script's recipe: the paper's baseline"),
    _option("size", str, "model", (RECIPE, MODEL), help="model size preset (default paper; tiny for demo)"),
    _option("attention", str, "model", (TRAINING, CROSS, MODEL),
            default="csa", help="csa, or the scaled dot-product ablation sdpa (as released for DCS; "
                                "for QCS an extension of this repository: the release has none)"),
    _option("matrix", str, "model", (TRAINING, CROSS, MODEL),
            default="sd", help="QCS similarity terms: sd = S + k·D, s = S only, d = D only (no k)"),
    _option("connection", str, "model", (TRAINING, CROSS, MODEL), default="vit"),
    _option("drop", float, "model", (TRAINING, RECIPE, MODEL), "[0, 1)", help="base ViT dropout"),
    _option("cross_drop", float, "model", (TRAINING, CROSS, RECIPE, MODEL), "[0, 1)", help="cross ViT dropout"),
    _option("proj_drop_rule", str, "model", (TRAINING, MODEL),
            default="auto", help="dropout on the attention projection: auto = as released (none for 7 "
                                 "classes, the ViT's dropout for 8)"),
    _option("cross_block", str, "model", (TRAINING, CROSS, MODEL), default="auto",
            help="cross-block form: auto = as released (pre-norm for 8-class DCS, in-place otherwise)"),
    _option("vit_init", str, "model", (TRAINING, MODEL), default="released",
            help="initial weights of the ViTs' linear layers: released = truncated normal with "
                 "std 0.01; xavier = Xavier-uniform, which lets training from random weights "
                 "(--pretrained none) start learning (see models/METHOD.md §8)"),
    _option("distill", str, "model", (TRAINING, CROSS), choices=DISTILL_CHOICES, default="none",
            help="extra base-vs-cross logit loss: kl and l2 as the release's helpers (teacher not "
                 "detached), kl-detached and mse with the cross logits detached (see models/METHOD.md)"),
    _option("distill_weight", float, "model", (TRAINING, CROSS), "[0, inf)", default=1.0,
            help="with --distill: its weight"),
    _option("temperature", float, "model", (TRAINING, CROSS), "(0, inf)", default=1.0,
            help="with --distill kl or kl-detached: its temperature"),
    _option("output_dir", str, "run", (TRAINING, RESUMABLE, NOT_REPLAYED),
            help="run folder (default: log/<dataset>-<arch>-<time>); must be new"),
    _option("print_freq", int, "run", (TRAINING, RESUMABLE), f"[0, {MAX_COUNT}]", default=50,
            help="log a progress line every N steps, also into log.txt (0: only epoch lines)"),
    _option("save_every", float, "run", (TRAINING, RESUMABLE), "[0, inf)", default=30.0, metavar="MINUTES",
            help="also write a resumable last.pth within an epoch this often (0: at epoch ends only)"),
    _option("resume", str, "run", (RESUMABLE, NOT_REPLAYED), metavar="CKPT",
            help="continue the run saved in CKPT (its last.pth)"),
    _option("config", str, "run", (TRAINING, NOT_REPLAYED), metavar="RUN/config.json",
            help="start a new run with the resolved settings of an earlier run; options given "
                 "on the command line override them"),
    _option("tensorboard", bool, "run", (TRAINING, RESUMABLE),
            help="also write TensorBoard logs into <run folder>/tensorboard (needs "
                 "requirements-tensorboard.txt)"),
    _option("evaluate", str, "run", (NOT_REPLAYED,), metavar="CKPT",
            help="evaluate CKPT (ours or the authors') on the test split and exit"),
    _option("predictions", str, "run", (NOT_REPLAYED,), metavar="FILE.csv",
            help="with --evaluate: per-image logits"),
    _option("tta", str, "run", choices=TTA_CHOICES, default="none",
            help="test-time augmentation of every evaluation (--evaluate and the per-epoch test): "
                 "flip = the mean of the logits of the image and its mirror (not in the release)"),
    _option("select_on", str, "run", (TRAINING,), choices=("test", "val"), default="test",
            help="the split that picks best.pth: test (as released and in the paper) or val, a "
                 "validation split (FERPlus's, or --val-fraction of train); the test accuracy at "
                 "the chosen epoch is reported beside it"),
    _option("val_fraction", float, "run", (TRAINING,), "(0, 1)", nullable=True, metavar="F",
            help="with --select-on val: hold out this stratified, seeded fraction of train as the "
                 "validation split (for datasets without one)"),
    _option("device", str, "run", (RESUMABLE,), choices=DEVICE_CHOICES, default="auto"),
    _option("amp", bool, "run", (RESUMABLE,),
            help="bf16 autocast (CUDA or CPU): faster, results differ slightly from float32"),
    _option("channels_last", bool, "run", (RESUMABLE,), nullable=True, switch=True,
            help="channels_last memory format for the convolutions (default: on with CUDA)"),
    _option("compile", bool, "run", (RESUMABLE,), help="torch.compile the model"),
    _option("compile_backend", str, "run", (RESUMABLE,), default="inductor",
            help="with --compile: the torch.compile backend (e.g. aot_eager, which compiles "
                 "much faster on the CPU but generates no fused kernels)"),
    _option("checkpoint_backbone", bool, "run", (TRAINING,),
            help="recompute backbone activations in backward (less memory)"),
    # resolved from the recipe, the script and the data; saved, never given
    Setting("augmentation", dict, roles=(DERIVED,)),
    Setting("negatives", str, choices=("by_sample", "by_class"), roles=(DERIVED,)),
    Setting("anchor_divisor", int, bounds=f"[1, {MAX_COUNT}]", roles=(DERIVED,)),
    Setting("arch", str, choices=ARCH_NAMES),
    Setting("recipe_arch", str, choices=tuple(scripts())),
    Setting("num_classes", int, bounds=f"[2, {MAX_COUNT}]"),
    Setting("run_id", str, nullable=True),
    Setting("replayed_from", str, nullable=True),
    Setting("branched_from", str, nullable=True),
    Setting("replay_overrides", list, nullable=True),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}
# The counters of a training checkpoint and of its schedule, checked as the settings are.
STATE = {setting.name: setting for setting in (
    Setting("epoch", int, bounds=f"[0, {MAX_COUNT}]"), Setting("step", int, bounds=f"[0, {MAX_COUNT ** 2}]"),
    Setting("best_epoch", int, bounds=f"[0, {MAX_COUNT}]"), Setting("best_acc", float, bounds="[0, 100]"),
    Setting("test_at_best", float, bounds="[0, 100]"), Setting("last_epoch", int, bounds=f"[0, {MAX_COUNT}]"),
    Setting("sum", float, bounds="[0, inf)"), Setting("world_size", int, bounds=f"[1, {MAX_COUNT}]"),
    Setting("groups_done", int, bounds=f"[0, {MAX_COUNT ** 2}]"), BY_NAME["gamma"])}


def names(role):
    """The names of the settings with `role`, in declaration order."""
    return tuple(setting.name for setting in SETTINGS if role in setting.roles)


def flag(key):
    """`batch_size` → `--batch-size`."""
    return "--" + key.replace("_", "-")


# ------------------------------------------------------------------------------ checking values

def _interval(bounds):
    """"(0, 1]" → (0, 1, low excluded, high excluded); "inf": no bound."""
    low, high = (float(end) if end == "inf" else int(end) for end in bounds[1:-1].split(", "))
    return low, high, bounds[0] == "(", bounds[-1] == ")"


def describe_bounds(bounds):
    """The allowed range in words, as the messages give it."""
    low, high, low_open, high_open = _interval(bounds)
    if high == math.inf:
        return f"> {low}" if low_open else f"at least {low}"
    if high_open:
        return f"between {low} and {high} (exclusive)" if low_open else f"in [{low}, {high})"
    return f"> {low} and ≤ {high}" if low_open else f"at least {low} and at most {high}"


def problem(setting, value):
    """What is wrong with `value` for `setting` (a message without the name), or None."""
    kinds = (int, float) if setting.kind is float else setting.kind  # a whole number is a number too
    if value is None and setting.nullable:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and setting.kind is not bool):
        kind = {bool: "true, false" if setting.nullable else "true or false", int: "a whole number",
                float: "a number", str: "a text", dict: "a mapping", list: "a list"}[setting.kind]
        return f"must be {kind}{' or null' if setting.nullable else ''}, got {value!r}"
    if setting.choices is not None and value not in setting.choices:
        return f"{value!r} is not one of {', '.join(map(str, setting.choices))}"
    if setting.bounds is not None:
        low, high, low_open, high_open = _interval(setting.bounds)
        ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
        if not ok or (setting.kind is float and not math.isfinite(value)):  # NaN fails every comparison
            return f"must be {describe_bounds(setting.bounds)}, got {value}"
    return None


def augmentation_problem(augmentation, image_size):
    """What keeps the saved train augmentation (and its test transform) from building, or None."""
    from data_preprocessing.transforms import test_transform_for, train_transform  # torch: only for files

    numbers = [v for value in augmentation.values() for v in (value if isinstance(value, (list, tuple)) else [value])
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not all(math.isfinite(v) for v in numbers):
        return f"{augmentation!r} holds a value that is not a finite number"
    try:
        train_transform(**augmentation, image_size=image_size)
        test_transform_for(augmentation, image_size=image_size)
    except (TypeError, ValueError) as error:
        return f"{augmentation!r} is invalid: {error}"
    return None


def check(values, label=flag, schema=BY_NAME):
    """UsageError, one line naming the setting (`label(name)`), for the first value in the
    mapping `values` that its setting in `schema` does not allow. Keys that name no setting
    (ones a newer or older release wrote) are left alone."""
    for name, value in values.items():
        setting = schema.get(name)
        message = problem(setting, value) if setting else None
        if message is None and setting and setting.kind is dict and value is not None:
            message = augmentation_problem(value, values.get("image_size"))
        if message:
            raise UsageError(f"{label(name)} {message}")


class _RunSettingsMethods:
    """The methods of `RunSettings`."""

    @classmethod
    def from_mapping(cls, values):
        """The settings `values` holds (a resolved command line, a `--config` file, a checkpoint's
        `run_config`), each checked against its `Setting` by `check` (UsageError otherwise)."""
        check(values)
        return cls.of(values)

    @classmethod
    def of(cls, values):
        """`values` itself when it is RunSettings, else the settings of a mapping already resolved
        (a tool's `resolve_config` result), taken as they are. Keys that name no setting (written
        by an older or newer release) are kept, to be saved again."""
        if isinstance(values, cls):
            return values
        settings = cls(**{name: value for name, value in values.items() if name in BY_NAME})
        settings._extra = {name: value for name, value in values.items() if name not in BY_NAME}
        settings._order = list(values)
        return settings

    def __setattr__(self, name, value):
        """A setting set later (`num_classes`, `run_id`, ...) is saved after those set before it."""
        super().__setattr__(name, value)
        order = vars(self).get("_order")
        if order is not None and name in BY_NAME and name not in order:
            order.append(name)

    def as_dict(self):
        """The settings as saved (`config.json`, a checkpoint's `run_config`): every key in the
        order it was first set, as the mapping it came from had them."""
        return {name: self._extra[name] if name in self._extra else getattr(self, name) for name in self._order}


# A run's settings as typed attributes (`settings.batch_size`), one field per `Setting`.
RunSettings = dataclasses.make_dataclass(
    "RunSettings", [(setting.name, setting.kind | None, None) for setting in SETTINGS],
    bases=(_RunSettingsMethods,))


def check_compile_backend(backend):
    """`--compile-backend` must name a backend `torch.compile` has here (checked before any work)."""
    import torch._dynamo  # imported only with --compile: it takes a few seconds

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise UsageError(f"--compile-backend {backend!r} is not a torch.compile backend here; "
                         f"choose one of {', '.join(known)}")


def check_options(args, shared=("dataset", "image_size", "batch_size", "seed", "size", "device", "lr")):
    """A tool's options that share a run setting's name and meaning, checked as the run's; unset
    ones (None: taken from the checkpoint) are skipped."""
    check({key: value for key, value in vars(args).items() if key in shared and value is not None})


def read_json_file(path, flag=None):
    """The JSON document in file `path` (a regular file, size and nesting bounded, read through the
    one file boundary); UsageError naming the path and what is wrong otherwise."""
    try:
        return read_json(path, flag)
    except InputError as error:
        raise UsageError(str(error)) from None


# ------------------------------------------------------------------------------ the command line

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


def add_option(group, setting, **overrides):
    """Add `setting` to an argparse parser or group as its option (`overrides`: keywords that differ)."""
    options = dict(setting.cli or {}, **overrides)
    if options.pop("switch", False):
        options.update(action=argparse.BooleanOptionalAction, default=options.get("default"))
    elif setting.kind is bool:
        options["action"] = "store_true"
    else:
        options.update(type=setting.kind if setting.kind is not str else None, choices=setting.choices)
        options = {key: value for key, value in options.items() if value is not None}
    group.add_argument(*filter(None, (setting.short, flag(setting.name))), **options)


def build_parser(arch):
    """The parser of `main_<ARCH>.py` (`arch` "dcs" or "qcs")."""
    parser = argparse.ArgumentParser(
        prog=f"main_{arch.upper()}.py",
        description=f"Train or evaluate {arch.upper()} (IR50+ViT base branch with the "
                    f"{'two' if arch == 'dcs' else 'four'}-branch cross module). Defaults per dataset "
                    "reproduce the authors' released scripts; every one can be overridden.",
        formatter_class=DefaultsOnceFormatter)
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for setting in SETTINGS:
        if setting.group:
            add_option(groups[setting.group], setting)
    return parser


def parse_args(arch, argv=None):
    """Parsed options, with `given`: the names of those given on the command line."""
    args = build_parser(arch).parse_args(argv)
    args.given = given_options(arch, argv)
    return args


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
        training = [flag(key) for key in names(TRAINING) if key in given]
        if training:
            raise UsageError(f"{', '.join(training)} only appl{'ies' if len(training) == 1 else 'y'} to "
                             "training; --evaluate follows the checkpoint")


def parse_or_exit(arch):
    """The command line of `main_<ARCH>.py`, with the options given checked before torch is imported:
    `--help` answers at once, and so does a usage error (one line, exit status 2)."""
    args = parse_args(arch)
    try:
        refuse_mode_conflicts(args, args.given)
        check({key: value for key, value in vars(args).items() if key in args.given})
    except UsageError as error:
        print(f"{time.strftime('%H:%M:%S')} error: {error}")
        sys.exit(2)


def given_options(arch, argv):
    """Names of the options given on the command line, whatever their values."""
    probe = build_parser(arch)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))
