"""From a checkpoint file to an inference model and its test transform.

The one path used by `--evaluate` and by every tool in `utils.tools`. Supported files: this
project's training checkpoints, the authors' releases, bare state dicts in either naming, and
face-recognition IR50 weights (described only: they hold no classifier).
"""
from dataclasses import dataclass, field

import torch

from data_preprocessing import dataset_classes, test_transform_for
from models import MODEL_SIZES, build_model, describe_state_dict, load_weights, read_checkpoint
from models.qcs import NUM_LEVELS, tokens_per_level
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
}


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
            tokens = NUM_LEVELS * tokens_per_level(dims["input_size"]) + 1
            if tuple(pos_embed.shape) == (1, tokens, dims["dim"]):
                return name
        elif stem is not None and stem.shape[0] == dims["channels"][0]:
            return name
    return None


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
    stands in for a base-branch-only file).
    """
    if image_size is not None and image_size < 16:
        raise CheckpointError(f"--image-size must be at least 16 pixels, got {image_size}")
    checkpoint, info = load_checkpoint(path)
    if info.format == "ir50" or info.num_classes is None:
        raise CheckpointError(f"{path} holds {info.format_title}: no classifier to run; "
                        f"train a model first (main_DCS.py / main_QCS.py)")
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
        raise CheckpointError(f"{path}: {error}") from None
    model.eval()
    augmentation = info.augmentation or _released_augmentation(info, dataset, recipe_arch)
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
