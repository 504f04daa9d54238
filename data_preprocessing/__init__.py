"""Facial-expression data: datasets by name, QCS/DCS training groups, and the released transforms.

The names below are imported on first use, so a script that needs none of the torch-based parts
(the prepare_* scripts, the layouts) does not import torch."""
import importlib

_HOMES = {
    "build": ("build_dataset",),
    "datasets": ("DATASET_NAMES", "dataset_classes", "default_data_root", "extra_test_splits", "parse_list_file"),
    "errors": ("DataError",),
    "image_lists": ("ArrayImageDataset", "ImageListDataset"),
    "images": ("IMAGE_EXTENSIONS", "clamp_box", "is_image_file"),
    "layouts": ("AFFECTNET7_CLASSES", "AFFECTNET8_CLASSES", "FER2013_CLASSES", "FERPLUS_CLASSES", "RAF_DB_CLASSES"),
    "sampling": ("GroupDataset", "GroupSampler"),
    "transforms": ("IMAGENET_MEAN", "IMAGENET_STD", "MAX_IMAGE_SIDE", "describe_transform", "test_transform",
                   "test_transform_for", "train_transform"),
    "views": ("DatasetView", "canonical_class_name", "match_classes", "stratified_holdout"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name):
    """Import the module that defines `name` the first time it is asked for."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
