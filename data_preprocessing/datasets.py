"""Facial-expression datasets: list-file layouts, FER2013 (csv or class folders), class-folder trees.

Every dataset is an :class:`ImageListDataset`: a list of (image path, 0-based label) pairs plus the
class names in label order. Data folders are only read, never written: `read_dataset` reads what is
on disk; `data_preprocessing.build.build_dataset` (the public `build_dataset`) also generates the
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
from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .errors import DataError
from .files import NotRegularFileError, invalid_utf8_position, non_regular_kind, open_regular_file
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
    "class_folder_samples", "extra_test_splits", "DATASETS",
]


FER2013_USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER2013_COLUMNS = ("emotion", "pixels", "Usage")
FER2013_SIDE = 48


# ----------------------------------------------------------------------------------------------
# The dataset object
# ----------------------------------------------------------------------------------------------

class ImageListDataset(torch.utils.data.Dataset):
    """Images with 0-based labels; `__getitem__(i)` -> (transform(RGB PIL image), label).

    Attributes: `samples` [(path, label)], `labels` (np.int64), `image_names` (as listed),
    `classes` (names in label order), `num_classes`, `transform` (settable), `source` (where the
    list came from, used in error messages).
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                 image_names: Sequence[str] | None = None, transform: Callable | None = None,
                 source: str = ""):
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.source = source
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = int(labels[(labels < 0) | (labels >= self.num_classes)][0])
            raise DataError(f"{source or 'dataset'}: label {bad} outside 0..{self.num_classes - 1}")
        self.labels = labels
        self.samples = [(str(p), int(y)) for p, y in zip(paths, labels.tolist())]
        self.image_names = list(image_names) if image_names is not None else [str(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        image = self.load_image(int(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def load_image(self, index: int) -> Image.Image:
        """The image at `index` as an RGB PIL image; DataError naming the file if it cannot be read."""
        path = self.samples[index][0]
        try:
            with open_regular_file(path) as handle:  # a named pipe would block open() for ever
                image = Image.open(handle)
                image.load()  # decode now, so truncated files fail here with their name
            return to_rgb(image)
        except FileNotFoundError:
            raise DataError(f"image missing: {path}" + self._listed_in()) from None
        except NotRegularFileError as err:
            raise DataError(f"cannot read image {path}" + self._listed_in() + f": it is {err.kind}, "
                            f"not a regular file") from None
        except Image.UnidentifiedImageError:  # its message names the open file object, not the path
            raise DataError(f"cannot read image {path}" + self._listed_in() + ": not an image file "
                            "(or in a format Pillow cannot read)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # corrupt or hostile files
            raise DataError(f"cannot read image {path}" + self._listed_in() + f": {err}") from err

    def class_counts(self) -> np.ndarray:
        """Number of samples per class, in label order."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def _listed_in(self) -> str:
        return f" (listed in {self.source})" if self.source else ""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {self.num_classes} classes"
                + (f", from {self.source}" if self.source else "") + ")")


class ArrayImageDataset(ImageListDataset):
    """Images held in memory as a uint8 array [N, H, W] (grayscale) or [N, H, W, 3]."""

    def __init__(self, pixels: np.ndarray, labels, classes, image_names, transform=None, source=""):
        paths = [f"{source}#{name}" for name in image_names]
        super().__init__(paths, labels, classes, image_names=image_names, transform=transform, source=source)
        self.pixels = pixels

    def load_image(self, index: int) -> Image.Image:
        return to_rgb(Image.fromarray(self.pixels[index]))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, 16-bit, ...) as RGB; alpha is dropped, like PIL's convert."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # Wide grayscale: PIL's convert would clip at 255; rescale 16-bit values to 8 bits instead.
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or array.max() > 255:
            array = array / 257.0
        return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


# ----------------------------------------------------------------------------------------------
# List files
# ----------------------------------------------------------------------------------------------

def parse_list_file(list_file: str, num_classes: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse `<image name> <label>` lines -> (names, labels int64, line numbers).

    Blank lines and extra whitespace are ignored; the label is the last field, so names may contain
    sub-folders (and spaces), but never lead outside the image folder (no absolute path, no `..`).
    Malformed lines, such names and out-of-range labels raise DataError with file:line.
    """
    list_file = str(list_file)
    kind = non_regular_kind(list_file)
    if kind == "missing":
        raise DataError(f"list file not found: {list_file}")
    if kind is not None:
        raise DataError(f"list file {list_file} is {kind}, not a regular file")
    try:
        with open(list_file, encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError:
        raise DataError(invalid_utf8_position(list_file) + "; list files must be UTF-8") from None
    names, labels, line_numbers = [], [], []
    for line_number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        fields = text.rsplit(None, 1)
        if len(fields) != 2 or not _is_int(fields[1]):
            raise DataError(f"{list_file}:{line_number}: expected '<image name> <label>', got {text!r}")
        names.append(_inside_image_folder(fields[0].strip(), list_file, line_number))
        labels.append(_label_in_int64(fields[1], num_classes, list_file, line_number))
        line_numbers.append(line_number)
    if not names:
        raise DataError(f"{list_file}: no '<image name> <label>' lines")
    labels = np.asarray(labels, dtype=np.int64)
    line_numbers = np.asarray(line_numbers, dtype=np.int64)
    check_label_range(labels, num_classes, list_file, line_numbers)
    return names, labels, line_numbers


def _inside_image_folder(name: str, list_file: str, line_number: int) -> str:
    """`name` if it stays inside the image folder; DataError for an absolute path or a `..` part."""
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        raise DataError(f"{list_file}:{line_number}: image name {name!r} points outside the image folder; "
                        f"list names must be relative to it, without '..'")
    return name


_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = np.iinfo(np.int64).max


def _is_int(text: str) -> bool:
    return _INTEGER.fullmatch(text) is not None


def _label_in_int64(text: str, num_classes: int, list_file: str, line_number: int) -> int:
    """The label `text` as an int; DataError with file:line when it does not even fit int64."""
    label = int(text)
    if abs(label) > _INT64_MAX:
        raise DataError(f"{list_file}:{line_number}: label {text} outside 0..{num_classes - 1}")
    return label


def check_label_range(labels: np.ndarray, num_classes: int, where: str, line_numbers=None) -> None:
    """DataError if any label is outside 0..num_classes-1; says so when the labels look 1-based."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if not len(bad):
        return
    first = int(bad[0])
    position = f"{where}:{int(line_numbers[first])}" if line_numbers is not None else where
    message = (f"{position}: label {int(labels[first])} outside 0..{num_classes - 1} "
               f"({len(bad)} such line(s); this dataset has {num_classes} classes)")
    if labels.min() >= 1 and labels.max() == num_classes:
        message += (f". The labels run {int(labels.min())}..{num_classes}: they look 1-based; "
                    f"list files must use 0-based labels (subtract 1)")
    raise DataError(message)


def find_unreadable_images(image_dir: str, names: Sequence[str]) -> tuple[list[int], list[int]]:
    """(indices of `names` with no file under `image_dir`, indices naming something that is not a
    regular file: a named pipe, a folder, a broken link, ...), from one directory listing per sub-folder."""
    by_folder: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        by_folder.setdefault(os.path.dirname(name), []).append(index)
    missing, not_regular = [], []
    for folder, indices in by_folder.items():
        regular, other = _folder_entries(os.path.join(image_dir, folder))
        for index in indices:
            base = os.path.basename(names[index])
            if base in regular:
                continue
            if base in other:
                not_regular.append(index)
            # The isfile() fallback keeps case-insensitive file systems and odd names correct.
            elif not os.path.isfile(os.path.join(image_dir, names[index])):
                missing.append(index)
    return missing, not_regular


def _folder_entries(folder: str) -> tuple[set, set]:
    """(names of the regular files in `folder`, names of everything else); both empty if unlistable.
    The file type comes with the listing, so this costs no stat per file."""
    regular, other = set(), set()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                (regular if _is_regular(entry) else other).add(entry.name)
    except OSError:
        pass
    return regular, other


def _is_regular(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def dataset_from_list_file(list_file: str, image_dir: str, classes: Sequence[str], transform=None,
                           check_images: bool = True) -> ImageListDataset:
    """An ImageListDataset from a `<image name> <label>` list file and its image folder."""
    list_file, image_dir = str(list_file), str(image_dir)
    if not os.path.isdir(image_dir):
        raise DataError(f"image folder not found: {image_dir} (needed by {list_file})")
    names, labels, line_numbers = parse_list_file(list_file, len(classes))
    if check_images:
        missing, not_regular = find_unreadable_images(image_dir, names)
        if missing:
            examples = ", ".join(f"{names[i]} (line {int(line_numbers[i])})" for i in missing[:3])
            raise DataError(f"{list_file}: {len(missing)} of {len(names)} listed images are missing "
                            f"under {image_dir}, e.g. {examples}")
        if not_regular:
            first = not_regular[0]
            kind = non_regular_kind(os.path.join(image_dir, names[first]))
            raise DataError(f"{list_file}:{int(line_numbers[first])}: {names[first]} under {image_dir} is {kind}, "
                            f"not a regular image file ({len(not_regular)} such listed image(s))")
    paths = [os.path.join(image_dir, name) for name in names]
    return ImageListDataset(paths, labels, classes, image_names=names, transform=transform, source=list_file)


# ----------------------------------------------------------------------------------------------
# Class-folder trees and FER2013
# ----------------------------------------------------------------------------------------------

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
    paths, labels, names = [], [], []
    for folder in folders:
        class_dir = os.path.join(split_dir, folder)
        found = sorted(_images_under(class_dir))
        if not found:
            raise DataError(f"empty class folder (no image files): {class_dir}")
        for relative in found:
            name = os.path.join(folder, relative)
            paths.append(os.path.join(split_dir, name))
            labels.append(folder_to_label[folder])
            names.append(name)
    if not paths:
        raise DataError(f"no class folders with images under {split_dir}")
    return paths, labels, names


def _images_under(class_dir: str) -> list[str]:
    """Image files under `class_dir` (hidden folders skipped, linked folders not followed), relative
    to it; DataError for an image name that is not a regular file (a named pipe would block reading)."""
    found = []
    pending = [""]
    while pending:
        relative_dir = pending.pop()
        for entry in _scan(os.path.join(class_dir, relative_dir)):
            relative = os.path.join(relative_dir, entry.name) if relative_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith("."):
                    pending.append(relative)
            elif is_image_file(entry.name):
                if not _is_regular(entry):
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
    root = _require_root(data_root, "folder")
    split_dir = os.path.join(root, split)
    if classes is None:
        classes = folder_classes(root)
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise DataError(f"--classes has duplicates: {classes}")
    paths, labels, names = class_folder_samples(split_dir, {c: i for i, c in enumerate(classes)},
                                                require_all=(split == "train"))
    return ImageListDataset(paths, labels, classes, image_names=names, transform=transform, source=split_dir)


def folder_classes(data_root) -> list[str]:
    """Sorted class-folder names under data_root/train."""
    root = _require_root(data_root, "folder")
    classes = list_class_folders(os.path.join(root, "train"))
    if not classes:
        raise DataError(f"no class folders under {os.path.join(root, 'train')}")
    return classes


def fer2013_csv_path(data_root: str) -> str | None:
    """The fer2013.csv to use for `data_root` (the csv itself or data_root/fer2013.csv), else None."""
    for candidate in (data_root, os.path.join(data_root, "fer2013.csv")):
        kind = non_regular_kind(candidate)
        if kind is None:
            return candidate
        if kind not in ("missing", "a folder"):
            raise DataError(f"{candidate} is {kind}, not a regular csv file")
    return None


@dataclass(frozen=True)
class Fer2013Row:
    """One data row of fer2013.csv: `where` ("file:line"), `index` (0-based among the data rows),
    `emotion` (a FER2013 label), `usage` (Training, PublicTest or PrivateTest) and the unparsed
    `pixels` string (see `parse_fer2013_pixels`)."""

    where: str
    index: int
    emotion: int
    usage: str
    pixels: str


def read_fer2013_rows(csv_path) -> Iterator[Fer2013Row]:
    """Every data row of Kaggle's fer2013.csv, in file order, with its header, width, Usage and
    emotion checked (DataError naming file:line); blank lines are skipped."""
    csv_path = os.fspath(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            yield from _fer2013_rows(csv.reader(handle), csv_path)
    except UnicodeDecodeError:
        raise DataError(invalid_utf8_position(csv_path) + "; fer2013.csv must be UTF-8 (or ASCII)") from None


def _fer2013_rows(reader, csv_path: str) -> Iterator[Fer2013Row]:
    header = [h.strip() for h in next(reader, [])]
    columns = {h.lower(): i for i, h in enumerate(header)}
    absent = [c for c in FER2013_COLUMNS if c.lower() not in columns]
    if absent:
        raise DataError(f"{csv_path}:1: header lacks column(s) {absent} (got {header})")
    emotion_col, pixels_col, usage_col = (columns[c.lower()] for c in FER2013_COLUMNS)
    index = -1
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        index += 1
        where = f"{csv_path}:{reader.line_num}"
        if len(row) < len(header):
            raise DataError(f"{where}: expected {len(header)} columns, got {len(row)}")
        usage = row[usage_col].strip()
        if usage not in FER2013_USAGE_TO_SPLIT:
            raise DataError(f"{where}: Usage {usage!r} is not Training, PublicTest or PrivateTest")
        emotion = row[emotion_col].strip()
        if not emotion.isascii() or not emotion.isdigit() or int(emotion) >= len(FER2013_CLASSES):
            raise DataError(f"{where}: emotion {emotion!r} is not a label 0..{len(FER2013_CLASSES) - 1}")
        yield Fer2013Row(where, index, int(emotion), usage, row[pixels_col])


def parse_fer2013_pixels(text: str, where: str) -> np.ndarray:
    """A fer2013.csv pixel string (48*48 space-separated integers 0..255) -> uint8 [48, 48];
    DataError starting with `where` (file:line) otherwise."""
    with warnings.catch_warnings():
        # Older numpy warns and stops early at bad text (the length check catches it); newer raises.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ") if text.strip() else np.zeros(0, np.int64)
        except ValueError:
            raise DataError(f"{where}: pixels are not space-separated integers") from None
    count = FER2013_SIDE * FER2013_SIDE
    if values.size != count or values.min() < 0 or values.max() > 255:
        raise DataError(f"{where}: pixels must be {count} values 0..255 "
                        f"({FER2013_SIDE}x{FER2013_SIDE}), got {values.size} values")
    return values.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE)


def load_fer2013_csv(csv_path: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of Kaggle's fer2013.csv for one split -> (pixels uint8 [n,48,48], labels, names).

    Names are `fer2013_<row index>` (0-based data row). Usage: Training -> train,
    PublicTest -> val, PrivateTest -> test.
    """
    wanted_usage = {s: u for u, s in FER2013_USAGE_TO_SPLIT.items()}.get(split)
    if wanted_usage is None:
        raise DataError(f"{csv_path}: split {split!r} unknown; fer2013.csv has train, val, test")
    rows = [row for row in read_fer2013_rows(csv_path) if row.usage == wanted_usage]
    if not rows:
        raise DataError(f"{csv_path}: no rows with Usage {wanted_usage} (split {split!r})")
    pixels = np.stack([parse_fer2013_pixels(row.pixels, row.where) for row in rows])
    labels = np.asarray([row.emotion for row in rows], dtype=np.int64)
    return pixels, labels, [f"fer2013_{row.index}" for row in rows]


def fer2013_dataset(data_root, split, classes=None, transform=None) -> ImageListDataset:
    """FER2013 from fer2013.csv (train/val/test) or from train/<class>/, test/<class>/ folders."""
    root = _require_root(data_root, "FER2013")
    class_names = _override_classes(FER2013_CLASSES, classes, "FER2013")
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


# ----------------------------------------------------------------------------------------------
# Selection by name
# ----------------------------------------------------------------------------------------------

def list_file_reader(layout: ListLayout):
    """Reader of a released list-file layout."""
    def read(root, split, classes, transform, check_images):
        root = _require_root(root, layout.name)
        if split not in layout.list_files:
            raise DataError(f"{layout.name} has no split {split!r}; choose one of {sorted(layout.list_files)}")
        return dataset_from_list_file(os.path.join(root, layout.list_files[split]),
                                      os.path.join(root, layout.image_dir),
                                      _override_classes(layout.classes, classes, layout.name),
                                      transform=transform, check_images=check_images)
    return read


def read_demo(root, split, classes, transform, check_images):
    """The generated demo set, once generated (a finished folder of any parameters is read); DataError
    when `root` holds none (`build_dataset` generates it first)."""
    if not os.path.exists(os.path.join(os.fspath(root), DEMO_META_NAME)):
        raise DataError(f"no generated demo dataset in {root} (no {DEMO_META_NAME}); generate it with "
                        f"python -m data_preprocessing.demo --out {root}")
    return list_file_reader(DEMO_LAYOUT)(root, split, classes, transform, check_images)


# These two find their images by listing folders (or hold them in memory): nothing listed can be
# missing, so `check_images` has nothing to do (build_dataset refuses check_images=False for them).
def read_fer2013(root, split, classes, transform, check_images):
    return fer2013_dataset(root, split, classes=classes, transform=transform)


def read_folder(root, split, classes, transform, check_images):
    return folder_dataset(root, split, classes=classes, transform=transform)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: default data root, classes in label order (None: the class folders), the
    reader `(root, split, classes, transform, check_images) -> ImageListDataset`, test splits
    evaluated beside "test" during training, and whether its images are named in list files
    (only then can a listed image be missing, so only then can `check_images` be switched off)."""

    default_root: str | None
    classes: tuple | None
    read: Callable
    extra_test_splits: tuple = ()
    lists_images: bool = True


DATASETS = {
    **{name: DatasetEntry(layout.default_root, layout.classes, list_file_reader(layout))
       for name, layout in LIST_LAYOUTS.items()},
    "FER2013": DatasetEntry("./datas/FER2013", tuple(FER2013_CLASSES), read_fer2013, lists_images=False),
    "folder": DatasetEntry(None, None, read_folder, lists_images=False),
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
    if not check_images and not entry.lists_images:
        raise ValueError(f"check_images=False applies to list-file datasets only; {name} finds its images "
                         f"by listing folders (or reads them from fer2013.csv), so none can be missing")
    root = data_root if data_root is not None else default_data_root(name)
    return entry.read(root, str(split), classes, transform, check_images)


def _require_root(data_root, name: str) -> str:
    if data_root is None:
        raise DataError(f"dataset {name!r} needs a data root (ROOT/train/<class>/..., ROOT/test/<class>/...)")
    data_root = os.fspath(data_root)
    if not os.path.exists(data_root):
        raise DataError(f"data root not found for {name}: {data_root}")
    return data_root


def _override_classes(default: Sequence[str], classes, name: str) -> list[str]:
    if classes is None:
        return list(default)
    classes = list(classes)
    if len(classes) != len(default):
        raise DataError(f"classes= gives {len(classes)} names but {name} has {len(default)} classes")
    return classes
