"""Class-folder datasets: any `ROOT/<split>/<class>/*` tree, and FER2013 (from its class folders or
from fer2013.csv)."""
import os

from .errors import DataError
from .fer2013 import fer2013_csv_path, load_fer2013_csv
from .files import is_regular_entry, non_regular_kind
from .image_lists import ArrayImageDataset, ImageListDataset, override_classes, require_root
from .images import is_image_file
from .layouts import FER2013_CLASSES

__all__ = ["list_class_folders", "class_folder_samples", "folder_dataset", "folder_classes", "fer2013_dataset"]


def list_class_folders(split_dir: str) -> list[str]:
    """Sorted names of the sub-folders of `split_dir` (hidden ones skipped); DataError when two differ
    only in case (`Happy/`, `happy/`), since they would merge into one class or split one in two."""
    if not os.path.isdir(split_dir):
        raise DataError(f"split folder not found: {split_dir}")
    folders = sorted(entry.name for entry in os.scandir(split_dir)
                     if entry.is_dir() and not entry.name.startswith("."))
    by_lower: dict[str, str] = {}
    for folder in folders:
        other = by_lower.setdefault(folder.lower(), folder)
        if other != folder:
            raise DataError(f"{split_dir}: class folders {other!r} and {folder!r} differ only in case; "
                            f"merge them or rename one")
    return folders


def class_folder_samples(split_dir: str, folder_to_label: dict, require_all: bool) -> tuple[list, list, list]:
    """Walk `split_dir/<class>/**` -> (paths, labels, names relative to split_dir), sorted per class.

    Every sub-folder must be a known class and hold at least one image; with `require_all`, every
    class in `folder_to_label` must have a folder.
    """
    folders = list_class_folders(split_dir)
    unknown = [f for f in folders if f not in folder_to_label]
    if unknown:
        raise DataError(f"{split_dir}: unknown class folder(s) {unknown}; expected {sorted(folder_to_label)}")
    if require_all:
        absent = [f for f in folder_to_label if f not in folders]
        if absent:
            raise DataError(f"{split_dir}: no folder for class(es) {absent}")
    labels, names = [], []
    for folder in folders:
        class_dir = os.path.join(split_dir, folder)
        found = sorted(_images_under(class_dir))
        if not found:
            raise DataError(f"empty class folder (no image files): {class_dir}")
        names += [os.path.join(folder, relative) for relative in found]
        labels += [folder_to_label[folder]] * len(found)
    if not names:
        raise DataError(f"no class folders with images under {split_dir}")
    return [os.path.join(split_dir, name) for name in names], labels, names


def _images_under(class_dir: str) -> list[str]:
    """Image files under `class_dir` (hidden folders skipped, linked folders not followed), relative
    to it; DataError for an image name that is not a regular file (a named pipe would block reading)."""
    found, pending = [], [""]
    while pending:
        relative_dir = pending.pop()
        for entry in _scan(os.path.join(class_dir, relative_dir)):
            relative = os.path.join(relative_dir, entry.name)
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                pending.append(relative)
            elif is_image_file(entry.name):  # hidden names (a hidden folder's too) are no image files
                if not is_regular_entry(entry):
                    raise DataError(f"{entry.path} is {non_regular_kind(entry.path)}, not a regular image file; "
                                    f"move it out of {class_dir}")
                found.append(relative)
    return found


def _scan(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror}") from None


def folder_dataset(data_root, split, classes=None, transform=None) -> ImageListDataset:
    """Any `ROOT/<split>/<class>/*` tree; classes sorted by folder name unless given."""
    root = require_root(data_root, "folder")
    split_dir = os.path.join(root, split)
    classes = folder_classes(root) if classes is None else list(classes)
    if len(set(classes)) != len(classes):
        raise DataError(f"--classes has duplicates: {classes}")
    paths, labels, names = class_folder_samples(split_dir, {c: i for i, c in enumerate(classes)},
                                                require_all=(split == "train"))
    return ImageListDataset(paths, labels, classes, image_names=names, transform=transform, source=split_dir)


def folder_classes(data_root) -> list[str]:
    """Sorted class-folder names under data_root/train."""
    root = require_root(data_root, "folder")
    classes = list_class_folders(os.path.join(root, "train"))
    if not classes:
        raise DataError(f"no class folders under {os.path.join(root, 'train')}")
    return classes


def fer2013_dataset(data_root, split, classes=None, transform=None) -> ImageListDataset:
    """FER2013 from fer2013.csv (train/val/test) or from train/<class>/, test/<class>/ folders."""
    root = require_root(data_root, "FER2013")
    class_names = override_classes(FER2013_CLASSES, classes, "FER2013")
    csv_path = fer2013_csv_path(root)
    if csv_path is not None:
        pixels, labels, names = load_fer2013_csv(csv_path, split)
        return ArrayImageDataset(pixels, labels, class_names, names, transform=transform, source=csv_path)
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise DataError(f"FER2013 data root {root} has neither fer2013.csv nor a {split}/ class-folder tree")
    # Folder names are matched case-insensitively to the FER2013 label order.
    folder_to_label = {}
    for folder in list_class_folders(split_dir):
        if folder.lower() not in _FER2013_FOLDER_LABELS:
            raise DataError(f"{split_dir}: unknown FER2013 class folder {folder!r}; "
                            f"expected {sorted(_FER2013_FOLDER_LABELS)}")
        folder_to_label[folder] = _FER2013_FOLDER_LABELS[folder.lower()]
    if split == "train" and len(set(folder_to_label.values())) < len(FER2013_CLASSES):
        absent = sorted(set(_FER2013_FOLDER_LABELS) - {f.lower() for f in folder_to_label})
        raise DataError(f"{split_dir}: no folder for class(es) {absent}")
    paths, labels, names = class_folder_samples(split_dir, folder_to_label, require_all=False)
    return ImageListDataset(paths, labels, class_names, image_names=names, transform=transform, source=split_dir)


_FER2013_FOLDER_LABELS = {name.lower(): i for i, name in enumerate(FER2013_CLASSES)}
