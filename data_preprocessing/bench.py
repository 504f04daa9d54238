"""Speed of group sampling and of image loading + train augmentation.

Run: python -m data_preprocessing.bench [--images 640] [--workers 0 2] [--naive-items 300] [--threads N]

1. QCS groups (indices only) from an AffectNet-sized label list (287,651 labels, 8 classes with
   AffectNet-8's training class sizes): the vectorised GroupSampler vs a naive per-item sampler that
   filters the whole label list three times per group.
2. Images/s through ImageListDataset + train transform A (224) in a DataLoader, on the FER2013
   subset beside the repository (../shared/data/fer2013-mini) if present, else on generated images.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .datasets import build_dataset
from .sampling import GroupSampler
from .transforms import train_transform

# AffectNet-8 training images per class: Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt.
AFFECTNET8_TRAIN_COUNTS = (74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750)
FER2013_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013-mini"


def affectnet_like_labels(seed: int = 0) -> np.ndarray:
    """287,651 shuffled labels with AffectNet-8's training class sizes."""
    labels = np.repeat(np.arange(len(AFFECTNET8_TRAIN_COUNTS)), AFFECTNET8_TRAIN_COUNTS)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def naive_group(labels: np.ndarray, anchor: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Reference per-item sampler: three scans of the whole label list for one group."""
    same = np.flatnonzero(labels == labels[anchor])
    positive = rng.choice(same[same != anchor])
    negative = rng.choice(np.flatnonzero(labels != labels[anchor]))
    same_as_negative = np.flatnonzero(labels == labels[negative])
    negative2 = rng.choice(same_as_negative[same_as_negative != negative])
    return anchor, int(positive), int(negative), int(negative2)


def best_of(repeats: int, run) -> float:
    """Shortest wall time of `repeats` calls of run()."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_sampling(naive_items: int) -> None:
    labels = affectnet_like_labels()
    sampler = GroupSampler(labels, 4, seed=0)
    groups = len(sampler)
    array_time = best_of(3, sampler.epoch_groups)
    iter_time = best_of(2, lambda: sum(1 for _ in sampler))
    rng = np.random.default_rng(0)
    anchors = rng.integers(0, len(labels), naive_items)
    naive_time = best_of(1, lambda: [naive_group(labels, int(a), rng) for a in anchors])
    vector_rate = groups / array_time
    naive_rate = naive_items / naive_time
    print(f"QCS group sampling, {len(labels):,} labels, 8 classes (AffectNet-8 sizes):")
    print(f"  vectorised epoch ({groups:,} groups, numpy array):   {vector_rate:14,.0f} groups/s")
    print(f"  vectorised, iterated as Python tuples:               {groups / iter_time:14,.0f} groups/s")
    print(f"  naive per item (3 label-list scans, {naive_items} items):    {naive_rate:14,.0f} groups/s")
    print(f"  speed-up vectorised / naive: {vector_rate / naive_rate:,.0f}x "
          f"(target >= 100,000 groups/s: {'met' if vector_rate >= 1e5 else 'NOT met'})")


def generated_image_root(folder: str, per_class: int = 64) -> str:
    """A tiny train/<class>/ tree of random 48x48 grayscale JPEGs."""
    rng = np.random.default_rng(0)
    for class_name in ("a", "b", "c", "d"):
        class_dir = os.path.join(folder, "train", class_name)
        os.makedirs(class_dir)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (48, 48), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(os.path.join(class_dir, f"{i:03d}.jpg"))
    return folder


def bench_loading(num_images: int, worker_counts: list[int], batch_size: int = 32) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        if FER2013_MINI.is_dir():
            dataset = build_dataset("FER2013", "train", FER2013_MINI)
            where = f"{FER2013_MINI} (48x48 grayscale JPEG)"
        else:
            dataset = build_dataset("folder", "train", generated_image_root(scratch))
            where = "generated 48x48 JPEGs (fer2013-mini absent)"
        dataset.transform = train_transform("A")
        order = np.random.default_rng(0).permutation(len(dataset))
        chosen = np.resize(order, num_images).tolist()
        for index in set(chosen):  # warm the page cache so every setting reads from memory
            with open(dataset.samples[index][0], "rb") as handle:
                handle.read()
        subset = torch.utils.data.Subset(dataset, chosen)
        print(f"Image loading + train transform A (224x224), {num_images} images from {where}, "
              f"batch {batch_size}, torch threads {torch.get_num_threads()}, files cached:")
        for workers in worker_counts:
            loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers)
            start = time.perf_counter()
            seen = sum(len(labels) for _, labels in loader)
            elapsed = time.perf_counter() - start
            print(f"  {workers} worker(s): {seen / elapsed:8,.0f} images/s "
                  f"(QCS: {seen / elapsed / 4:,.0f} groups/s), incl. worker start-up")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640, help="images to load per worker setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--naive-items", type=int, default=300, help="groups drawn by the naive sampler")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of the main process (default: torch's choice); "
                             "workers always use 1. On a busy machine 1 can be much faster for 0 workers.")
    args = parser.parse_args(argv)
    if args.images < 1 or args.naive_items < 1 or min(args.workers) < 0:
        parser.error("--images and --naive-items must be >= 1, --workers >= 0")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    bench_sampling(args.naive_items)
    print()
    bench_loading(args.images, args.workers)


if __name__ == "__main__":
    main()
