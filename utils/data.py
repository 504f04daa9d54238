"""The data of a run: the training groups, and the splits evaluated (every epoch, or by `--evaluate`)."""
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Subset

from data_preprocessing import (
    DataError,
    DatasetView,
    GroupDataset,
    GroupSampler,
    build_dataset,
    extra_test_splits,
    stratified_holdout,
)
from data_preprocessing.device_augment import DeviceAugment, split_train_transform
from data_preprocessing.limits import TRAINING_ADDRESS_SPACE, LimitError, check_address_space, check_open_files
from models.architectures import architecture

from .config import UsageError, transforms_for
from .runtime import leave_signals_to_main
from .settings import RunSettings


@dataclass
class RunData:
    """A training run's data: the training set, its group sampler and loader, and the loaders of the
    splits evaluated each epoch."""
    train_set: object
    sampler: GroupSampler
    train_loader: DataLoader
    loader_args: dict  # the train loader's settings, for the loader of a resumed epoch
    test_loader: DataLoader
    device_augment: DeviceAugment | None = None  # --device-augment: the photometric steps on the device
    val_loader: DataLoader | None = None  # --select-on val
    extra_loaders: dict = field(default_factory=dict)  # the dataset's extra test splits, by name


def check_limit(check, *args):
    """A resource limit's check (`data_preprocessing.limits`), its failure a UsageError."""
    try:
        check(*args)
    except LimitError as error:
        raise UsageError(str(error)) from None


def load_training_data(settings, device, rank, world_size):
    """The training set, its group sampler and loader, and the loaders evaluated each epoch: test,
    the dataset's extra test splits and, with `--select-on val`, the validation split. With
    `--device-augment`, the training images come as uint8 and `device_augment` does the rest.
    `settings`: RunSettings, or their dict."""
    settings = RunSettings.of(settings)
    check_limit(check_address_space, TRAINING_ADDRESS_SPACE, "a training run")
    train_tf, test_tf = transforms_for(settings)
    device_augment = None
    if settings.device_augment:
        train_tf, photometric = split_train_transform(train_tf)
        device_augment = DeviceAugment(photometric, settings.seed, rank)
    train_set, val_set = training_splits(settings, train_tf, test_tf)
    if train_set.num_classes < 2:
        raise DataError(f"{settings.dataset} at {settings.data_root or 'its default folder'}: "
                        f"{train_set.num_classes} class; training a classifier needs at least 2")
    roles = architecture(settings.arch).roles
    sampler = GroupSampler(train_set.labels, roles, seed=settings.seed,
                           balanced=settings.balanced_sampler, anchor_divisor=settings.anchor_divisor,
                           negatives=settings.negatives, num_replicas=world_size, rank=rank,
                           class_names=train_set.classes)
    # The loaders draw their worker seeds from their own generator, not the global one: a
    # mid-epoch resume then continues the augmentation stream exactly.
    loader_args = dict(num_workers=settings.workers, pin_memory=device.type == "cuda",
                       persistent_workers=settings.workers > 0, worker_init_fn=leave_signals_to_main,
                       generator=torch.Generator().manual_seed(settings.seed + rank))
    train_loader = DataLoader(GroupDataset(train_set, roles), batch_size=settings.batch_size, sampler=sampler,
                              **loader_args)

    def loader_of(dataset):
        return test_loader(dataset, settings, device, rank, world_size)

    return RunData(
        train_set=train_set, sampler=sampler, train_loader=train_loader, loader_args=loader_args,
        device_augment=device_augment,
        test_loader=loader_of(load_split(settings, "test", test_tf)),
        val_loader=loader_of(val_set) if val_set is not None else None,
        extra_loaders={split: loader_of(load_split(settings, split, test_tf))
                       for split in extra_test_splits(settings.dataset)})


def training_splits(settings, train_tf, test_tf):
    """`(train set, validation set or None)`: with `--val-fraction`, a stratified seeded part of
    train is held out (seen with the test transform); else the dataset's own `val` split."""
    if settings.select_on != "val":
        return load_split(settings, "train", train_tf), None
    if settings.val_fraction is None:
        try:
            return load_split(settings, "train", train_tf), load_split(settings, "val", test_tf)
        except (DataError, ValueError) as error:
            raise UsageError(f"--select-on val: {settings.dataset} has no validation split here ({error}); "
                             "give --val-fraction F to hold out part of train") from None
    train, same_images = load_split(settings, "train", train_tf), load_split(settings, "train", test_tf)
    kept, held = stratified_holdout(train.labels, settings.val_fraction, settings.seed)
    return DatasetView(train, kept), DatasetView(same_images, held)


def epoch_loader(data, first_step):
    """The epoch's group loader; after a mid-epoch resume, one of its own over the groups the
    sampler still holds (those not yet trained)."""
    if not first_step:
        return data.train_loader
    return DataLoader(GroupDataset(data.train_set), batch_size=data.train_loader.batch_size, sampler=data.sampler,
                      **{**data.loader_args, "persistent_workers": False})


class IndexedDataset(torch.utils.data.Dataset):
    """`(image, label, index)` items, so evaluation can name its images and gather across ranks."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return image, label, index


def load_split(settings, split, transform):
    """Split `split` of the configured dataset, with `transform`."""
    classes = settings.classes.split(",") if settings.classes else None
    return build_dataset(settings.dataset, split, data_root=settings.data_root, transform=transform,
                         classes=classes)


def test_loader(dataset, settings, device, rank, world_size):
    """An in-order loader of this rank's share of `dataset`, as `(image, label, index)` batches."""
    check_limit(check_open_files, settings.workers)  # the open files of its DataLoader workers
    indexed = IndexedDataset(dataset)
    shard = Subset(indexed, range(rank, len(indexed), world_size)) if world_size > 1 else indexed
    return DataLoader(shard, batch_size=settings.batch_size * 2, shuffle=False,
                      num_workers=settings.workers, pin_memory=device.type == "cuda",
                      persistent_workers=False, worker_init_fn=leave_signals_to_main,
                      generator=torch.Generator().manual_seed(rank))
