"""Image-list datasets: the dataset object (images on disk or in memory, read as RGB), `<image name>
<label>` list files, and the check that every listed image is there."""
import os
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import DataError
from .files import (
    NotRegularFileError,
    find_unreadable_images,
    invalid_utf8_position,
    non_regular_kind,
    open_regular_file,
)

__all__ = ["ImageListDataset", "ArrayImageDataset", "to_rgb", "parse_list_file", "check_label_range",
           "dataset_from_list_file", "require_root", "override_classes"]


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
        check_label_range(labels.tolist(), self.num_classes, source or "dataset")
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
        if len(fields) != 2 or not _INTEGER.fullmatch(fields[1]):
            raise DataError(f"{list_file}:{line_number}: expected '<image name> <label>', got {text!r}")
        name = fields[0].strip()
        if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            raise DataError(f"{list_file}:{line_number}: image name {name!r} points outside the image folder; "
                            f"list names must be relative to it, without '..'")
        names.append(name)
        labels.append(int(fields[1]))
        line_numbers.append(line_number)
    if not names:
        raise DataError(f"{list_file}: no '<image name> <label>' lines")
    check_label_range(labels, num_classes, list_file, line_numbers)
    return names, np.asarray(labels, dtype=np.int64), np.asarray(line_numbers, dtype=np.int64)


_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take "٣" and "1_0"


def check_label_range(labels: list[int], num_classes: int, where: str, line_numbers=None) -> None:
    """DataError if any label is outside 0..num_classes-1 (Python ints, so a label too large for
    int64 is named like any other); says so when the labels look 1-based."""
    bad = [i for i, label in enumerate(labels) if not 0 <= label < num_classes]
    if not bad:
        return
    first = bad[0]
    position = f"{where}:{line_numbers[first]}" if line_numbers is not None else where
    message = (f"{position}: label {labels[first]} outside 0..{num_classes - 1} "
               f"({len(bad)} such line(s); this dataset has {num_classes} classes)")
    if min(labels) >= 1 and max(labels) == num_classes:
        message += (f". The labels run {min(labels)}..{num_classes}: they look 1-based; "
                    f"list files must use 0-based labels (subtract 1)")
    raise DataError(message)


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


def require_root(data_root, name: str) -> str:
    if data_root is None:
        raise DataError(f"dataset {name!r} needs a data root (ROOT/train/<class>/..., ROOT/test/<class>/...)")
    data_root = os.fspath(data_root)
    if not os.path.exists(data_root):
        raise DataError(f"data root not found for {name}: {data_root}")
    return data_root


def override_classes(default: Sequence[str], classes, name: str) -> list[str]:
    if classes is None:
        return list(default)
    classes = list(classes)
    if len(classes) != len(default):
        raise DataError(f"classes= gives {len(classes)} names but {name} has {len(default)} classes")
    return classes
