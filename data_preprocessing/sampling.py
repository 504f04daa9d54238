"""Training groups: anchor, positive, negative, negative2 — drawn vectorised, O(1) per item.

For an anchor i of class y: positive = uniform over the other samples of class y (never i);
negative = uniform over all samples of other classes ("by_sample"), or, as the released QCS
AffectNet sampler does, a class drawn uniformly among the other classes and then a sample of it
("by_class"); negative2 = uniform over the other samples of the negative's class. DCS uses
(anchor, positive), QCS all four, the baseline the anchor alone.

The sampler runs in the main process (DataLoader workers only load images) and, like
DistributedSampler, gives each rank its own shard of the epoch's anchors, padded to equal length.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .datasets import ImageListDataset
from .errors import DataError

__all__ = ["GroupSampler", "GroupDataset", "ClassIndex"]


class ClassIndex:
    """Per-class index arrays built once: samples sorted by class, class starts/counts, rank within class."""

    def __init__(self, labels, class_names: Sequence[str] | None = None):
        labels = np.asarray(labels).reshape(-1)
        if labels.size == 0:
            raise DataError("no labels to sample groups from")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if labels.min() < 0:
            raise DataError(f"labels must be >= 0, got {int(labels.min())}")
        self.labels = labels
        self.class_names = list(class_names) if class_names is not None else None
        self.counts = np.bincount(labels)
        self.starts = np.cumsum(self.counts) - self.counts
        self.order = np.argsort(labels, kind="stable")  # sample indices grouped by class
        self.rank_in_class = np.empty_like(labels)
        self.rank_in_class[self.order] = np.arange(labels.size) - self.starts[labels[self.order]]

    def class_label(self, label: int) -> str:
        if self.class_names is not None and label < len(self.class_names):
            return f"{label} ({self.class_names[label]})"
        return str(label)

    def draw_other_of_same_class(self, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each index, a uniform random other sample of its class."""
        classes = self.labels[indices]
        offsets = rng.integers(0, self.counts[classes] - 1)
        offsets += offsets >= self.rank_in_class[indices]  # skip the sample itself
        return self.order[self.starts[classes] + offsets]

    def draw_other_class_by_class(self, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each index, a class drawn uniformly among the other present classes, then a uniform
        random sample of that class."""
        present = np.flatnonzero(self.counts)
        position_of = np.full(self.counts.size, -1)
        position_of[present] = np.arange(present.size)
        own = position_of[self.labels[indices]]
        picks = rng.integers(0, present.size - 1, size=len(indices))
        picks += picks >= own  # skip the anchor's own class
        classes = present[picks]
        offsets = rng.integers(0, self.counts[classes])
        return self.order[self.starts[classes] + offsets]

    def draw_other_class(self, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each index, a uniform random sample among all samples of the other classes."""
        classes = self.labels[indices]
        counts = self.counts[classes]
        positions = rng.integers(0, self.labels.size - counts)
        positions += (positions >= self.starts[classes]) * counts  # jump over the class's block
        return self.order[positions]


NEGATIVE_RULES = ("by_sample", "by_class")


class GroupSampler(torch.utils.data.Sampler):
    """Yields (a,) for group_size 1, (a, p) for 2 or (a, p, n, n2) for 4, as dataset indices.

    Anchors per epoch: a permutation of all samples, or for `balanced` a class-balanced draw with
    replacement (weights 1/count, len(labels)//`anchor_divisor` anchors). `negatives` picks the
    negative "by_sample" or "by_class" (see above). Groups depend only on (seed, epoch); call
    `set_epoch` each epoch. Each of `num_replicas` ranks gets every num_replicas-th group of the
    epoch not yet trained, padded to equal length by repeating the epoch's first groups. The
    groups trained by all ranks together are always the first ones of the epoch, whatever the
    number of ranks, so a run saved mid-epoch continues at the right groups with any number.
    """

    def __init__(self, labels, group_size: int, seed: int = 0, balanced: bool = False,
                 num_replicas: int | None = 1, rank: int | None = 0, class_names: Sequence[str] | None = None,
                 anchor_divisor: int = 8, negatives: str = "by_sample"):
        if group_size not in (1, 2, 4):
            raise ValueError(f"group_size must be 1 (baseline), 2 (DCS) or 4 (QCS), got {group_size!r}")
        if negatives not in NEGATIVE_RULES:
            raise ValueError(f"negatives must be one of {NEGATIVE_RULES}, got {negatives!r}")
        if int(anchor_divisor) < 1:
            raise ValueError(f"anchor_divisor must be >= 1, got {anchor_divisor}")
        num_replicas, rank = _replicas_and_rank(num_replicas, rank)
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.index = ClassIndex(labels, class_names)
        self.group_size = group_size
        self.seed = int(seed)
        self.balanced = balanced
        self.num_replicas = num_replicas
        self.rank = rank
        self.negatives = negatives
        self.epoch = 0
        self.groups_done = 0
        num_images = self.index.labels.size
        self.num_anchors = num_images // int(anchor_divisor) if balanced else num_images
        if self.num_anchors < 1:
            raise DataError(f"{num_images} training images give no anchors for the balanced sampler "
                            f"(len // {anchor_divisor})")
        self._check_classes()

    def _check_classes(self) -> None:
        present = np.flatnonzero(self.index.counts)
        singles = [int(c) for c in present if self.index.counts[c] == 1]
        if singles and self.group_size > 1:
            names = ", ".join(self.index.class_label(c) for c in singles)
            raise DataError(f"class {names} has a single sample: it cannot give a positive (another "
                            f"image of the same class); add images or drop the class")
        if self.group_size == 4 and len(present) < 2:
            raise DataError("QCS groups need at least two classes for the negative pair; "
                            f"labels hold only class {self.index.class_label(int(present[0]))}")

    def set_epoch(self, epoch: int, groups_done: int = 0) -> None:
        """Choose the epoch, and how many of its groups all ranks together have already trained
        (after a mid-epoch resume); groups differ from epoch to epoch and are the same on every rank."""
        if int(groups_done) < 0:
            raise ValueError(f"groups_done must be >= 0, got {groups_done}")
        self.epoch, self.groups_done = int(epoch), int(groups_done)

    def __len__(self) -> int:
        return math.ceil(max(self.num_anchors - self.groups_done, 0) / self.num_replicas)

    def __iter__(self):
        return iter(map(tuple, self.epoch_groups().tolist()))

    def sample_groups(self, anchors, rng: np.random.Generator) -> np.ndarray:
        """Groups [len(anchors), group_size] for the given anchor indices (vectorised, O(1) per item)."""
        anchors = np.asarray(anchors, dtype=np.int64).reshape(-1)
        if self.group_size == 1:
            return anchors[:, None]
        positives = self.index.draw_other_of_same_class(anchors, rng)
        if self.group_size == 2:
            return np.stack([anchors, positives], axis=1)
        draw_negative = (self.index.draw_other_class_by_class if self.negatives == "by_class"
                         else self.index.draw_other_class)
        negatives = draw_negative(anchors, rng)
        negatives2 = self.index.draw_other_of_same_class(negatives, rng)
        return np.stack([anchors, positives, negatives, negatives2], axis=1)

    def epoch_anchors(self, rng: np.random.Generator) -> np.ndarray:
        """All anchors of the epoch (before sharding)."""
        num_images = self.index.labels.size
        if self.balanced:
            weights = 1.0 / self.index.counts[self.index.labels]
            return rng.choice(num_images, size=self.num_anchors, replace=True, p=weights / weights.sum())
        return rng.permutation(num_images)

    def epoch_groups(self) -> np.ndarray:
        """This rank's groups [len(self), group_size] of the current epoch's untrained ones."""
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = self.sample_groups(self.epoch_anchors(rng), rng)
        rest = groups[self.groups_done:]
        padding = len(self) * self.num_replicas - len(rest)  # like DistributedSampler: from the start
        rest = np.concatenate([rest, np.resize(groups, (padding, groups.shape[1]))])
        return rest[self.rank::self.num_replicas]


def _replicas_and_rank(num_replicas, rank) -> tuple[int, int]:
    """Defaults from torch.distributed when None and a process group is running."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if distributed else 1
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    if int(num_replicas) < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    if not 0 <= int(rank) < int(num_replicas):
        raise ValueError(f"rank must be in 0..{int(num_replicas) - 1}, got {rank}")
    return int(num_replicas), int(rank)


class GroupDataset(torch.utils.data.Dataset):
    """Turns a group of indices into (images, y, y_n, indices); each image gets its own transform draw.

    y is the label of the anchor, y_n that of the negative (index 2) for groups of 4, else y.
    """

    def __init__(self, base: ImageListDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, group):
        indices = [int(i) for i in group]
        if len(indices) not in (1, 2, 4):
            raise ValueError(f"a group holds 1 (baseline), 2 (DCS) or 4 (QCS) indices, got {len(indices)}: "
                             f"{indices}")
        images = tuple(self.base[i][0] for i in indices)
        labels = self.base.labels
        y = int(labels[indices[0]])
        y_n = int(labels[indices[2]]) if len(indices) == 4 else y
        return images, y, y_n, torch.tensor(indices, dtype=torch.long)
