"""Checkpoints, in one place: the format, writing, reading, describing, the checks of saved
settings, and the checkpoint side of resuming.

A training checkpoint (`last.pth`, `best.pth`) is a dict: `format` (`CHECKPOINT_FORMAT`), `config`
(the model's), `model` (its state dict), `classes`, `optimizer`, `scheduler`, `rng`, `run_config`
(the run's resolved settings) and the run's counters (`epoch`, `step`, `best_acc`, `best_epoch`,
`test_at_best`, `history`, `epoch_sums`, `world_size`, `groups_done`); a run of several processes
adds `rng_by_rank`, every rank's RNG states. Reading also takes the authors' releases, bare state dicts,
face-recognition IR50 weights and the `.safetensors` export with its `model_info.json`. Every
problem with any of them is a `CheckpointError` whose message names the file.
"""
import os
import pickle
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from data_preprocessing.outputs import atomic_write
from models import MODEL_SIZES, CheckpointError, describe_state_dict, load_backbone, load_weights
from models.architectures import ARCHITECTURES, scripts
from models.qcs import NUM_FEATURE_LEVELS, tokens_per_level
from models.weights import AUTHOR_UNUSED, checkpoint_state_dict, to_our_names

from . import distributed as ddp
from .settings import (
    DEFAULT_PRETRAINED,
    RESUMABLE,
    STATE,
    UsageError,
    check,
    check_compile_backend,
    flag,
    names,
    problem,
    read_json_file,
)

CHECKPOINT_FORMAT = "qcs-fer-checkpoint"
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
FORMAT_TITLES = {
    "ours": "this project's training checkpoint",
    "authors": "the authors' release ({'epoch', 'state_dict', 'best_acc', ...})",
    "state_dict": "bare state dict",
    "ir50": "IR50 face-recognition weights (backbone only)",
    "safetensors": "safetensors export of the base branch (with model_info.json)",
    "onnx": "ONNX export of the base branch (with model_info.json)",
}
EXPORT_INFO_FILE = "model_info.json"  # written by `export` beside its model files
SAFETENSORS_HINT = "pip install -r requirements-safetensors.txt"


# ------------------------------------------------------------------------------ reading

def read_checkpoint(path):
    """`torch.load` on CPU that never runs foreign code; any failure is a `CheckpointError`.

    Classes pickled from the authors' `__main__` (or any module outside torch's safe list)
    come back as inert `ForeignObject` stubs holding their pickled state.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as error:  # not a zip checkpoint, or corrupt
        return _load_legacy(path, error)
    stubs = [_stub_class(name) for name in unsafe]
    try:
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch refuses globals of modules such as os or subprocess even as stubs: calling them
        # is how a pickle runs code
        raise CheckpointError(f"{path} holds code references ({', '.join(unsafe) or 'unknown'}) that "
                              "loading would call; it was not loaded") from None
    except Exception as error:  # a damaged archive: a missing or truncated record
        raise CheckpointError(f"{path} is a damaged checkpoint (torch.load cannot read it: "
                              f"{one_line(error, keep=1)})") from None


def _load_legacy(path, zip_error):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.load cannot read it: "
                              f"{type(zip_error).__name__})") from None


class ForeignObject:
    """Inert stand-in for an object of a class this project does not have."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<foreign {self.__module__}.{type(self).__qualname__}>"


def _stub_class(qualified_name):
    module, _, name = qualified_name.rpartition(".")
    return type(name, (ForeignObject,), {"__module__": module, "__qualname__": name})


