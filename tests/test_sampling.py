"""Training groups: GroupSampler invariants, uniformity, seeds/epochs, shards, balance; GroupDataset."""

import numpy as np
import pytest
import torch
from PIL import Image

from data_preprocessing import DataError, GroupDataset, GroupSampler, build_dataset, train_transform

# 12 samples; class 0: {1, 3, 7}, class 1: {2, 6, 10}, class 2: {0, 4, 5, 9}, class 3: {8, 11}.
LABELS = np.array([2, 0, 1, 0, 2, 2, 1, 0, 3, 2, 1, 3])
MEMBERS = {c: np.flatnonzero(LABELS == c).tolist() for c in range(4)}


def chi_square(values, categories):
    """Pearson statistic of `values` against a uniform distribution over `categories`."""
    counts = np.array([np.sum(values == c) for c in categories], dtype=float)
    assert counts.sum() == len(values), "a value fell outside the allowed categories"
    expected = len(values) / len(categories)
    return float(((counts - expected) ** 2 / expected).sum())


def loose_bound(categories):
    df = len(categories) - 1
    return df + 6 * np.sqrt(2 * df)  # about 6 standard deviations above the chi-square mean


def test_group_invariants_over_many_draws():
    sampler = GroupSampler(LABELS, 4, seed=3)
    anchors = np.tile(np.arange(len(LABELS)), 3000)
    groups = sampler.sample_groups(anchors, np.random.default_rng(1))
    a, p, n, n2 = groups.T
    assert groups.shape == (len(anchors), 4)
    assert np.array_equal(a, anchors)
    assert np.all(LABELS[p] == LABELS[a]) and np.all(p != a)
    assert np.all(LABELS[n] != LABELS[a])
    assert np.all(LABELS[n2] == LABELS[n]) and np.all(n2 != n)
    # Every possible partner shows up somewhere.
    assert set(p.tolist()) == set(range(12)) and set(n.tolist()) == set(range(12))


def test_partners_are_uniform():
    sampler = GroupSampler(LABELS, 4, seed=0)
    anchor = 4  # class 2
    groups = sampler.sample_groups(np.full(24000, anchor), np.random.default_rng(7))
    positives = [m for m in MEMBERS[2] if m != anchor]
    assert chi_square(groups[:, 1], positives) < loose_bound(positives)
    others = [i for i in range(12) if LABELS[i] != 2]
    assert chi_square(groups[:, 2], others) < loose_bound(others)
    for negative in others:  # negative2 given the negative: uniform over the rest of its class
        chosen = groups[groups[:, 2] == negative, 3]
        rest = [m for m in MEMBERS[LABELS[negative]] if m != negative]
        if len(rest) > 1:
            assert chi_square(chosen, rest) < loose_bound(rest)
        else:
            assert set(chosen.tolist()) == set(rest)


def test_uniformity_check_catches_a_biased_draw():
    biased = np.array([0] * 500 + [5] * 300 + [9] * 200)
    assert chi_square(biased, [0, 5, 9]) > loose_bound([0, 5, 9])


def test_dcs_pairs():
    sampler = GroupSampler(LABELS, 2, seed=0)
    pairs = np.array(list(sampler))
    assert pairs.shape == (12, 2) and len(sampler) == 12
    assert sorted(pairs[:, 0].tolist()) == list(range(12))  # one epoch = every sample once as anchor
    assert np.all(LABELS[pairs[:, 1]] == LABELS[pairs[:, 0]]) and np.all(pairs[:, 1] != pairs[:, 0])
    assert all(isinstance(i, int) for i in next(iter(sampler)))


def test_seed_reproduces_and_epochs_differ():
    first = list(GroupSampler(LABELS, 4, seed=5))
    assert list(GroupSampler(LABELS, 4, seed=5)) == first
    assert list(GroupSampler(LABELS, 4, seed=6)) != first
    sampler = GroupSampler(LABELS, 4, seed=5)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(g[0] for g in second) == list(range(12))
    sampler.set_epoch(0)
    assert list(sampler) == first


