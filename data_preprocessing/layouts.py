"""The datasets' on-disk layouts and class orders: data only, imported by the readers (`datasets`),
the demo generator (`demo`) and the prepare scripts, so none of them needs another for these."""
from dataclasses import dataclass

__all__ = [
    "RAF_DB_CLASSES", "FERPLUS_CLASSES", "AFFECTNET7_CLASSES", "AFFECTNET8_CLASSES", "FER2013_CLASSES",
    "ListLayout", "LIST_LAYOUTS", "DEMO_LAYOUT", "DEMO_META_NAME",
]

RAF_DB_CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
FERPLUS_CLASSES = ["Neutral", "Happiness", "Surprise", "Sadness", "Anger", "Disgust", "Fear", "Contempt"]
AFFECTNET7_CLASSES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"]
AFFECTNET8_CLASSES = AFFECTNET7_CLASSES + ["Contempt"]
FER2013_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]


@dataclass(frozen=True)
class ListLayout:
    """A released layout: an image folder plus one `<image name> <label>` list file per split."""

    name: str
    default_root: str
    image_dir: str
    list_files: dict  # split -> list file name, relative to the data root
    classes: tuple


LIST_LAYOUTS = {
    "RAF-DB": ListLayout("RAF-DB", "./datas/RAF-DB", "basic",
                         {"train": "raf_db_basic_train.txt", "test": "raf_db_basic_test.txt"},
                         tuple(RAF_DB_CLASSES)),
    "FERPlus": ListLayout("FERPlus", "./datas/FERPlus", "img",
                          {"train": "ferplus_training.txt", "val": "ferplus_valid.txt",
                           "test": "ferplus_test.txt"},
                          tuple(FERPLUS_CLASSES)),
    "AffectNet-7": ListLayout("AffectNet-7", "./datas/AffectNet", "Manually_trainval_croped",
                              {"train": "affectnet_training-cls7-v7.txt", "test": "affectnet_validation-cls7.txt"},
                              tuple(AFFECTNET7_CLASSES)),
    "AffectNet-8": ListLayout("AffectNet-8", "./datas/AffectNet", "Manually_trainval_croped",
                              {"train": "affectnet_training-cls8-v7.txt", "test": "affectnet_validation-cls8.txt"},
                              tuple(AFFECTNET8_CLASSES)),
}

# The generated demo set (data_preprocessing/demo.py writes it in this layout); test_flipped holds
# the test faces with the label-tied nuisance set against the label.
DEMO_LAYOUT = ListLayout("demo", "./datas/demo", "images",
                         {"train": "demo_train.txt", "test": "demo_test.txt",
                          "test_flipped": "demo_test_flipped.txt"}, tuple(RAF_DB_CLASSES))
DEMO_META_NAME = "demo_meta.json"