@dataclass
class CheckpointInfo:
    """What a checkpoint file holds, read without building a model."""
    path: str
    format: str                # ours | authors | state_dict | ir50
    naming: str                # names of the tensors: ours | authors | ir50
    arch: str | None           # base | dcs | qcs (None for IR50 weights)
    num_classes: int | None
    size: str | None           # the MODEL_SIZES preset whose shapes match
    num_tensors: int
    num_parameters: int        # elements of all tensors except BatchNorm running statistics
    unused_tensors: int = 0    # tensors the authors' model defines but never uses
    classes: list | None = None
    dataset: str | None = None
    image_size: int | None = None
    augmentation: dict | None = None
    model_config: dict | None = None
    epoch: int | None = None
    best_acc: float | None = None
    best_epoch: int | None = None
    foreign_objects: list = field(default_factory=list)
    weight_dtypes: list = field(default_factory=list)  # of the floating-point tensors; loading makes them float32

    @property
    def format_title(self):
        title = FORMAT_TITLES[self.format]
        if self.format == "state_dict" and self.naming == "authors":
            title += " in the authors' names"
        return title

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def load_checkpoint(path):
    """`(checkpoint object, CheckpointInfo)`; unreadable or unknown files raise CheckpointError."""
    if is_safetensors(path):
        return load_safetensors(path)
    checkpoint = read_checkpoint(path)
    try:
        return checkpoint, describe_checkpoint(checkpoint, str(path))
    except CheckpointError as error:
        message = str(error)
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from None


def describe_checkpoint(checkpoint, path=""):
    """A `CheckpointInfo` for an already-loaded checkpoint object."""
    container, raw = checkpoint_state_dict(checkpoint)
    naming, state = to_our_names(raw)
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    arch, num_classes = (None, None) if naming == "ir50" else describe_state_dict(state)
    info = CheckpointInfo(
        path=path, format="ir50" if naming == "ir50" else container, naming=naming, arch=arch,
        num_classes=num_classes, size=infer_size(state), num_tensors=len(tensors),
        num_parameters=sum(v.numel() for k, v in tensors.items() if not k.endswith(BN_BUFFERS)),
        unused_tensors=sum(1 for k in state if AUTHOR_UNUSED.match(k) or k.startswith("ir50-unused."))
        if naming != "ours" else 0,
        weight_dtypes=sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values() if v.is_floating_point()}))
    if container == "ours":
        _add_our_metadata(info, checkpoint)
    elif container == "authors":
        info.epoch, info.best_acc = _counter(checkpoint, "epoch"), _counter(checkpoint, "best_acc")
    info.foreign_objects = foreign_classes(checkpoint)
    return info


