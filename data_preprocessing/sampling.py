"""Training groups: anchor, positive, negative, negative2 — drawn vectorised, O(1) per item.

For an anchor i of class y: positive = uniform over the other samples of class y (never i);
negative = uniform over all samples of other classes ("by_sample"), or, as the released QCS
AffectNet sampler does, a class drawn uniformly among the other classes and then a sample of it
("by_class"); negative2 = uniform over the other samples of the negative's class. DCS uses
(anchor, positive), QCS all four, the baseline the anchor alone; a group may be any layout of
these roles that starts with the anchor (a negative2 needs a negative before it).

The sampler runs in the main process (DataLoader workers only load images) and, like
DistributedSampler, gives each rank its own shard of the epoch's anchors, padded to equal length.
"""
import math
from collections.abc import Sequence

import numpy as np
import torch

from .datasets import ImageListDataset
from .errors import DataError

__all__ = ["GroupSampler", "GroupDataset", "ClassIndex"]

ROLES = ("anchor", "positive", "negative", "negative2")
# The group of each released size: the baseline's, DCS's and QCS's.
LAYOUTS = {1: ROLES[:1], 2: ROLES[:2], 4: ROLES}


class ClassIndex:
    """Per-class index arrays built once: samples sorted by class, class starts/counts, rank within class."""

    def __init__(self, labels, class_names: Sequence[str] | None = None):
        self.labels = labels = np.asarray(labels, dtype=np.int64).reshape(-1)  # a dataset's: 0..classes-1
        self.class_names = list(class_names) if class_names is not None else None
        self.counts = np.bincount(labels)
        self.starts = np.cumsum(self.counts) - self.counts
        self.order = np.argsort(labels, kind="stable")  # sample indices grouped by class
        # a sample's place in `order` (the inverse permutation) less its class's start
        self.rank_in_class = np.argsort(self.order) - self.starts[labels]

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
        own = np.searchsorted(present, self.labels[indices])  # the anchor's class among the present ones
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


class GroupSampler(torch.utils.data.Sampler):
    """Yields (a,) for group_size 1, (a, p) for 2 or (a, p, n, n2) for 4, as dataset indices;
    `group_size` may instead be a layout of `ROLES`, such as ("anchor", "positive", "negative").

    Anchors per epoch: a permutation of all samples, or for `balanced` a class-balanced draw with
    replacement (weights 1/count, len(labels)//`anchor_divisor` anchors). `negatives` picks the
    negative "by_sample" or "by_class" (see above). Groups depend only on (seed, epoch); call
    `set_epoch` each epoch. Each of `num_replicas` ranks gets every num_replicas-th group of the
    epoch not yet trained, padded to equal length by repeating the epoch's first groups. The
    groups trained by all ranks together are always the first ones of the epoch, whatever the
    number of ranks, so a run saved mid-epoch continues at the right groups with any number.
    """

    def __init__(self, labels, group_size: int, seed: int = 0, balanced: bool = False,
                 num_replicas: int = 1, rank: int = 0, class_names: Sequence[str] | None = None,
                 anchor_divisor: int = 8, negatives: str = "by_sample"):
        # seed, anchor_divisor and negatives come checked from the settings schema
        if not isinstance(group_size, tuple) and group_size not in LAYOUTS:
            raise ValueError(f"group_size must be 1 (baseline), 2 (DCS) or 4 (QCS), got {group_size!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}, got {rank}")
        self.roles = check_layout(LAYOUTS.get(group_size, group_size))
        index = self.index = ClassIndex(labels, class_names)
        negative = {"by_sample": index.draw_other_class, "by_class": index.draw_other_class_by_class}[negatives]
        # role -> (how it is drawn, from the samples of which role)
        self.draws = {"positive": (index.draw_other_of_same_class, "anchor"), "negative": (negative, "anchor"),
                      "negative2": (index.draw_other_of_same_class, "negative")}
        self.group_size = len(self.roles)
        self.seed, self.balanced, self.num_replicas, self.rank = int(seed), balanced, num_replicas, rank
        self.epoch = self.groups_done = 0
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
        if "negative" in self.roles and len(present) < 2:
            raise DataError(f"{'QCS groups need' if self.group_size == 4 else 'a negative needs'} at least two "
                            "classes for the negative pair; "
                            f"labels hold only class {self.index.class_label(int(present[0]))}")

    def set_epoch(self, epoch: int, groups_done: int = 0) -> None:
        """Choose the epoch, and how many of its groups all ranks together have already trained
        (after a mid-epoch resume); groups differ from epoch to epoch and are the same on every rank."""
        self.epoch, self.groups_done = int(epoch), int(groups_done)

    def __len__(self) -> int:
        return math.ceil(max(self.num_anchors - self.groups_done, 0) / self.num_replicas)

    def __iter__(self):
        return iter(map(tuple, self.epoch_groups().tolist()))

    def sample_groups(self, anchors, rng: np.random.Generator) -> np.ndarray:
        """Groups [len(anchors), group_size] for the given anchor indices (vectorised, O(1) per item)."""
        drawn = {"anchor": np.asarray(anchors, dtype=np.int64).reshape(-1)}
        for role in self.roles[1:]:  # in group order: the random stream follows the layout
            draw, source = self.draws[role]
            drawn[role] = draw(drawn[source], rng)
        return np.stack([drawn[role] for role in self.roles], axis=1)

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


def check_layout(roles):
    """`roles` as a tuple, if it is a layout of `ROLES` that a group can be drawn by; else ValueError."""
    roles = tuple(roles)
    if not (roles[:1] == ("anchor",) and len(set(roles)) == len(roles) and set(roles) <= set(ROLES)
            and ("negative2" not in roles or "negative" in roles[:roles.index("negative2")])):
        raise ValueError(f"a group layout starts with the anchor and takes each of {', '.join(ROLES)} at most "
                         f"once, a negative before a negative2; got {roles}")
    return roles


class GroupDataset(torch.utils.data.Dataset):
    """Turns a group of indices into (images, y, y_n, indices); each image gets its own transform draw.

    y is the label of the anchor, y_n that of the negative where the group has one, else y.
    `roles`: the groups' layout (default: the released layout of the group's size).
    """

    def __init__(self, base: ImageListDataset, roles=None):
        self.base = base
        self.roles = None if roles is None else check_layout(roles)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, group):
        indices = [int(i) for i in group]
        roles = self.roles or LAYOUTS.get(len(indices))
        if roles is None or len(roles) != len(indices):
            raise ValueError(f"a group holds 1 (baseline), 2 (DCS) or 4 (QCS) indices, got {len(indices)}: "
                             f"{indices}")
        images = tuple(self.base[i][0] for i in indices)
        labels = self.base.labels
        y = int(labels[indices[0]])
        y_n = int(labels[indices[roles.index("negative")]]) if "negative" in roles else y
        return images, y, y_n, torch.tensor(indices, dtype=torch.long)
