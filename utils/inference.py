"""From a checkpoint file to an inference model and its test transform.

The one path used by `--evaluate` and by every tool in `utils.tools`. Supported files: this
project's training checkpoints, the authors' releases, bare state dicts in either naming,
face-recognition IR50 weights (described only: they hold no classifier) and the `.safetensors`
export of `python -m utils.tools export`, whose `model_info.json` beside it records the classes,
model size and preprocessing.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_preprocessing import dataset_classes, test_transform_for
from models import ARCHS, MODEL_SIZES, build_model, describe_state_dict, load_weights, read_checkpoint
from models.qcs import NUM_FEATURE_LEVELS, tokens_per_level
from models.weights import AUTHOR_UNUSED, ForeignObject, checkpoint_state_dict, to_our_names

from .checkpointing import CHECKPOINT_FORMAT
from .config import UsageError, check_saved_config
from .recipes import recipe

DEFAULT_IMAGE_SIZE = 224  # every released recipe
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


class CheckpointError(Exception):
    """A checkpoint cannot be read or rebuilt as asked; the message says what and where."""


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
    try:
        checkpoint = read_checkpoint(path)
        return checkpoint, describe_checkpoint(checkpoint, str(path))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except ValueError as error:  # WeightsError: unreadable or not a checkpoint
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
        if naming != "ours" else 0)
    if container == "ours":
        _add_our_metadata(info, checkpoint)
    elif container == "authors":
        info.epoch = _as_int(checkpoint.get("epoch"))
        info.best_acc = _as_float(checkpoint.get("best_acc"))
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
    info.epoch = _as_int(checkpoint.get("epoch"))
    info.best_acc = _as_float(checkpoint.get("best_acc"))
    info.best_epoch = _as_int(checkpoint.get("best_epoch"))
    if checkpoint.get("format") not in (None, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{info.path}: unknown checkpoint format {checkpoint.get('format')!r}")


def _check_our_metadata(path, checkpoint, run_config, config):
    """Saved settings are untrusted input: the same checks as the command line's, before any use."""
    if not isinstance(run_config, dict) or not isinstance(config, dict):
        raise CheckpointError(f"{path}: its saved settings are not mappings; the file is damaged or not ours")
    classes = checkpoint.get("classes")
    if classes is not None and (not isinstance(classes, (list, tuple)) or not classes
                                or not all(isinstance(name, str) for name in classes)):
        raise CheckpointError(f"{path}: its saved class names are malformed ({classes!r:.80})")
    try:
        check_saved_config(run_config)
        check_saved_config(config)
    except UsageError as error:
        raise CheckpointError(f"{path}: its saved settings are invalid: {error}") from None


def _as_float(value):
    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


def _as_int(value):
    return int(value) if isinstance(value, (int, torch.Tensor)) and not isinstance(value, bool) else None


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


# ------------------------------------------------------------------------------ exports

def is_safetensors(path):
    return Path(path).suffix.lower() == ".safetensors"