def _add_our_metadata(info, checkpoint):
    run_config = checkpoint.get("run_config") or {}
    config = checkpoint.get("config") or {}
    _check_our_metadata(info.path, checkpoint, run_config, config)
    info.classes = list(checkpoint["classes"]) if checkpoint.get("classes") is not None else None
    info.dataset = run_config.get("dataset")
    info.image_size = run_config.get("image_size")
    info.augmentation = run_config.get("augmentation")
    info.model_config = dict(config)
    info.size = config.get("size", info.size)
    info.arch = config.get("arch", info.arch)  # a QCS without θ (S or D only) has DCS's keys
    info.epoch, info.best_acc = _counter(checkpoint, "epoch"), _counter(checkpoint, "best_acc")
    info.best_epoch = _counter(checkpoint, "best_epoch")
    if checkpoint.get("format") not in (None, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{info.path}: unknown checkpoint format {checkpoint.get('format')!r}")
    if info.classes and info.num_classes is not None and len(info.classes) != info.num_classes:
        raise CheckpointError(f"{info.path}: it names {len(info.classes)} classes but its head has "
                              f"{info.num_classes}; the file is damaged")


def _check_our_metadata(path, checkpoint, run_config, config):
    """Saved settings are untrusted input: the same checks as the command line's, before any use."""
    if not isinstance(run_config, dict) or not isinstance(config, dict):
        raise CheckpointError(f"{path}: its saved settings are not mappings; the file is damaged or not ours")
    classes = checkpoint.get("classes")
    if classes is not None and (not isinstance(classes, (list, tuple)) or not classes
                                or not all(isinstance(name, str) for name in classes)):
        raise CheckpointError(f"{path}: its saved class names are malformed ({classes!r:.80})")
    try:
        check(run_config)
        check(config)
    except UsageError as error:
        raise CheckpointError(f"{path}: its saved settings are invalid: {error}") from None


def _counter(checkpoint, key):
    """A counter of the file as a plain number, or None where it holds none the schema allows."""
    value = checkpoint.get(key)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return None if value is None or problem(STATE[key], value) else value


def foreign_classes(obj, found=None):
    """Qualified names of the classes pickled from outside this project (e.g. the authors'
    `__main__`), wherever they sit in the checkpoint; they were read as inert stand-ins."""
    found = [] if found is None else found
    if isinstance(obj, ForeignObject):
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if name not in found:
            found.append(name)
    elif isinstance(obj, dict):
        for value in obj.values():
            foreign_classes(value, found)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            foreign_classes(value, found)
    return found


def infer_size(state):
    """The MODEL_SIZES preset whose shapes the state dict (our names) has, or None."""
    pos_embed = state.get("base.vit.pos_embed", state.get("vit.pos_embed"))
    stem = state.get("base.backbone.input_layer.0.weight")
    for name, dims in MODEL_SIZES.items():
        if pos_embed is not None:
            tokens = NUM_FEATURE_LEVELS * tokens_per_level(dims["input_size"]) + 1
            if tuple(pos_embed.shape) == (1, tokens, dims["dim"]):
                return name
        elif stem is not None and stem.shape[0] == dims["channels"][0]:
            return name
    return None


# ------------------------------------------------------------------------------ exports (.safetensors)

def is_safetensors(path):
    return Path(path).suffix.lower() == ".safetensors"


def read_model_info(model_path):
    """The checked `model_info.json` beside an exported model file, as a dict.

    CheckpointError (one line naming the file) when it is missing, is not JSON or lacks what
    rebuilding the model and its preprocessing needs.
    """
    json_path = Path(model_path).with_name(EXPORT_INFO_FILE)
    if not json_path.exists():
        raise CheckpointError(f"{model_path}: {json_path} is missing; keep the export's {EXPORT_INFO_FILE} "
                              f"beside its model file")
    try:
        meta = read_json_file(json_path)
    except UsageError as error:
        raise CheckpointError(str(error)) from None
    problem = model_info_problem(meta)
    if problem:
        raise CheckpointError(f"{json_path}: {problem}")
    return meta


def model_info_problem(meta):
    """What makes `meta` unusable as an export's description, or None."""
    if not isinstance(meta, dict):
        return f"holds no JSON object; it is not an export's {EXPORT_INFO_FILE}"
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) != len(classes):
        return f"'classes' must be a list of at least 2 distinct class names, got {classes!r:.60}"
    if meta.get("num_classes", len(classes)) != len(classes):
        return f"'num_classes' is {meta['num_classes']!r} but 'classes' lists {len(classes)}"
    if meta.get("arch") != "base":
        return f"'arch' must be \"base\" (an export holds the base branch), got {meta.get('arch')!r}"
    digests = meta.get("sha256", {})
    if not isinstance(digests, dict) or not all(
            isinstance(digest, str) and len(digest) == 64 and not digest.strip("0123456789abcdefABCDEF")
            for digest in digests.values()):
        return f"'sha256' must map file names to 64-digit hex SHA-256 digests, got {digests!r:.60}"
    try:
        check({key: meta[key] for key in ("dataset",) if meta.get(key) is not None}
              | {key: meta.get(key) for key in ("size", "image_size", "augmentation")}, label=repr)
    except UsageError as error:
        return f"invalid settings: {error}"
    return None


def export_info(path, meta, export_format, num_tensors, num_parameters):
    """The CheckpointInfo of an exported model file, from its checked `model_info.json`."""
    source_arch = meta.get("source_arch") if meta.get("source_arch") in ARCHITECTURES else None
    return CheckpointInfo(
        path=str(path), format=export_format, naming="ours", arch="base", num_classes=len(meta["classes"]),
        size=meta["size"], num_tensors=num_tensors, num_parameters=num_parameters, classes=list(meta["classes"]),
        dataset=meta.get("dataset"), image_size=meta["image_size"], augmentation=dict(meta["augmentation"]),
        model_config={"arch": "base", "size": meta["size"], "source_arch": source_arch})


