"""Facial-expression data: datasets by name, QCS/DCS training groups, and the released transforms."""
from .build import build_dataset
from .datasets import (
    AFFECTNET7_CLASSES,
    AFFECTNET8_CLASSES,
    DATASET_NAMES,
    FER2013_CLASSES,
    FERPLUS_CLASSES,
    RAF_DB_CLASSES,
    ArrayImageDataset,
    DataError,
    ImageListDataset,
    dataset_classes,
    default_data_root,
    extra_test_splits,
    parse_list_file,
)
from .images import IMAGE_EXTENSIONS, clamp_box, is_image_file
from .sampling import GroupDataset, GroupSampler
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_SIDE,
    describe_transform,
    test_transform,
    test_transform_for,
    train_transform,
)
from .views import DatasetView, canonical_class_name, match_classes, stratified_holdout

__all__ = [
    "DATASET_NAMES", "dataset_classes", "extra_test_splits", "build_dataset", "ImageListDataset",
    "GroupDataset", "GroupSampler",
    "train_transform", "test_transform", "test_transform_for", "describe_transform", "DataError",
    # extras
    "ArrayImageDataset", "default_data_root", "parse_list_file", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_IMAGE_SIDE",
    "IMAGE_EXTENSIONS", "is_image_file", "clamp_box",
    "DatasetView", "stratified_holdout", "canonical_class_name", "match_classes",
    "RAF_DB_CLASSES", "FERPLUS_CLASSES", "AFFECTNET7_CLASSES", "AFFECTNET8_CLASSES", "FER2013_CLASSES",
]
