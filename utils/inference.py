"""From a checkpoint file to an inference model and its test transform.

The one path used by `--evaluate` and by every tool in `utils.tools`; which files can be read is
`utils.checkpoint`'s business.
"""
from dataclasses import dataclass

import torch

from data_preprocessing import DataError, dataset_classes, test_transform_for
from models import MODEL_SIZES, build_model, load_weights
from models.architectures import is_cross, scripts

from .checkpoint import CheckpointError, CheckpointInfo, load_checkpoint, one_line
from .recipes import recipe
from .settings import DEFAULT_IMAGE_SIZE, MODEL, names


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
        twice = next((name for index, name in enumerate(classes) if name in classes[:index]), None)
        if twice is not None:
            raise CheckpointError(f"--classes names {twice!r} twice; give each class of the head once, "
                                  "in label order")
    elif dataset is not None:
        try:
            classes = dataset_classes(dataset, data_root)
        except DataError as error:
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
                       image_size=None, fallback_dataset=None, recipe_arch=None, loaded=None):
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
    `loaded`: the `(checkpoint, info)` of `path` where the caller has read it already.
    """
    checkpoint, info = loaded or load_checkpoint(path)
    if info.format == "ir50" or info.num_classes is None:
        raise CheckpointError(f"{path} holds {info.format_title}: no classifier to run; "
                              f"train a model first (main_DCS.py / main_QCS.py)")
    if arch == "cross" and info.format in ("safetensors", "onnx"):
        raise CheckpointError(f"{path} is a {info.format} export, which holds the base branch only; this needs "
                              f"the cross module: give the DCS or QCS training checkpoint (.pth)")
    if arch == "cross" and not is_cross(info.arch):
        raise CheckpointError(f"{path} holds a {info.arch.upper()} model without a cross module; "
                              f"give a DCS or QCS checkpoint")
    classes = resolve_classes(info, dataset, class_list, data_root, fallback_dataset)
    size = size or info.size
    if size is None:
        raise CheckpointError(f"{path}: the tensor shapes match no model size; give --size "
                              f"({', '.join(MODEL_SIZES)})")
    options = {k: v for k, v in (info.model_config or {}).items() if k in names(MODEL) and k != "size"}
    model = build_model(info.arch if arch == "cross" else "base", len(classes), size=size, **options)
    try:
        load_weights(model, checkpoint, name=str(path))
    except CheckpointError as error:
        if info.format == "safetensors":
            raise CheckpointError(f"{path}: its tensors do not fit the {size} base branch: {one_line(error)}") from None
        raise
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
    arch = info.arch if info.arch in scripts() else recipe_arch
    if dataset is None or arch is None:
        return {}
    return recipe(arch, dataset)["augmentation"]