def load_safetensors(path):
    """`(state dict, CheckpointInfo)` of a safetensors export: its `model_info.json` must be beside
    it and describe the base branch its tensors hold."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path}: reading .safetensors needs the safetensors package, which is not "
                              f"installed; install it with: {SAFETENSORS_HINT}") from None
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    meta = read_model_info(path)
    try:
        state = load_file(path)
    except Exception as error:  # safetensors' own SafetensorError: bad header, truncated data
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        held = describe_checkpoint(state, str(path))
    except CheckpointError as error:  # no tensors at all
        raise CheckpointError(f"{path}: {error}") from None
    info = export_info(path, meta, "safetensors", held.num_tensors, held.num_parameters)
    if (held.arch, held.num_classes) != ("base", info.num_classes):
        found = f"a {held.arch.upper()} model with {held.num_classes} classes" if held.num_classes else "no classifier"
        raise CheckpointError(f"{path}: its tensors hold {found}, but {EXPORT_INFO_FILE} describes a "
                              f"{info.num_classes}-class base branch")
    if held.size not in (None, info.size):
        raise CheckpointError(f"{path}: its tensors are of the {held.size} model, but {EXPORT_INFO_FILE} "
                              f"says {info.size}")
    return state, info


def one_line(message, keep=3):
    """A multi-line error (lists of tensors) as one line: its first `keep` lines."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    more = f" ... ({len(lines) - keep} more lines)" if len(lines) > keep else ""
    return " ".join(lines[:keep]) + more


# ------------------------------------------------------------------------------ writing

def atomic_save(obj, path):
    """`torch.save` that leaves either the old file or the complete new one (see `atomic_write`).

    Serialised in memory first: torch.save turns a failed file write into an opaque RuntimeError,
    while writing the bytes lets a full disk or a file-size limit reach the caller as OutputError.
    """
    atomic_write(path, lambda handle: torch.save(obj, handle), buffered=True)


def rng_states():
    """All RNG states, as types a weights-only `torch.load` can read back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
    states = dict(python=random.getstate(), numpy=numpy_state, torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class RunState:
    """A run's counters between steps, saved in every training checkpoint (as top-level keys)."""
    epoch: int = 0  # epochs completed
    step: int = 0  # steps done of epoch `epoch` (non-zero after a mid-epoch save)
    best_acc: float = 0.0  # of the split that selects best.pth (test, or val with --select-on val)
    best_epoch: int = 0
    test_at_best: float = 0.0
    history: list = field(default_factory=list)  # one metrics.csv row per completed epoch
    epoch_sums: dict | None = None  # the training sums (and seconds) of the `step` steps of an unfinished epoch
    world_size: int = 1  # the processes that trained the run when it was saved
    # groups of epoch `epoch` trained by all ranks together: the epoch's first ones (rank r of
    # `world_size` trained groups r, r + world_size, ... below it); None: not recorded (older files)
    groups_done: int | None = None

    def as_checkpoint(self):
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, checkpoint):
        return cls(epoch=checkpoint["epoch"], step=checkpoint["step"], best_acc=checkpoint["best_acc"],
                   best_epoch=checkpoint["best_epoch"], test_at_best=checkpoint.get("test_at_best", 0.0),
                   history=list(checkpoint["history"]), epoch_sums=checkpoint.get(epoch_sums_key(checkpoint)),
                   world_size=checkpoint.get("world_size", ddp.world_size()),
                   groups_done=checkpoint.get("groups_done"))


def epoch_sums_key(checkpoint):
    """The key of a checkpoint's unfinished-epoch sums: `epoch_sums`, or `partial` in files
    written before it was renamed."""
    return next((key for key in ("epoch_sums", "partial") if checkpoint.get(key) is not None), "epoch_sums")


def training_checkpoint(model, optimizer, scheduler, state, config, classes, rng_by_rank=None):
    """Everything needed to continue a run exactly; `rng_by_rank`: every rank's `rng_states()`
    (default: this process's alone)."""
    rng_by_rank = rng_by_rank or [rng_states()]
    return {
        "format": CHECKPOINT_FORMAT,
        "config": dict(model.config),
        "model": model.state_dict(),
        "classes": list(classes),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_by_rank[0],
        **({"rng_by_rank": rng_by_rank} if len(rng_by_rank) > 1 else {}),
        "run_config": config,
        **state.as_checkpoint(),
    }


