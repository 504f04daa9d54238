"""`build_dataset`: the datasets by name, with the demo dataset generated on first use.

The one module that imports both `datasets` (the readers and the registry) and `demo` (the demo
generator), so that neither of those two imports the other.
"""
import os

from .datasets import DEMO_META_NAME, ImageListDataset, canonical_name, default_data_root, read_dataset
from .demo import ensure_demo_dataset

__all__ = ["build_dataset"]


def build_dataset(name: str, split: str, data_root=None, transform=None, classes=None,
                  check_images: bool = True) -> ImageListDataset:
    """The `split` ("train", "test", "val" where present) of dataset `name` under `data_root`
    (default: the dataset's documented root); for "demo", a folder without a generated demo gets one
    with the default parameters first (a finished folder of any parameters is read as it is).

    `classes` renames the classes (same count) or, for 'folder', picks the class order.
    `check_images` verifies at construction that every listed image exists; it can be switched off
    only for the list-file datasets (ValueError for FER2013 and 'folder', whose images are never listed).
    """
    name = canonical_name(name)
    root = data_root if data_root is not None else default_data_root(name)
    if name == "demo" and not os.path.exists(os.path.join(os.fspath(root), DEMO_META_NAME)):
        ensure_demo_dataset(root)
    return read_dataset(name, split, data_root=root, transform=transform, classes=classes,
                        check_images=check_images)