@pytest.mark.parametrize("size,replicas", [(12, 3), (10, 3), (5, 4)])
def test_distributed_shards_cover_and_match_single_process(size, replicas):
    labels = np.arange(size) % 2
    single = GroupSampler(labels, 4, seed=2)
    single.set_epoch(4)
    shards = []
    for rank in range(replicas):
        sampler = GroupSampler(labels, 4, seed=2, num_replicas=replicas, rank=rank)
        sampler.set_epoch(4)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1]) == -(-size // replicas)
    interleaved = [shards[r][i] for i in range(len(shards[0])) for r in range(replicas)]
    assert interleaved[:size] == list(single)  # same groups as one process, dealt round-robin
    anchors = [g[0] for g in interleaved]
    assert sorted(set(anchors)) == list(range(size))
    if size % replicas == 0:
        assert len(anchors) == size  # disjoint
    else:
        assert interleaved[size:] == interleaved[: len(interleaved) - size]  # padding repeats the start


def test_balanced_sampler_is_class_uniform():
    labels = np.repeat([0, 1, 2, 3], [4000, 800, 160, 40])
    sampler = GroupSampler(labels, 4, seed=0, balanced=True)
    assert len(sampler) == 5000 // 8
    anchors = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        anchors.append(sampler.epoch_groups()[:, 0])
    anchors = np.concatenate(anchors)
    frequencies = np.bincount(labels[anchors], minlength=4) / len(anchors)
    assert np.all(np.abs(frequencies - 0.25) < 0.03), frequencies
    assert len(np.unique(anchors[labels[anchors] == 3])) <= 40  # with replacement: 40 images, ~3000 draws
    shard = GroupSampler(labels, 4, balanced=True, num_replicas=2, rank=1)
    assert len(shard) == 313 == len(list(shard))


def test_single_sample_class_and_other_bad_arguments():
    labels = np.array([0, 0, 1, 2, 2])
    with pytest.raises(DataError, match=r"class 1 \(Fear\) has a single sample"):
        GroupSampler(labels, 4, class_names=["Surprise", "Fear", "Disgust"])
    with pytest.raises(DataError, match="at least two classes"):
        GroupSampler(np.zeros(5, dtype=int), 4)
    assert len(GroupSampler(np.zeros(5, dtype=int), 2)) == 5  # DCS needs no negative
    with pytest.raises(ValueError, match="group_size must be 1 .baseline., 2 .DCS. or 4"):
        GroupSampler(LABELS, 3)
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        GroupSampler(LABELS, 4, num_replicas=2, rank=2)


def test_affectnet_sized_groups_are_valid():
    """A whole epoch over an AffectNet-sized list (speed is measured by utils.tools.benchmark)."""
    rng = np.random.default_rng(0)
    labels = rng.choice(8, size=287_651, p=[0.26, 0.47, 0.09, 0.05, 0.02, 0.013, 0.087, 0.01])
    groups = GroupSampler(labels, 4, seed=0).epoch_groups()
    assert groups.shape == (287_651, 4)
    a, p, n, n2 = (labels[groups[:, i]] for i in range(4))
    assert (a == p).all() and (n == n2).all() and (a != n).all()
    assert (groups[:, 0] != groups[:, 1]).all() and (groups[:, 2] != groups[:, 3]).all()


def noise_dataset(tmp_path, labels):
    rng = np.random.default_rng(0)
    (tmp_path / "basic").mkdir()
    lines = []
    for i, label in enumerate(labels):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "basic" / f"{i}.png")
        lines.append(f"{i}.png {label}\n")
    (tmp_path / "raf_db_basic_train.txt").write_text("".join(lines))
    return build_dataset("RAF-DB", "train", tmp_path, transform=train_transform("A", image_size=16))


def test_group_dataset_items_and_independent_augmentation(tmp_path):
    dataset = noise_dataset(tmp_path, [0, 0, 3, 3, 5, 5])
    groups = GroupDataset(dataset)
    assert len(groups) == 6
    images, y, y_n, indices = groups[(1, 1, 2, 2)]
    assert (y, y_n) == (0, 3) and indices.tolist() == [1, 1, 2, 2] and indices.dtype == torch.long
    assert all(image.shape == (3, 16, 16) for image in images)
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[2], images[3])
    images, y, y_n, _ = groups[[4, 5]]
    assert len(images) == 2 and y == y_n == 5