class Saver:
    """Writes the run's `last.pth` and `best.pth` (rank 0, with every rank's RNG states), each
    atomically; every rank calls it."""

    def __init__(self, run_dir, model, optimizer, scheduler, config, classes):
        self.run_dir, self.model, self.optimizer, self.scheduler = run_dir, model, optimizer, scheduler
        self.config, self.classes = config, classes
        self.enabled = ddp.is_main_process()

    def last_path(self):
        return self.run_dir / "last.pth"

    def save_last(self, state):
        self._save(state, self.last_path())

    def save_best(self, state):
        self._save(state, self.run_dir / "best.pth")

    def _save(self, state, path):
        rng_by_rank = ddp.gather_objects(rng_states())  # a collective: every rank takes part
        if self.enabled:
            atomic_save(training_checkpoint(self.model, self.optimizer, self.scheduler, state, self.config,
                                            self.classes, rng_by_rank), path)


# ------------------------------------------------------------------------------ resuming and --pretrained

def read_resume_checkpoint(config, given, ended=lambda checkpoint: True):
    """`--resume`: `(config with the checkpoint's settings merged in, checkpoint)`, refusing a file
    that is not a continuable training checkpoint of this project or has nothing left to do: no
    epoch to train, and `ended(checkpoint)`, its last epoch end was written in full."""
    source = config["resume"]
    resumed = read_checkpoint(source)
    config = merge_resumed_config(config, resumed, given)
    check_training_state(resumed, source)
    done = config["epochs"] == resumed["epoch"] and not resumed["step"] and ended(resumed)
    if config["epochs"] < resumed["epoch"] or done:
        raise UsageError(f"--resume {source}: the run has already trained {resumed['epoch']} epochs; "
                         f"give --epochs above {resumed['epoch']} to continue it")
    return config, resumed


def merge_resumed_config(config, checkpoint, given):
    """The checkpoint's settings, with the options a resumed run may change taken from `config`."""
    saved = checkpoint.get("run_config") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict) or not saved or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"--resume {config['resume']} is not a training checkpoint of this project "
                         "(an authors' checkpoint can be evaluated with --evaluate)")
    script_arch = saved.get("recipe_arch", saved.get("arch"))
    if script_arch not in scripts():
        raise UsageError(f"--resume {config['resume']}: its saved settings name no script (recipe_arch is "
                         f"{script_arch!r}); the file is damaged or not ours")
    if script_arch != config["recipe_arch"]:
        raise UsageError(f"--resume {config['resume']} is a {script_arch.upper()} run; "
                         f"continue it with main_{script_arch.upper()}.py")
    conflicts = sorted(k for k in given - set(names(RESUMABLE)) if saved.get(k) != config[k])
    if conflicts:
        raise UsageError("a resumed run keeps its settings; these differ from the checkpoint: "
                         + ", ".join(f"{flag(k)} {config[k]} (saved: {saved.get(k)})" for k in conflicts))
    merged = {**config, **saved}  # settings added since the checkpoint was written keep their defaults
    for key in names(RESUMABLE):
        merged[key] = config[key] if key in given or key == "resume" else merged.get(key)
    merged["output_dir"] = config["output_dir"] if "output_dir" in given else None
    try:
        check(merged)
        if merged["compile"]:  # a saved backend this torch lacks
            check_compile_backend(merged["compile_backend"])
    except UsageError as error:
        raise UsageError(f"--resume {config['resume']}: its saved settings are invalid: {error}") from None
    return merged


def check_training_state(checkpoint, path):
    """The counters and states a resumed run continues from must be what this project writes."""
    problem = training_state_problem(checkpoint)
    if problem:
        raise CheckpointError(f"--resume {path}: its training state is malformed ({problem}); it cannot be continued")


