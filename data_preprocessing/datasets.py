"""Facial-expression datasets by name: the registry of readers and `read_dataset`.

Every dataset is an :class:`ImageListDataset`: a list of (image path, 0-based label) pairs plus the
class names in label order. The readers live in `image_lists` (list files), `class_folders` (class-folder
trees, FER2013) and `fer2013` (fer2013.csv). Data folders are only read, never written: `read_dataset`
reads what is on disk; `data_preprocessing.build.build_dataset` (the public `build_dataset`) also generates the
"demo" dataset into its data root on first use. This module never imports `demo`.

Default data roots (relative to the working directory):

=============  ======================  ============================================================
name           default data root       layout
=============  ======================  ============================================================
RAF-DB         ./datas/RAF-DB          basic/ + raf_db_basic_train.txt, raf_db_basic_test.txt
FERPlus        ./datas/FERPlus         img/ + ferplus_training.txt, ferplus_valid.txt (val),
                                       ferplus_test.txt
AffectNet-7    ./datas/AffectNet       Manually_trainval_croped/ + affectnet_training-cls7-v7.txt,
                                       affectnet_validation-cls7.txt (test)
AffectNet-8    ./datas/AffectNet       Manually_trainval_croped/ + affectnet_training-cls8-v7.txt,
                                       affectnet_validation-cls8.txt (test)
FER2013        ./datas/FER2013         fer2013.csv (or the csv itself as data root), or
                                       train/<class>/*, test/<class>/* class folders
folder         (required)              train/<class>/*, test/<class>/* (val/ optional)
demo           ./datas/demo            generated: images/ + demo_train.txt, demo_test.txt,
                                       demo_test_flipped.txt (nuisance set against the label)
=============  ======================  ============================================================
"""
import os
from collections.abc import Callable
from dataclasses import dataclass

from .class_folders import class_folder_samples, fer2013_dataset, folder_classes, folder_dataset
from .errors import DataError
from .fer2013 import FER2013_USAGE_TO_SPLIT, Fer2013Row, load_fer2013_csv, parse_fer2013_pixels, read_fer2013_rows
from .image_lists import (
    ArrayImageDataset,
    ImageListDataset,
    dataset_from_list_file,
    override_classes,
    parse_list_file,
    require_root,
    to_rgb,
)
from .images import IMAGE_EXTENSIONS, is_image_file
from .layouts import (
    AFFECTNET7_CLASSES,
    AFFECTNET8_CLASSES,
    DEMO_LAYOUT,
    DEMO_META_NAME,
    FER2013_CLASSES,
    FERPLUS_CLASSES,
    LIST_LAYOUTS,
    RAF_DB_CLASSES,
    ListLayout,
)

__all__ = [
    "DataError", "DATASET_NAMES", "ImageListDataset", "ArrayImageDataset", "ListLayout", "LIST_LAYOUTS",
    "RAF_DB_CLASSES", "FERPLUS_CLASSES", "AFFECTNET7_CLASSES", "AFFECTNET8_CLASSES", "FER2013_CLASSES",
    "IMAGE_EXTENSIONS", "is_image_file", "parse_list_file", "dataset_classes", "read_dataset",
    "default_data_root", "load_fer2013_csv", "read_fer2013_rows", "parse_fer2013_pixels", "Fer2013Row",
    "class_folder_samples", "extra_test_splits", "DATASETS", "FER2013_USAGE_TO_SPLIT", "to_rgb",
]


def list_file_reader(layout: ListLayout):
    """Reader of a released list-file layout."""
    def read(root, split, classes, transform, check_images):
        root = require_root(root, layout.name)
        if split not in layout.list_files:
            raise DataError(f"{layout.name} has no split {split!r}; choose one of {sorted(layout.list_files)}")
        return dataset_from_list_file(os.path.join(root, layout.list_files[split]),
                                      os.path.join(root, layout.image_dir),
                                      override_classes(layout.classes, classes, layout.name),
                                      transform=transform, check_images=check_images)
    return read


def read_demo(root, split, classes, transform, check_images):
    """The generated demo set, once generated (a finished folder of any parameters is read); DataError
    when `root` holds none (`build_dataset` generates it first)."""
    if not os.path.exists(os.path.join(os.fspath(root), DEMO_META_NAME)):
        raise DataError(f"no generated demo dataset in {root} (no {DEMO_META_NAME}); generate it with "
                        f"python -m data_preprocessing.demo --out {root}")
    return list_file_reader(DEMO_LAYOUT)(root, split, classes, transform, check_images)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: default data root, classes in label order (None: the class folders), the
    reader `(root, split, classes, transform[, check_images]) -> ImageListDataset`, test splits
    evaluated beside "test" during training, and whether its images are named in list files
    (only then can a listed image be missing, so only then does the reader take `check_images`)."""

    default_root: str | None
    classes: tuple | None
    read: Callable
    extra_test_splits: tuple = ()
    lists_images: bool = True


DATASETS = {
    **{name: DatasetEntry(layout.default_root, layout.classes, list_file_reader(layout))
       for name, layout in LIST_LAYOUTS.items()},
    "FER2013": DatasetEntry("./datas/FER2013", tuple(FER2013_CLASSES), fer2013_dataset, lists_images=False),
    "folder": DatasetEntry(None, None, folder_dataset, lists_images=False),
    "demo": DatasetEntry(DEMO_LAYOUT.default_root, DEMO_LAYOUT.classes, read_demo, ("test_flipped",)),
}
DATASET_NAMES = list(DATASETS)


def canonical_name(name: str) -> str:
    """The DATASET_NAMES spelling of `name` (case, '-' and '_' ignored); DataError if unknown."""
    key = str(name).lower().replace("-", "").replace("_", "")
    for known in DATASET_NAMES:
        if known.lower().replace("-", "") == key:
            return known
    raise DataError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")


def default_data_root(name: str) -> str | None:
    """The documented default data root of a dataset (None for 'folder', which needs one)."""
    return DATASETS[canonical_name(name)].default_root


def dataset_classes(name: str, data_root=None) -> list[str]:
    """Class names in label order (for 'folder': sorted folder names under data_root/train)."""
    classes = DATASETS[canonical_name(name)].classes
    return list(classes) if classes is not None else folder_classes(data_root)


def extra_test_splits(name: str) -> tuple:
    """Splits evaluated beside "test" during training (the demo's nuisance-flipped split)."""
    return DATASETS[canonical_name(name)].extra_test_splits


def read_dataset(name: str, split: str, data_root=None, transform=None, classes=None,
                 check_images: bool = True) -> ImageListDataset:
    """The `split` ("train", "test", "val" where present) of dataset `name` under `data_root`, as it
    is on disk (the demo is not generated here: use `build_dataset`).

    `data_root` defaults to the dataset's documented root (see the module docstring). `classes`
    renames the classes (same count) or, for 'folder', picks the class order. `check_images`
    verifies at construction that every listed image exists; it can be switched off only for the
    list-file datasets (ValueError for FER2013 and 'folder', whose images are never listed).
    """
    name = canonical_name(name)
    entry = DATASETS[name]
    root = data_root if data_root is not None else entry.default_root
    if entry.lists_images:
        return entry.read(root, str(split), classes, transform, check_images)
    if not check_images:
        raise ValueError(f"check_images=False applies to list-file datasets only; {name} finds its images "
                         f"by listing folders (or reads them from fer2013.csv), so none can be missing")
    return entry.read(root, str(split), classes, transform)

