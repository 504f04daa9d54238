"""Reading and describing checkpoint files: this project's, the authors' releases, bare state dicts,
face-recognition IR50 weights and the `.safetensors` export with its `model_info.json`.

A training checkpoint (`last.pth`, `best.pth`) is a dict: `format` (`CHECKPOINT_FORMAT`), `config`
(the model's), `model` (its state dict), `classes`, `optimizer`, `scheduler`, `rng`, `run_config`
(the run's resolved settings) and the run's counters (`epoch`, `step`, `best_acc`, `best_epoch`,
`test_at_best`, `history`, `epoch_sums`, `world_size`, `groups_done`); a run of several processes
adds `rng_by_rank`, every rank's RNG states. Writing them is `utils.training_state`'s, continuing
them `utils.resume`'s. Every problem with any file is a `CheckpointError` whose message names the file.
"""
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models import MODEL_SIZES, CheckpointError, describe_state_dict
from models.architectures import ARCHITECTURES
from models.qcs import NUM_FEATURE_LEVELS, tokens_per_level
from models.weights import AUTHOR_UNUSED, checkpoint_state_dict, to_our_names

from .model_info import EXPORT_INFO_FILE, read_model_info
from .settings import STATE, UsageError, check, problem

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
SAFETENSORS_HINT = "pip install -r requirements-safetensors.txt"


def read_checkpoint(path):
    """`torch.load` on CPU that never runs foreign code; any failure is a `CheckpointError`.

    Classes pickled from the authors' `__main__` (or any module outside torch's safe list)
    come back as inert `ForeignObject` stubs holding their pickled state.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as zip_error:  # not a zip checkpoint (the legacy format), or corrupt
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.load cannot read it: "
                                  f"{type(zip_error).__name__})") from None
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


class ForeignObject:
    """Inert stand-in for an object of a class this project does not have."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        return obj

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
    return checkpoint, describe_checkpoint(checkpoint, str(path))


def describe_checkpoint(checkpoint, path):
    """A `CheckpointInfo` for an object read from `path`; its CheckpointErrors name the file."""
    try:
        container, raw = checkpoint_state_dict(checkpoint)
        naming, state = to_our_names(raw)
        arch, num_classes = (None, None) if naming == "ir50" else describe_state_dict(state)
    except CheckpointError as error:
        raise CheckpointError(str(error) if path in str(error) else f"{path}: {error}") from None
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    info = CheckpointInfo(
        path=path, format="ir50" if naming == "ir50" else container, naming=naming, arch=arch,
        num_classes=num_classes, size=infer_size(state), num_tensors=len(tensors),
        num_parameters=sum(v.numel() for k, v in tensors.items() if not k.endswith(BN_BUFFERS)),
        unused_tensors=sum(1 for k in state if AUTHOR_UNUSED.match(k) or k.startswith("ir50-unused."))
        if naming != "ours" else 0,
        weight_dtypes=sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values() if v.is_floating_point()}))
    if container in ("ours", "authors"):
        info.epoch, info.best_acc = _counter(checkpoint, "epoch"), _counter(checkpoint, "best_acc")
    if container == "ours":
        _add_our_metadata(info, checkpoint)
    info.foreign_objects = foreign_classes(checkpoint)
    return info


def _add_our_metadata(info, checkpoint):
    """Saved settings are untrusted input: the same checks as the command line's, before any use."""
    run_config, config = checkpoint.get("run_config") or {}, checkpoint.get("config") or {}
    if not isinstance(run_config, dict) or not isinstance(config, dict):
        raise CheckpointError(f"{info.path}: its saved settings are not mappings; the file is damaged or not ours")
    classes = checkpoint.get("classes")
    if classes is not None and (not isinstance(classes, (list, tuple)) or not classes
                                or not all(isinstance(name, str) for name in classes)):
        raise CheckpointError(f"{info.path}: its saved class names are malformed ({classes!r:.80})")
    try:
        check(run_config)
        check(config)
    except UsageError as error:
        raise CheckpointError(f"{info.path}: its saved settings are invalid: {error}") from None
    info.classes = list(classes) if classes is not None else None
    for key in ("dataset", "image_size", "augmentation"):
        setattr(info, key, run_config.get(key))
    info.model_config = dict(config)
    info.size = config.get("size", info.size)
    info.arch = config.get("arch", info.arch)  # a QCS without θ (S or D only) has DCS's keys
    info.best_epoch = _counter(checkpoint, "best_epoch")
    if checkpoint.get("format") not in (None, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{info.path}: unknown checkpoint format {checkpoint.get('format')!r}")
    if info.classes and info.num_classes is not None and len(info.classes) != info.num_classes:
        raise CheckpointError(f"{info.path}: it names {len(info.classes)} classes but its head has "
                              f"{info.num_classes}; the file is damaged")


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
    elif isinstance(obj, (dict, list, tuple)):
        for value in obj.values() if isinstance(obj, dict) else obj:
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
    held = describe_checkpoint(state, str(path))
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