def training_state_problem(checkpoint):
    """What is wrong with a training checkpoint's counters, optimiser, scheduler, RNG and mid-epoch
    sums, or None."""
    scheduler = checkpoint.get("scheduler")
    if not isinstance(scheduler, dict) or "last_epoch" not in scheduler:
        return "scheduler holds no schedule state"
    try:
        check({key: checkpoint.get(key) for key in ("epoch", "step", "best_epoch")}
              | {key: checkpoint[key] for key in ("best_acc", "test_at_best") if key in checkpoint}
              | {"groups_done": checkpoint.get("groups_done") or 0}
              | {key: scheduler.get(key) for key in ("last_epoch", "gamma")}, label=str, schema=STATE)
    except UsageError as error:
        return str(error)
    if (scheduler["last_epoch"], scheduler["gamma"]) != (checkpoint["epoch"], checkpoint["run_config"].get("gamma")):
        return (f"the schedule (last_epoch {scheduler['last_epoch']}, gamma {scheduler['gamma']}) is not the run's "
                f"(epoch {checkpoint['epoch']}, --gamma {checkpoint['run_config'].get('gamma')})")
    history = checkpoint.get("history")
    if not isinstance(history, list) or not all(
            isinstance(row, dict) and not problem(STATE["epoch"], row.get("epoch")) for row in history):
        return "history is not a list of per-epoch rows"
    optimizer = checkpoint.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list) or not optimizer["param_groups"]:
        return "optimizer holds no optimiser state"
    if not is_rng_states(checkpoint.get("rng")):
        return "rng does not hold the python, numpy and torch generator states"
    world_size = checkpoint.get("world_size", 1)
    if problem(STATE["world_size"], world_size):
        return f"world_size is {world_size!r}, not a number of processes"
    by_rank = checkpoint.get("rng_by_rank", [checkpoint["rng"]] * world_size)
    if not isinstance(by_rank, list) or len(by_rank) != world_size or not all(map(is_rng_states, by_rank)):
        return f"rng_by_rank does not hold the generator states of its {world_size} ranks"
    sums_key = epoch_sums_key(checkpoint)
    sums = checkpoint.get(sums_key)

    def has_sums(sums, keys=("loss_sum", "correct", "anchors")):
        return isinstance(sums, dict) and not any(problem(STATE["sum"], sums.get(key)) for key in keys)

    if checkpoint["step"] and not (has_sums(sums, ("loss_sum", "correct", "anchors", "seconds")) and (
            "by_rank" not in sums or isinstance(sums["by_rank"], list) and len(sums["by_rank"]) == world_size
            and all(map(has_sums, sums["by_rank"])))):
        return f"{sums_key} (the sums of the unfinished epoch) is missing or malformed"
    return None


def is_rng_states(rng):
    """Whether `rng` holds the python, numpy and torch generator states, as `rng_states` saves them."""
    return isinstance(rng, dict) and all(key in rng for key in ("python", "numpy", "torch")) \
        and isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"], (list, tuple)) \
        and len(rng["numpy"]) == 5


def restore_training(checkpoint, model, optimizer, scheduler):
    """Load a training checkpoint into the run's objects; returns the run's `RunState`.

    Each rank takes its own saved RNG states; a rank the saved run did not have keeps its own
    seeding, and a file that holds one process's states gives them to every rank.
    """
    load_weights(model, checkpoint)
    by_rank = checkpoint.get("rng_by_rank", [checkpoint["rng"]] * ddp.world_size())
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if ddp.rank() < len(by_rank):
            set_rng_states(by_rank[ddp.rank()])
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as error:
        raise CheckpointError(f"--resume: its optimiser, schedule or RNG state does not fit this run "
                              f"({one_line(error, keep=1)})") from None
    return RunState.from_checkpoint(checkpoint)


def load_pretrained(model, path):
    """`--pretrained`: fill the IR50 backbone, and only it, from `path`, before any run folder
    exists. Returns the line to log (None when there is nothing to say)."""
    if path in (None, "", "none"):
        return None
    if path == str(DEFAULT_PRETRAINED) and model.config["size"] != "paper":
        # the released IR50 file only fits the paper size; a smaller preset never reads it
        return (f"the IR50 backbone starts from random weights (the default --pretrained, {path}, "
                f"is for --size paper only)")
    if not Path(path).is_file():
        if path != str(DEFAULT_PRETRAINED):
            raise FileNotFoundError(f"--pretrained {path} does not exist")
        hint = "" if model.config.get("vit_init") == "xavier" else (
            "; from random weights the released ViT initialisation stalls, --vit-init xavier lets it learn "
            "(models/METHOD.md §8)")
        return (f"warning: {path} not found; the IR50 backbone starts from random weights "
                f"(expect far lower accuracy; see README, 'Pretrained IR50'){hint}")
    try:
        filled, source_format = load_backbone(model, read_checkpoint(path), name=path)
    except CheckpointError as error:
        raise CheckpointError(f"--pretrained {error}") from None
    return (f"backbone initialised from {path} ({source_format} weights): {filled} backbone "
            f"tensors filled; the rest of the network keeps its initialisation")