def read_model_info(model_path):
    """The checked `model_info.json` beside an exported model file, as a dict.

    CheckpointError (one line naming the file) when it is missing, is not JSON or lacks what
    rebuilding the model and its preprocessing needs.
    """
    json_path = Path(model_path).with_name(EXPORT_INFO_FILE)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{model_path}: {json_path} is missing; keep the export's {EXPORT_INFO_FILE} "
                              f"beside its model file") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{json_path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{json_path}: cannot read it ({error})") from None
    problem = model_info_problem(meta)
    if problem:
        raise CheckpointError(f"{json_path}: {problem}")
    return meta


def model_info_problem(meta):
    """What makes `meta` unusable as an export's description, or None."""
    if not isinstance(meta, dict):
        return f"holds no JSON object; it is not an export's {EXPORT_INFO_FILE}"
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        return f"'classes' must be a list of at least 2 class names, got {classes!r:.60}"
    if meta.get("num_classes", len(classes)) != len(classes):
        return f"'num_classes' is {meta['num_classes']!r} but 'classes' lists {len(classes)}"
    if meta.get("arch") != "base":
        return f"'arch' must be \"base\" (an export holds the base branch), got {meta.get('arch')!r}"
    if meta.get("size") not in MODEL_SIZES:
        return f"'size' must be one of {', '.join(MODEL_SIZES)}, got {meta.get('size')!r}"
    side = meta.get("image_size")
    if isinstance(side, bool) or not isinstance(side, int) or side < 16:
        return f"'image_size' must be a whole number of pixels, at least 16, got {side!r}"
    if meta.get("augmentation") is None:
        return "'augmentation' (the train augmentation that sets the test transform) is missing"
    try:
        check_saved_config({key: meta[key] for key in ("image_size", "augmentation", "dataset")
                            if meta.get(key) is not None})
    except UsageError as error:
        return f"invalid settings: {error}"
    return None


def export_info(path, meta, export_format, num_tensors, num_parameters):
    """The CheckpointInfo of an exported model file, from its checked `model_info.json`."""
    source_arch = meta.get("source_arch") if meta.get("source_arch") in ARCHS else None
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
    except ValueError as error:  # WeightsError: no tensors at all
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


# ------------------------------------------------------------------------------ rebuild a model

@dataclass
class TrainedModel:
    """A network with its weights loaded, the class names and the preprocessing it expects."""
    model: torch.nn.Module
    info: CheckpointInfo
    classes: list
    size: str
    image_size: int
    augmentation: dict  # the run's train augmentation, which sets the test transform

    def transform(self):
        return test_transform_for(self.augmentation, self.image_size)


def resolve_classes(info, dataset=None, class_list=None, data_root=None, fallback_dataset=None):
    """Class names from `--classes`, else `--dataset`, else the checkpoint (ours), else
    `fallback_dataset` (a dataset the command reads anyway)."""
    if class_list is None and dataset is None and not info.classes:
        dataset = fallback_dataset
    if class_list is not None:
        classes = [c.strip() for c in class_list.split(",") if c.strip()]
        source = "--classes"
    elif dataset is not None:
        try:
            classes = dataset_classes(dataset, data_root)
        except ValueError as error:  # DataError
            raise CheckpointError(f"--dataset {dataset}: {error}") from None
        source = f"--dataset {dataset}"
    elif info.classes:
        return list(info.classes)
    else:
        raise CheckpointError(f"{info.path} holds no class names ({info.format_title}); "
                        f"give them with --dataset NAME or --classes a,b,c")
    if info.num_classes is not None and len(classes) != info.num_classes:
        raise CheckpointError(f"{source} gives {len(classes)} classes but {info.path} has a "
                        f"{info.num_classes}-class head")
    return classes


def load_trained_model(path, arch="base", dataset=None, class_list=None, data_root=None, size=None,
                       image_size=None, fallback_dataset=None, recipe_arch=None):
    """Rebuild the network of checkpoint `path` and load its weights (in eval mode).

    `arch="base"` gives the inference network (base branch only) of any checkpoint with a head;
    `arch="cross"` rebuilds the DCS/QCS model the checkpoint holds, cross module included.
    Unset `size`, `image_size` and classes come from the checkpoint where it records them
    (this project's checkpoints), else from the tensor shapes, 224 and `dataset`/`class_list`
    (`fallback_dataset` names the classes of a checkpoint that records none, when neither is given).
    The test transform is the one the checkpoint's run used; for a file that records none (the
    authors'), the released recipe of the checkpoint's architecture on `dataset` (`recipe_arch`
    stands in for a base-branch-only file). A `.safetensors` export is rebuilt from its
    `model_info.json`, whose transform is the one (base branch only: `arch="cross"` refuses it).
    """
    if image_size is not None and image_size < 16:
        raise CheckpointError(f"--image-size must be at least 16 pixels, got {image_size}")
    checkpoint, info = load_checkpoint(path)
    if info.format == "ir50" or info.num_classes is None:
        raise CheckpointError(f"{path} holds {info.format_title}: no classifier to run; "
                        f"train a model first (main_DCS.py / main_QCS.py)")
    if arch == "cross" and info.format in ("safetensors", "onnx"):
        raise CheckpointError(f"{path} is a {info.format} export, which holds the base branch only; this needs "
                              f"the cross module: give the DCS or QCS training checkpoint (.pth)")
    if arch == "cross" and info.arch not in ("dcs", "qcs"):
        raise CheckpointError(f"{path} holds a {info.arch.upper()} model without a cross module; "
                        f"give a DCS or QCS checkpoint")
    classes = resolve_classes(info, dataset, class_list, data_root, fallback_dataset)
    size = size or info.size
    if size is None:
        raise CheckpointError(f"{path}: the tensor shapes match no model size; give --size "
                        f"({', '.join(MODEL_SIZES)})")
    options = {k: v for k, v in (info.model_config or {}).items()
               if k in ("attention", "matrix", "connection", "proj_drop_rule", "cross_block")}
    model = build_model(info.arch if arch == "cross" else "base", len(classes), size=size, **options)
    try:
        load_weights(model, checkpoint)
    except ValueError as error:  # WeightsError
        if info.format == "safetensors":
            raise CheckpointError(f"{path}: its tensors do not fit the {size} base branch: {one_line(error)}") from None
        raise CheckpointError(f"{path}: {error}") from None
    model.eval()
    augmentation = info.augmentation
    if info.format != "safetensors":  # an export's recorded transform is the one; {} means Resize only
        augmentation = augmentation or _released_augmentation(info, dataset, recipe_arch)
    if image_size is not None and image_size != info.image_size:
        augmentation = {}  # the recorded crop ratio belongs to the recorded size
    image_size = image_size or info.image_size or DEFAULT_IMAGE_SIZE
    return TrainedModel(model, info, classes, size, image_size, augmentation)


def _released_augmentation(info, dataset, recipe_arch):
    """The train augmentation of the released recipe the file was most likely trained with."""
    arch = info.arch if info.arch in ("dcs", "qcs") else recipe_arch
    if dataset is None or arch is None:
        return {}
    return recipe(arch, dataset)["augmentation"]
