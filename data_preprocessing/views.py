"""Views of a dataset: a held-out validation part of train, and a dataset seen through another
label set (cross-dataset evaluation), without copying images."""
import numpy as np
import torch

# Expression names that mean the same class across the datasets' label lists (lower case).
EXPRESSION_SYNONYMS = {"happiness": "happy", "anger": "angry", "sadness": "sad", "surprised": "surprise",
                       "fearful": "fear", "disgusted": "disgust", "contemptuous": "contempt"}


class DatasetView(torch.utils.data.Dataset):
    """Items `indices` of `dataset`; with `relabel` (old label → new label, an array), labels renumbered
    into `classes`. Exposes what the training and evaluation code reads: `labels`, `classes`,
    `num_classes`, `image_names`, `transform`."""

    def __init__(self, dataset, indices, relabel=None, classes=None):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(dataset.labels, dtype=np.int64)[self.indices]
        self.labels = np.asarray(relabel, dtype=np.int64)[labels] if relabel is not None else labels
        self.classes = list(classes if classes is not None else dataset.classes)
        self.num_classes = len(self.classes)
        self.image_names = [dataset.image_names[i] for i in self.indices]

    @property
    def transform(self):
        return self.dataset.transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        image, _ = self.dataset[int(self.indices[index])]
        return image, int(self.labels[index])


def stratified_holdout(labels, fraction, seed):
    """`(kept, held_out)` sorted index arrays: of each class, a seeded random `round(fraction · n)` of
    its n images is held out (at least one when n ≥ 2, never all of them)."""
    if not 0 < fraction < 1:  # a public helper: outside (0, 1) it would hold out one or all but one quietly
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(max(int(round(fraction * len(members))), 1 if len(members) >= 2 else 0), len(members) - 1)
        held.extend(rng.permutation(members)[:count].tolist())
    held = np.sort(np.asarray(held, dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), held), held


def canonical_class_name(name):
    """`Happiness`, `happy` → `happy`: one spelling per expression across the datasets."""
    key = name.strip().lower()
    return EXPRESSION_SYNONYMS.get(key, key)


def match_classes(model_classes, data_classes):
    """For each data class, the index of the model class of the same expression (None if the model
    has none), matched by name through `EXPRESSION_SYNONYMS`. Duplicate names are refused."""
    model_index = {}
    for index, name in enumerate(model_classes):
        key = canonical_class_name(name)
        if key in model_index:
            raise ValueError(f"the model's classes name {key!r} twice: {', '.join(model_classes)}")
        model_index[key] = index
    return [model_index.get(canonical_class_name(name)) for name in data_classes]
