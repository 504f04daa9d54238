"""Datasets, list files, FER2013, class folders, bad input and transforms (data_preprocessing)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_preprocessing import (
    DATASET_NAMES,
    DataError,
    ImageListDataset,
    build_dataset,
    dataset_classes,
    train_transform,
)
from data_preprocessing import (
    test_transform as make_test_transform,  # renamed: keep pytest from collecting it
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
FER2013_MINI = SHARED / "data" / "fer2013-mini"

# Label orders restated from the datasets' publications (independent of the package's constants).
PUBLISHED_CLASSES = {
    "RAF-DB": ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"],
    "FERPlus": ["Neutral", "Happiness", "Surprise", "Sadness", "Anger", "Disgust", "Fear", "Contempt"],
    "AffectNet-7": ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"],
    "AffectNet-8": ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"],
    "FER2013": ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"],
}

# name -> (image folder, {split: list file})
RELEASED_LAYOUTS = {
    "RAF-DB": ("basic", {"train": "raf_db_basic_train.txt", "test": "raf_db_basic_test.txt"}),
    "FERPlus": ("img", {"train": "ferplus_training.txt", "val": "ferplus_valid.txt", "test": "ferplus_test.txt"}),
    "AffectNet-7": ("Manually_trainval_croped",
                    {"train": "affectnet_training-cls7-v7.txt", "test": "affectnet_validation-cls7.txt"}),
    "AffectNet-8": ("Manually_trainval_croped",
                    {"train": "affectnet_training-cls8-v7.txt", "test": "affectnet_validation-cls8.txt"}),
}


def write_image(path, mode="RGB", value=(10, 20, 30), size=(6, 5)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def make_list_dataset(root, image_dir="basic", list_name="list.txt", lines=None, image_names=("a.png",)):
    """A data root with `image_names` written under root/image_dir and a list file with `lines`."""
    root = Path(root)
    for name in image_names:
        write_image(root / image_dir / name)
    (root / list_name).write_text("".join(f"{line}\n" for line in lines))
    return root


# ---------------------------------------------------------------- released layouts

@pytest.mark.parametrize("name", list(RELEASED_LAYOUTS))
def test_released_layout_parses_every_split(tmp_path, name):
    image_dir, list_files = RELEASED_LAYOUTS[name]
    images = ["img_0.png", "sub dir/img_1.jpg", "deep/er/img_2.png"]
    for image in images:
        write_image(tmp_path / image_dir / image)
    last = len(PUBLISHED_CLASSES[name]) - 1
    # Extra whitespace, tabs, CRLF and blank lines are tolerated; names may hold sub-folders.
    text = f"img_0.png 0\r\n\n   sub dir/img_1.jpg\t {last}  \r\n\n deep/er/img_2.png   2\n\n"
    for list_file in list_files.values():
        (tmp_path / list_file).write_text(text)
    for split in list_files:
        dataset = build_dataset(name, split, tmp_path, transform=make_test_transform(image_size=8))
        assert dataset.image_names == images
        assert dataset.labels.tolist() == [0, last, 2]
        assert dataset.labels.dtype == np.int64
        assert dataset.classes == PUBLISHED_CLASSES[name]
        assert dataset.num_classes == len(PUBLISHED_CLASSES[name])
        assert dataset.samples[1] == (str(tmp_path / image_dir / "sub dir" / "img_1.jpg"), last)
        image, label = dataset[1]
        assert image.shape == (3, 8, 8) and label == last
    assert dataset_classes(name) == PUBLISHED_CLASSES[name]


def test_dataset_names_and_classes():
    assert DATASET_NAMES == ["RAF-DB", "FERPlus", "AffectNet-7", "AffectNet-8", "FER2013", "folder", "demo"]
    assert dataset_classes("FER2013") == PUBLISHED_CLASSES["FER2013"]
    assert dataset_classes("raf_db") == PUBLISHED_CLASSES["RAF-DB"]  # spelling is forgiving
    with pytest.raises(DataError, match="unknown dataset 'CK\\+'"):
        build_dataset("CK+", "train", "x")


def test_image_pixels_come_through_unchanged(tmp_path):
    write_image(tmp_path / "basic" / "a.png", value=(200, 100, 50))
    (tmp_path / "raf_db_basic_train.txt").write_text("a.png 3\n")
    dataset = build_dataset("RAF-DB", "train", tmp_path)
    assert dataset.transform is None
    image, label = dataset[0]
    assert image.mode == "RGB" and image.size == (6, 5) and label == 3
    assert image.getpixel((2, 2)) == (200, 100, 50)


# ---------------------------------------------------------------- bad input

def test_missing_data_root(tmp_path):
    with pytest.raises(DataError, match="data root not found.*nowhere"):
        build_dataset("RAF-DB", "train", tmp_path / "nowhere")


def test_missing_list_file(tmp_path):
    (tmp_path / "basic").mkdir()
    with pytest.raises(DataError, match="list file not found.*raf_db_basic_test.txt"):
        build_dataset("RAF-DB", "test", tmp_path)


def test_missing_image_folder(tmp_path):
    (tmp_path / "ferplus_training.txt").write_text("a.png 0\n")
    with pytest.raises(DataError, match="image folder not found.*img"):
        build_dataset("FERPlus", "train", tmp_path)


def test_unknown_split(tmp_path):
    make_list_dataset(tmp_path, list_name="raf_db_basic_train.txt", lines=["a.png 0"])
    with pytest.raises(DataError, match="no split 'val'"):
        build_dataset("RAF-DB", "val", tmp_path)


def test_missing_image_is_named_with_its_line(tmp_path):
    make_list_dataset(tmp_path, list_name="raf_db_basic_train.txt", lines=["a.png 0", "", "gone.png 1"])
    expected = r"raf_db_basic_train.txt: 1 of 2 listed images are missing.*gone.png \(line 3\)"
    with pytest.raises(DataError, match=expected):
        build_dataset("RAF-DB", "train", tmp_path)
    # Without the eager check, loading names the file and its list.
    dataset = build_dataset("RAF-DB", "train", tmp_path, check_images=False)
    with pytest.raises(DataError, match=r"image missing: .*gone.png \(listed in .*raf_db_basic_train.txt\)"):
        dataset[1]


@pytest.mark.parametrize("bad_line", ["lonely_name.png", "a.png three", "a.png 1.5", "a.png 1 extra"])
def test_malformed_line_names_file_and_line(tmp_path, bad_line):
    make_list_dataset(tmp_path, list_name="raf_db_basic_train.txt", lines=["a.png 0", bad_line])
    with pytest.raises(DataError, match=r"raf_db_basic_train.txt:2: expected '<image name> <label>'"):
        build_dataset("RAF-DB", "train", tmp_path)


@pytest.mark.parametrize("escaping", ["../secret.png", "sub/../../secret.png", "/etc/hostname"])
def test_list_lines_leading_outside_the_image_folder_are_refused(tmp_path, escaping):
    root = tmp_path / "RAF-DB"
    make_list_dataset(root, list_name="raf_db_basic_train.txt", lines=["a.png 0", f"{escaping} 1"])
    write_image(root / "secret.png")  # the file exists: only the name is wrong
    with pytest.raises(DataError, match=r"raf_db_basic_train.txt:2: image name .* points outside the image folder"):
        build_dataset("RAF-DB", "train", root, check_images=False)


def test_label_out_of_range(tmp_path):
    make_list_dataset(tmp_path, list_name="raf_db_basic_train.txt", lines=["a.png 0", "a.png 9", "a.png -1"])
    with pytest.raises(DataError, match=r"raf_db_basic_train.txt:2: label 9 outside 0..6") as caught:
        build_dataset("RAF-DB", "train", tmp_path)
    assert "1-based" not in str(caught.value)


def test_one_based_labels_are_called_out(tmp_path):
    lines = [f"a.png {label}" for label in range(1, 8)]  # RAF-DB's raw 1..7
    make_list_dataset(tmp_path, list_name="raf_db_basic_train.txt", lines=lines)
    with pytest.raises(DataError, match=r"raf_db_basic_train.txt:7: label 7 outside 0..6.*look 1-based"):
        build_dataset("RAF-DB", "train", tmp_path)


def test_empty_list_file(tmp_path):
    make_list_dataset(tmp_path, list_name="raf_db_basic_train.txt", lines=["", "   "])
    with pytest.raises(DataError, match="raf_db_basic_train.txt: no '<image name> <label>' lines"):
        build_dataset("RAF-DB", "train", tmp_path)


def test_unreadable_and_truncated_images_are_named(tmp_path):
    root = make_list_dataset(tmp_path, list_name="raf_db_basic_train.txt",
                             lines=["junk.jpg 0", "cut.jpg 1", "fine.jpg 2"], image_names=())
    (root / "basic").mkdir()
    (root / "basic" / "junk.jpg").write_bytes(b"this is not an image")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "basic" / "fine.jpg")
    whole = (root / "basic" / "fine.jpg").read_bytes()
    (root / "basic" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    dataset = build_dataset("RAF-DB", "train", root)
    with pytest.raises(DataError, match=r"cannot read image .*junk.jpg"):
        dataset.load_image(0)
    with pytest.raises(DataError, match=r"cannot read image .*cut.jpg"):
        dataset[1]
    assert dataset.load_image(2).size == (64, 64)


@pytest.mark.parametrize("mode,value,expected", [
    ("L", 77, (77, 77, 77)),
    ("LA", (90, 128), (90, 90, 90)),
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("RGBA", (10, 20, 30, 0), (10, 20, 30)),  # alpha dropped, colour kept
    ("I;16", 40000, (156, 156, 156)),  # 40000 / 65535 * 255 = 155.6, not clipped to 255
])
def test_other_modes_become_rgb(tmp_path, mode, value, expected):
    path = tmp_path / "basic" / "x.png"
    path.parent.mkdir()
    if mode == "I;16":
        Image.fromarray(np.full((5, 6), value, dtype=np.uint16)).save(path)
    else:
        write_image(path, mode=mode, value=value)
    (tmp_path / "raf_db_basic_train.txt").write_text("x.png 0\n")
    image = build_dataset("RAF-DB", "train", tmp_path).load_image(0)
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == expected


def test_data_folder_is_left_untouched(tmp_path):
    make_list_dataset(tmp_path, list_name="raf_db_basic_train.txt", lines=["a.png 0"])
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    build_dataset("RAF-DB", "train", tmp_path, transform=train_transform("A", image_size=8))[0]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


# ---------------------------------------------------------------- FER2013 and class folders

def fer2013_row(emotion, fill, usage):
    return f'{emotion},"{" ".join([str(fill)] * 48 * 48)}",{usage}\n'


def test_fer2013_csv_splits_and_names(tmp_path):
    text = ("emotion,pixels,Usage\n" + fer2013_row(3, 7, "Training") + fer2013_row(6, 200, "PublicTest")
            + fer2013_row(0, 99, "PrivateTest") + fer2013_row(5, 1, "Training"))
    (tmp_path / "fer2013.csv").write_text(text)
    train = build_dataset("FER2013", "train", tmp_path)
    assert train.labels.tolist() == [3, 5]
    assert train.image_names == ["fer2013_0", "fer2013_3"]
    assert train.classes == PUBLISHED_CLASSES["FER2013"]
    image = train.load_image(0)
    assert image.mode == "RGB" and image.size == (48, 48) and image.getpixel((5, 40)) == (7, 7, 7)
    val = build_dataset("FER2013", "val", tmp_path / "fer2013.csv")  # the csv itself as data root
    assert val.labels.tolist() == [6] and val.image_names == ["fer2013_1"]
    assert val.load_image(0).getpixel((0, 0)) == (200, 200, 200)
    test = build_dataset("FER2013", "test", tmp_path, transform=make_test_transform(image_size=8))
    tensor, label = test[0]
    assert label == 0 and tensor.shape == (3, 8, 8)


def test_fer2013_csv_bad_row(tmp_path):
    short_pixels = '2,"1 2 3",Training\n'
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n" + fer2013_row(1, 5, "Training") + short_pixels)
    with pytest.raises(DataError, match=r"fer2013.csv:3: pixels must be 2304 values"):
        build_dataset("FER2013", "train", tmp_path)
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n" + '0,"1 2 x",Training\n')
    with pytest.raises(DataError, match=r"fer2013.csv:2: pixels are not space-separated integers"):
        build_dataset("FER2013", "train", tmp_path)
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n" + fer2013_row(9, 5, "Training"))
    with pytest.raises(DataError, match=r"fer2013.csv:2: emotion '9' is not a label 0..6"):
        build_dataset("FER2013", "train", tmp_path)
    (tmp_path / "fer2013.csv").write_text("emotion,pixels\n" + fer2013_row(1, 5, "Training"))
    with pytest.raises(DataError, match=r"fer2013.csv:1: header lacks column\(s\) \['Usage'\]"):
        build_dataset("FER2013", "train", tmp_path)


def test_fer2013_pixel_parser_hand_worked():
    from data_preprocessing.datasets import parse_fer2013_pixels

    values = np.arange(48 * 48) % 256
    pixels = parse_fer2013_pixels(" ".join(map(str, values)), "f.csv:7")
    assert pixels.dtype == np.uint8 and pixels.shape == (48, 48)
    assert pixels[0, 1] == 1 and pixels[1, 0] == 48 and pixels[5, 40] == (5 * 48 + 40) % 256  # row-major
    for bad, message in [("1 2 x", "not space-separated integers"), ("1 2 3", "got 3 values"),
                         (" ".join(["256"] * 2304), "values 0..255"),
                         (" ".join(["4294967301"] * 2304), "values 0..255")]:  # 2**32 + 5: no wrap to 5
        with pytest.raises(DataError, match=f"^f.csv:7: .*{message}"):
            parse_fer2013_pixels(bad, "f.csv:7")


def test_fer2013_csv_header_names_are_case_insensitive_and_blank_rows_skipped(tmp_path):
    text = "Emotion,Pixels,usage\n" + fer2013_row(4, 3, "Training") + ",,\n" + fer2013_row(2, 9, "Training")
    (tmp_path / "fer2013.csv").write_text(text)
    train = build_dataset("FER2013", "train", tmp_path)
    assert train.labels.tolist() == [4, 2] and train.image_names == ["fer2013_0", "fer2013_1"]


@pytest.mark.parametrize("name", ["FER2013", "folder"])
def test_check_images_off_is_refused_where_images_are_never_listed(tmp_path, name):
    for folder in PUBLISHED_CLASSES["FER2013"]:
        write_image(tmp_path / "train" / folder / "0.png")
    assert len(build_dataset(name, "train", tmp_path)) == 7
    with pytest.raises(ValueError, match="check_images=False applies to list-file datasets only"):
        build_dataset(name, "train", tmp_path, check_images=False)


def test_fer2013_class_folders_map_to_fer2013_order(tmp_path):
    # Case-insensitive folder names, FER2013 label order regardless of alphabetical order.
    for folder, count in [("ANGRY", 1), ("Disgust", 1), ("fear", 1), ("happy", 2), ("sad", 1),
                          ("surprise", 1), ("Neutral", 3)]:
        for i in range(count):
            write_image(tmp_path / "train" / folder / f"{i}.png", mode="L", value=i)
    dataset = build_dataset("FER2013", "train", tmp_path)
    assert dataset.class_counts().tolist() == [1, 1, 1, 2, 1, 1, 3]
    assert dataset.image_names[dataset.labels.tolist().index(6)] == "Neutral/0.png"
    (tmp_path / "test" / "Contempt").mkdir(parents=True)
    with pytest.raises(DataError, match="unknown FER2013 class folder 'Contempt'"):
        build_dataset("FER2013", "test", tmp_path)


def test_fer2013_mini_class_folders():
    if not FER2013_MINI.is_dir():
        pytest.skip(f"{FER2013_MINI} not present")
    train = build_dataset("FER2013", "train", FER2013_MINI)
    test = build_dataset("FER2013", "test", FER2013_MINI, transform=make_test_transform(image_size=16))
    assert len(train) == 2800 and train.class_counts().tolist() == [400] * 7
    assert len(test) == 655
    assert test.class_counts()[1] == 55  # disgust is label 1 in FER2013 order
    for name, label in zip(test.image_names, test.labels.tolist()):
        assert PUBLISHED_CLASSES["FER2013"][label].lower() == name.split("/")[0]
    image, _ = test[0]
    assert image.shape == (3, 16, 16)
    assert train.load_image(0).mode == "RGB"  # the files are grayscale JPEGs


def test_folder_dataset(tmp_path):
    for split, folder, name in [("train", "zeta", "z.png"), ("train", "alpha", "x/a.png"),
                                ("test", "alpha", "b.png")]:
        write_image(tmp_path / split / folder / name)
    (tmp_path / "train" / "alpha" / "notes.txt").write_text("not an image")
    assert dataset_classes("folder", tmp_path) == ["alpha", "zeta"]
    train = build_dataset("folder", "train", tmp_path)
    assert train.image_names == ["alpha/x/a.png", "zeta/z.png"] and train.labels.tolist() == [0, 1]
    reordered = build_dataset("folder", "train", tmp_path, classes=["zeta", "alpha"])
    assert dict(zip(reordered.image_names, reordered.labels.tolist())) == {"alpha/x/a.png": 1, "zeta/z.png": 0}
    test = build_dataset("folder", "test", tmp_path)
    assert test.image_names == ["alpha/b.png"] and test.classes == ["alpha", "zeta"]
    with pytest.raises(DataError, match="unknown class folder.*zeta"):
        build_dataset("folder", "train", tmp_path, classes=["alpha"])


def test_empty_class_folder(tmp_path):
    write_image(tmp_path / "train" / "happy" / "a.png")
    (tmp_path / "train" / "sad").mkdir()
    (tmp_path / "train" / "sad" / ".DS_Store").write_text("")
    with pytest.raises(DataError, match=r"empty class folder.*train.sad"):
        build_dataset("folder", "train", tmp_path)


def test_demo_dataset_reads_a_generated_folder_of_any_parameters(tmp_path):
    from data_preprocessing.demo import DEMO_CLASSES, ensure_demo_dataset

    ensure_demo_dataset(tmp_path / "demo", train_per_class=2, test_per_class=1, image_size=32)
    train = build_dataset("demo", "train", tmp_path / "demo")
    test = build_dataset("demo", "test", tmp_path / "demo")
    assert sorted(train.labels.tolist()) == sorted(list(range(7)) * 2)
    assert len(test) == 7 and train.classes == DEMO_CLASSES == dataset_classes("demo")
    assert train.load_image(0).size == (32, 32)


def test_image_list_dataset_rejects_bad_labels():
    with pytest.raises(DataError, match="label 3 outside 0..2"):
        ImageListDataset(["a.png"], [3], ["x", "y", "z"])


# ---------------------------------------------------------------- transforms

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def test_test_transform_normalises_with_imagenet_statistics():
    image = Image.new("RGB", (30, 20), (51, 102, 204))
    tensor = make_test_transform(image_size=12)(image)
    expected = (np.array([51, 102, 204]) / 255 - MEAN) / STD
    assert tensor.shape == (3, 12, 12)
    assert np.allclose(tensor.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    cropped = make_test_transform(resize=16, image_size=12)(Image.new("RGB", (40, 20), (0, 0, 0)))
    assert cropped.shape == (3, 12, 12)


def test_train_transforms_shapes_and_randomness():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    a = train_transform("A", image_size=16)
    b = train_transform("B", resize=20, rotation=10, erase_scale=(0.03, 0.1), image_size=16)
    assert a(image).shape == (3, 16, 16) and b(image).shape == (3, 16, 16)
    assert not torch.equal(a(image), a(image))
    names = [type(t).__name__ for t in b.transforms]
    assert names == ["Resize", "RandomHorizontalFlip", "RandomRotation", "RandomCrop", "ColorJitter",
                     "ToTensor", "Normalize", "RandomErasing"]
    assert b.transforms[-1].scale == (0.03, 0.1)
    no_jitter = train_transform("A", color_jitter=False)
    assert "ColorJitter" not in [type(t).__name__ for t in no_jitter.transforms]
    with pytest.raises(ValueError, match="kind must be 'A' or 'B'"):
        train_transform("C")
    with pytest.raises(ValueError, match="resize \\(200\\) must be >= the crop size \\(224\\)"):
        train_transform("B", resize=200)


def test_transform_options_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="A takes no resize or rotation"):
        train_transform("A", resize=256, rotation=10)
    with pytest.raises(ValueError, match="A takes no rotation"):
        train_transform("A", rotation=0)
    with pytest.raises(ValueError, match="B needs resize"):
        train_transform("B", rotation=10)
    with pytest.raises(TypeError):  # `size` is the model preset; the pixel side is image_size
        make_test_transform(size=8)
    with pytest.raises(TypeError):
        train_transform("A", size=8)


def test_describe_transform_hand_written():
    from data_preprocessing import describe_transform

    assert describe_transform(make_test_transform(resize=234, image_size=224)) == (
        "Resize((234, 234)) → CenterCrop(224) → ToTensor → Normalize")
    assert describe_transform(make_test_transform(image_size=56)) == "Resize((56, 56)) → ToTensor → Normalize"
    assert describe_transform(train_transform("B", resize=20, rotation=10, image_size=16)) == (
        "Resize((20, 20)) → RandomHorizontalFlip → RandomRotation → RandomCrop(16) → ColorJitter → ToTensor"
        " → Normalize → RandomErasing")


@pytest.mark.parametrize("path, expected", [
    ("a.JPG", True), ("./faces/a.png", True), ("../x/b.webp", True), (Path("x") / "y.tiff", True),
    (".hidden.png", False), ("faces/.hidden.jpg", False), ("notes.txt", False), ("png", False),
])
def test_is_image_file_takes_names_and_paths(path, expected):
    from data_preprocessing import is_image_file

    assert is_image_file(path) is expected


@pytest.mark.parametrize("box, expected", [
    ((5, 4, 10, 8), (5, 4, 15, 12)),      # inside: (x, y, x + w, y + h)
    ((-3, -2, 10, 10), (0, 0, 7, 8)),     # clipped at the top-left corner
    ((30, 20, 20, 20), (30, 20, 40, 30)),  # clipped at the bottom-right corner of 40x30
    ((100, 0, 10, 10), None),             # right of the image
    ((0, -10, 5, 10), None),              # ends exactly at the top edge: nothing left
])
def test_clamp_box_hand_worked(box, expected):
    from data_preprocessing import clamp_box

    assert clamp_box(box, 40, 30) == expected


def test_test_transform_b_is_a_square_resize_then_a_centre_crop():
    # 40×20 image, black left quarter: squashed to 16×16 the edge sits at column 4, so the centred
    # 12×12 crop (columns 2..13) starts with dark columns; an aspect-keeping resize (32×16) would
    # put the edge at column 8, outside the crop (columns 10..21), and the crop would be all white.
    pixels = np.full((20, 40, 3), 255, dtype=np.uint8)
    pixels[:, :10] = 0
    image = Image.fromarray(pixels)
    expected = image.resize((16, 16), Image.BILINEAR).crop((2, 2, 14, 14))
    expected = (np.asarray(expected, dtype=np.float64) / 255 - MEAN) / STD
    got = make_test_transform(resize=16, image_size=12)(image).permute(1, 2, 0).numpy()
    assert np.allclose(got, expected, atol=1e-5)
    white = (1.0 - MEAN) / STD
    assert got[:, 0].mean() < 0 < white[0] and np.allclose(got[:, -1], white, atol=1e-5)
