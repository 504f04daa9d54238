"""The benchmark's data parts: QCS group sampling on AffectNet-sized labels, and the released train
transforms' cost per image in a worker (released PIL pipeline vs `--device-augment`'s split) and
on the device."""
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from data_preprocessing import GroupSampler, ImageListDataset, train_transform
from data_preprocessing.device_augment import split_train_transform

from ..inference import DEFAULT_IMAGE_SIZE
from ..recipes import RELEASED
from .bench_model import alternating_times

AFFECTNET_COUNTS = (74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750)  # AffectNet-8 train
JPEG_SIDE = 100  # RAF-DB's aligned faces
AUGMENT_BATCH = 24  # images per collated batch and photometric call: a QCS branch at the released batch size


def sampling_rows(repeats):
    """QCS groups/s on an AffectNet-8-sized, skewed label list, shuffled and class-balanced."""
    labels = np.repeat(np.arange(len(AFFECTNET_COUNTS)), AFFECTNET_COUNTS)
    rows = []
    for balanced, negatives in ((False, "by_sample"), (True, "by_class")):
        sampler = GroupSampler(labels, 4, balanced=balanced, anchor_divisor=12, negatives=negatives)
        seconds = []
        for epoch in range(repeats):
            sampler.set_epoch(epoch)
            start = time.perf_counter()
            groups = sampler.epoch_groups()
            seconds.append(time.perf_counter() - start)
        rows.append(dict(anchors="class-balanced" if balanced else "shuffled", negatives=negatives,
                         groups=len(groups), groups_per_s=len(groups) / statistics.median(seconds)))
    return rows


def recipe_augmentations():
    """`[(label, augmentation, recipes using it)]`: each distinct train transform of the released recipes."""
    found = {}
    for (arch, dataset), row in RELEASED.items():
        key = repr(sorted(row.augmentation.items()))
        found.setdefault(key, (augmentation_label(row.augmentation), row.augmentation, []))[2].append(
            f"{arch.upper()} {dataset}")
    return list(found.values())


def augmentation_label(augmentation):
    """`A`, `A, no jitter`, `B(234, ±10°)`, `B(236, ±12°, erase 0.03-0.1)`."""
    if augmentation.get("kind", "A") == "A":
        return "A" if augmentation.get("color_jitter", True) else "A, no jitter"
    low, high = augmentation.get("erase_scale", (0.02, 0.1))
    erase = "" if (low, high) == (0.02, 0.1) else f", erase {low:g}-{high:g}"
    return f"B({augmentation['resize']}, ±{augmentation['rotation']}°{erase})"


def sample_jpeg(folder):
    """A 100x100 JPEG face-sized test image (smooth colour gradients with noise)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:JPEG_SIDE, 0:JPEG_SIDE]
    pixels = np.stack([128 + 70 * np.sin(x / (9 + c) + y / (13 - c)) + rng.normal(0, 12, x.shape)
                       for c in range(3)], -1)
    path = Path(folder) / "face.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


@contextmanager
def threads(count):
    """Run the block with `count` torch threads (a DataLoader worker has one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def augment_rows(args):
    """Per released train transform: worker ms/image released vs split (alternating), the split's
    photometric part on the device, and the ratios."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = sample_jpeg(folder)
        for label, augmentation, recipes in recipe_augmentations():
            released = train_transform(**augmentation, image_size=DEFAULT_IMAGE_SIZE)
            worker, photometric = split_train_transform(released)
            row = dict(transform=label, recipes=", ".join(recipes), **worker_ms(path, released, worker, args),
                       device_ms=photometric_ms(photometric, args))
            row["worker_ratio"] = row["released_ms"] / row["worker_ms"]
            row["total_ratio"] = row["released_ms"] / (row["worker_ms"] + row["device_ms"])
            rows.append(row)
    return rows


def worker_ms(path, released, worker, args):
    """ms/image of a worker's job (load `path`, transform, collate batches) for each transform in one
    thread, timed alternately."""
    datasets = {name: ImageListDataset([str(path)], [0], ["face"], transform=tf)
                for name, tf in (("released", released), ("worker", worker))}
    runs = {name: (lambda d=d: [default_collate([d[0] for _ in range(AUGMENT_BATCH)])
                                for _ in range(args.augment_batches)]) for name, d in datasets.items()}
    with threads(1):
        times = alternating_times(runs, args.repeats, args.warmup, torch.device("cpu"))
    images = args.augment_batches * AUGMENT_BATCH
    return {f"{name}_ms": 1000 * statistics.median(seconds) / images for name, seconds in times.items()}


def photometric_ms(photometric, args):
    """ms/image of the photometric part on a uint8 batch already on the device (parameters drawn included)."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (AUGMENT_BATCH, 3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE),
                          dtype=torch.uint8, generator=generator).to(args.device)
    times = alternating_times({"device": lambda: photometric(batch, generator)}, args.repeats, args.warmup,
                              args.device)
    return 1000 * statistics.median(times["device"]) / AUGMENT_BATCH