@pytest.mark.parametrize("workers", [0, 2])
def test_data_loader_batches(tmp_path, workers):
    dataset = noise_dataset(tmp_path, [0, 0, 3, 3, 5, 5, 5])
    sampler = GroupSampler(dataset.labels, 4, seed=1)
    loader = torch.utils.data.DataLoader(GroupDataset(dataset), batch_size=4, sampler=sampler, num_workers=workers)
    batches = list(loader)
    images, y, y_n, indices = batches[0]
    assert len(images) == 4 and images[0].shape == (4, 3, 16, 16)
    assert y.shape == y_n.shape == (4,) and indices.shape == (4, 4)
    all_indices = torch.cat([b[3] for b in batches]).tolist()
    assert [tuple(g) for g in all_indices] == list(sampler)  # sampler order survives the workers
    labels = torch.as_tensor(dataset.labels)
    for _, y, y_n, indices in batches:
        assert torch.equal(labels[indices[:, 0]], y) and torch.equal(labels[indices[:, 2]], y_n)


SKEWED = np.repeat([0, 1, 2, 3], [1000, 100, 20, 10])


def negative_classes(negatives, anchor_class, draws=20000, seed=0):
    sampler = GroupSampler(SKEWED, 4, seed=seed, negatives=negatives)
    anchors = np.flatnonzero(SKEWED == anchor_class)
    groups = sampler.sample_groups(np.resize(anchors, draws), np.random.default_rng(seed))
    assert np.all(SKEWED[groups[:, 3]] == SKEWED[groups[:, 2]]) and np.all(groups[:, 3] != groups[:, 2])
    assert np.all(SKEWED[groups[:, 2]] != anchor_class)
    return SKEWED[groups[:, 2]]


def test_negatives_by_class_are_uniform_over_the_other_classes():
    classes = negative_classes("by_class", anchor_class=0)
    assert chi_square(classes, [1, 2, 3]) < loose_bound([1, 2, 3])
    # the rarest class (10 images of 1,130) is drawn about a third of the time, not 1/13 of it
    assert abs(np.mean(classes == 3) - 1 / 3) < 0.02


def test_negatives_by_sample_follow_the_class_sizes():
    classes = negative_classes("by_sample", anchor_class=1)
    others = {0: 1000, 2: 20, 3: 10}
    for c, size in others.items():
        expected = size / sum(others.values())
        sd = np.sqrt(expected * (1 - expected) / len(classes))
        assert abs(np.mean(classes == c) - expected) < 6 * sd, (c, np.mean(classes == c), expected)


def test_released_recipes_choose_the_negative_rule_and_anchor_count():
    from utils.recipes import recipe

    labels = np.repeat(np.arange(8), [5000, 3000, 800, 600, 300, 200, 80, 17])  # 9,997 images
    for arch, dataset, rule, anchors in [("qcs", "AffectNet-8", "by_class", 9997 // 12),
                                         ("qcs", "AffectNet-7", "by_class", 9997 // 12),
                                         ("dcs", "AffectNet-8", "by_sample", 9997 // 8),
                                         ("qcs", "RAF-DB", "by_sample", 9997)]:
        settings = recipe(arch, dataset)
        assert settings["negatives"] == rule
        sampler = GroupSampler(labels, 4 if arch == "qcs" else 2, balanced=settings["balanced_sampler"],
                               anchor_divisor=settings["anchor_divisor"], negatives=settings["negatives"])
        assert len(sampler) == anchors
        batch = settings["batch_size"]
        steps = len(torch.utils.data.DataLoader(range(len(sampler)), batch_size=batch))
        assert steps == -(-anchors // batch)


def test_single_image_groups_for_the_baseline(tmp_path):
    sampler = GroupSampler(LABELS, 1, seed=0, num_replicas=2, rank=0)
    other = GroupSampler(LABELS, 1, seed=0, num_replicas=2, rank=1)
    groups, other_groups = list(sampler), list(other)
    assert all(len(g) == 1 for g in groups)
    assert sorted(i for (i,) in groups + other_groups) == list(range(len(LABELS)))
    dataset = GroupDataset(noise_dataset(tmp_path, LABELS))
    images, y, y_n, indices = dataset[groups[0]]
    assert len(images) == 1 and y == y_n == int(LABELS[groups[0][0]]) and indices.tolist() == [groups[0][0]]
