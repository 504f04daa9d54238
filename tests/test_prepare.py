"""The prepare_* scripts on tiny raw files whose expected lists are worked out by hand."""

import csv
import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_preprocessing import build_dataset, prepare_affectnet, prepare_ferplus, prepare_rafdb
from data_preprocessing._prepare_common import PrepareError
from data_preprocessing.datasets import DataError
from data_preprocessing.outputs import OutputError
from helpers import fill, tmpfs


def read_lines(path):
    return path.read_text().splitlines()


# ----------------------------------------------------------------------------- RAF-DB

RAF_LIST = "train_00001.jpg 5\ntrain_00002.jpg 1\ntest_0001.jpg 7\ntest_0002.jpg 4\n\ntrain_00003.jpg 2\n"


def test_rafdb_lists_are_zero_based_with_aligned_names(tmp_path, capsys):
    raw = tmp_path / "list_patition_label.txt"
    raw.write_text(RAF_LIST)
    out = tmp_path / "out"
    assert prepare_rafdb.main(["--list", str(raw), "--out", str(out)]) == 0
    assert read_lines(out / "raf_db_basic_train.txt") == [
        "train_00001_aligned.jpg 4", "train_00002_aligned.jpg 0", "train_00003_aligned.jpg 1"]
    assert read_lines(out / "raf_db_basic_test.txt") == ["test_0001_aligned.jpg 6", "test_0002_aligned.jpg 3"]
    printed = capsys.readouterr().out
    assert "RAF-DB train: 3 images" in printed and "RAF-DB test: 2 images" in printed
    assert raw.read_text() == RAF_LIST  # input untouched


@pytest.mark.parametrize("bad_line, message", [
    ("train_00009.jpg 8", "outside 1..7"),
    ("train_00009.jpg 0", "outside 1..7"),
    ("train_00009.jpg x", "must be an integer"),
    ("val_00009.jpg 3", "'train_' or 'test_'"),
    ("train_00009.jpg 3 extra", "expected '<image name> <label>'"),
    ("train_00001.jpg 3", "already listed on line 1"),
])
def test_rafdb_bad_line_names_file_and_line(tmp_path, bad_line, message):
    raw = tmp_path / "labels.txt"
    raw.write_text(f"train_00001.jpg 5\n{bad_line}\n")
    with pytest.raises(PrepareError) as error:
        prepare_rafdb.prepare(["--list", str(raw), "--out", str(tmp_path / "out")])
    assert "labels.txt:2: " in str(error.value) and message in str(error.value)
    assert not (tmp_path / "out").exists()  # the folders a failed run made are gone again


def aligned_images(folder, *names):
    """`folder` holding a small RAF-DB aligned image `<name>_aligned.jpg` for each name."""
    folder.mkdir()
    for name in names:
        Image.new("RGB", (4, 4)).save(folder / f"{name}_aligned.jpg")
    return folder


def test_rafdb_refuses_overwrite_and_checks_images(tmp_path):
    raw = tmp_path / "list.txt"
    raw.write_text(RAF_LIST)
    images = aligned_images(tmp_path / "aligned", "train_00001", "train_00002", "train_00003", "test_0001")
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="1 aligned image.*test_0002_aligned.jpg"):
        prepare_rafdb.prepare(["--list", str(raw), "--images", str(images), "--out", str(out)])
    Image.new("RGB", (4, 4)).save(images / "test_0002_aligned.jpg")
    prepare_rafdb.prepare(["--list", str(raw), "--images", str(images), "--out", str(out)])

    (out / "raf_db_basic_test.txt").write_text("mine\n")
    assert prepare_rafdb.main(["--list", str(raw), "--out", str(out)]) == 2
    assert (out / "raf_db_basic_test.txt").read_text() == "mine\n"
    assert prepare_rafdb.main(["--list", str(raw), "--out", str(out), "--overwrite"]) == 0
    assert read_lines(out / "raf_db_basic_test.txt")[0] == "test_0001_aligned.jpg 6"


# ----------------------------------------------------------------------------- FERPlus

# votes: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", [0, 8, 0, 0, 1, 0, 0, 0, 1, 0]),    # ones dropped -> 8/8 happiness: 1
    ("Training", "fer0000001.png", [5, 4, 0, 0, 0, 0, 0, 0, 1, 0]),    # 5/10 no majority, after outlier removal 5/9: 0
    ("Training", "fer0000002.png", [0, 0, 4, 4, 0, 0, 0, 0, 2, 0]),    # 4/10 no majority: dropped
    ("Training", "fer0000003.png", [0, 0, 0, 0, 2, 0, 0, 0, 6, 0]),    # unknown 6/8: dropped
    ("Training", "fer0000004.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),   # NF: dropped
    ("Training", "fer0000005.png", [2, 0, 0, 0, 0, 0, 0, 7, 1, 0]),    # contempt 7/9: 7
    ("Training", "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),                 # no FERPlus image: skipped
    ("PublicTest", "fer0000007.png", [0, 0, 0, 0, 0, 0, 9, 0, 1, 0]),  # fear 9/9: 6
    ("PrivateTest", "fer0000008.png", [0, 0, 0, 0, 0, 6, 0, 0, 0, 0]),  # disgust: 5
    ("PrivateTest", "fer0000009.png", [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),  # everything an outlier: dropped
    ("PrivateTest", "fer0000010.png", [0, 0, 0, 6, 3, 0, 0, 0, 0, 0]),  # sadness 6/9: 3
    ("PrivateTest", "fer0000011.png", [4, 0, 0, 0, 0, 4, 0, 0, 1, 0]),  # 4/8 is not more than half: dropped
    ("PrivateTest", "fer0000012.png", [0, 0, 0, 0, 7, 0, 0, 0, 0, 1]),  # anger: 4
]
FERPLUS_EXPECTED = {
    "ferplus_training.txt": ["fer0000000.png 1", "fer0000001.png 0", "fer0000005.png 7"],
    "ferplus_valid.txt": ["fer0000007.png 6"],  # the registry's split "val"
    "ferplus_test.txt": ["fer0000008.png 5", "fer0000010.png 3", "fer0000012.png 4"],
}


def face_pixels(row_index):
    return ((np.arange(48 * 48) * (row_index + 1)) % 256).astype(np.uint8)


def write_ferplus_inputs(folder, rows=FERPLUS_ROWS, fer_usages=None):
    fer_path, plus_path = folder / "fer2013.csv", folder / "fer2013new.csv"
    with open(fer_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for index, (usage, _, _) in enumerate(rows):
            usage = fer_usages[index] if fer_usages else usage
            writer.writerow([index % 7, " ".join(map(str, face_pixels(index))), usage])
    with open(plus_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger",
                         "disgust", "fear", "contempt", "unknown", "NF"])
        for usage, name, votes in rows:
            writer.writerow([usage, name, *votes])
    return fer_path, plus_path


@pytest.mark.parametrize("votes, expected", [
    ([0, 8, 0, 0, 1, 0, 0, 0, 1, 0], 1),
    ([5, 4, 0, 0, 0, 0, 0, 0, 1, 0], 0),
    ([0, 0, 4, 4, 0, 0, 0, 0, 2, 0], None),
    ([0, 0, 0, 0, 2, 0, 0, 0, 6, 0], None),
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], None),
    ([2, 0, 0, 0, 0, 0, 0, 7, 1, 0], 7),
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], None),
    ([0, 3, 0, 0, 0, 0, 0, 0, 0, 2], 1),    # 3/5 > 2.5
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None),
])
def test_majority_vote_hand_worked(votes, expected):
    assert prepare_ferplus.majority_vote(votes) == expected


def test_ferplus_lists_and_images(tmp_path, capsys):
    fer_path, plus_path = write_ferplus_inputs(tmp_path)
    fer_before, plus_before = fer_path.read_bytes(), plus_path.read_bytes()
    out = tmp_path / "FERPlus"
    assert prepare_ferplus.main(["--fer2013", str(fer_path), "--ferplus", str(plus_path), "--out", str(out)]) == 0
    for list_name, expected in FERPLUS_EXPECTED.items():
        assert read_lines(out / list_name) == expected, list_name
    # every row with a name gets its image (also the dropped ones); the nameless row none
    named = sorted(name for _, name, _ in FERPLUS_ROWS if name)
    assert sorted(p.name for p in (out / "img").iterdir()) == named
    image = Image.open(out / "img" / "fer0000005.png")
    assert image.mode == "L" and image.size == (48, 48)
    assert np.array_equal(np.asarray(image).ravel(), face_pixels(5))
    printed = capsys.readouterr().out
    assert ("FERPlus train: 3 images" in printed and "FERPlus val: 1 images" in printed
            and "FERPlus test: 3 images" in printed)
    assert "7 Contempt: 1" in printed
    assert fer_path.read_bytes() == fer_before and plus_path.read_bytes() == plus_before


def test_ferplus_refuses_overwrite(tmp_path):
    fer_path, plus_path = write_ferplus_inputs(tmp_path)
    out = tmp_path / "out"
    args = ["--fer2013", str(fer_path), "--ferplus", str(plus_path), "--out", str(out)]
    prepare_ferplus.prepare(args)
    with pytest.raises(OutputError, match="refusing to overwrite.*--overwrite"):
        prepare_ferplus.prepare(args)
    prepare_ferplus.prepare(args + ["--overwrite"])


def test_ferplus_row_count_mismatch(tmp_path):
    fer_path, _ = write_ferplus_inputs(tmp_path)
    short = tmp_path / "short"
    short.mkdir()
    _, plus_path = write_ferplus_inputs(short, FERPLUS_ROWS[:-1])
    with pytest.raises(PrepareError, match="13 data rows.*has 12"):
        prepare_ferplus.prepare(["--fer2013", str(fer_path), "--ferplus", str(plus_path),
                                 "--out", str(tmp_path / "out")])


def test_ferplus_usage_mismatch_names_lines(tmp_path):
    usages = [row[0] for row in FERPLUS_ROWS]
    usages[7] = "Training"
    fer_path, plus_path = write_ferplus_inputs(tmp_path, fer_usages=usages)
    with pytest.raises(PrepareError, match="fer2013new.csv:9 .*fer2013.csv:9"):
        prepare_ferplus.prepare(["--fer2013", str(fer_path), "--ferplus", str(plus_path),
                                 "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("row, message", [
    (("Training", "fer0000099.png", [0, "x", 0, 0, 0, 0, 0, 0, 0, 0]), "fer2013new.csv:3: vote count 'happiness'"),
    (("Training", "fer0000099.png", [0, "inf", 0, 0, 0, 0, 0, 0, 0, 0]), "fer2013new.csv:3: vote count 'happiness'"),
    (("Training", "fer0000099.png", [0, -2, 0, 0, 0, 0, 0, 0, 0, 0]), "fer2013new.csv:3: vote counts must be >= 0"),
    (("Validation", "fer0000099.png", [0] * 10), "fer2013new.csv:3: Usage 'Validation'"),
    (("Training", "fer0000000.png", [0] * 10), "fer2013new.csv:3: image name 'fer0000000.png' already used"),
    (("Training", "../x.png", [0] * 10), "fer2013new.csv:3: image name '../x.png' must be a plain"),
])
def test_ferplus_bad_row_names_file_and_line(tmp_path, row, message):
    fer_path, plus_path = write_ferplus_inputs(tmp_path, [FERPLUS_ROWS[0], row])
    with pytest.raises(DataError) as error:  # the Usage row is bad in both files: both are reported
        prepare_ferplus.prepare(["--fer2013", str(fer_path), "--ferplus", str(plus_path),
                                 "--out", str(tmp_path / "out")])
    assert message in str(error.value)


def test_ferplus_bad_pixels_names_line(tmp_path):
    fer_path, plus_path = write_ferplus_inputs(tmp_path, FERPLUS_ROWS[:2])
    lines = fer_path.read_text().splitlines()
    lines[2] = '1,"1 2 3",Training'
    fer_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="fer2013.csv:3: pixels must be 2304 values 0..255 .*got 3 values"):
        prepare_ferplus.prepare(["--fer2013", str(fer_path), "--ferplus", str(plus_path),
                                 "--out", str(tmp_path / "out")])


# ----------------------------------------------------------------------------- AffectNet

AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
                    "expression,valence,arousal")
LANDMARKS = '"1.5;2.5;3.5;4.5"'
# name, box (x, y, w, h), expression
AFFECTNET_TRAIN = [
    ("1/a.png", (5, 4, 10, 8), 0),
    ("1/b.png", (-3, -2, 10, 10), 7),     # contempt; box clipped at the top-left corner
    ("2/c.png", (30, 20, 20, 20), 6),     # box clipped at the bottom-right corner
    ("2/d.png", (0, 0, 10, 10), 8),       # None: dropped
    ("2/e.png", (0, 0, 10, 10), 10),      # Non-Face: dropped
    ("2/f.png", (1, 1, 38, 28), 3),
]
AFFECTNET_VAL = [
    ("3/g.png", (2, 3, 20, 20), 1),
    ("3/h.png", (0, 0, 40, 30), 7),
    ("3/i.png", (0, 0, 10, 10), 9),       # Uncertain: dropped
]
AFFECTNET_EXPECTED = {
    "affectnet_training-cls7-v7.txt": ["1/a.png 0", "2/c.png 6", "2/f.png 3"],
    "affectnet_training-cls8-v7.txt": ["1/a.png 0", "1/b.png 7", "2/c.png 6", "2/f.png 3"],
    "affectnet_validation-cls7.txt": ["3/g.png 1"],
    "affectnet_validation-cls8.txt": ["3/g.png 1", "3/h.png 7"],
}


def affectnet_pixels(index):
    return np.random.default_rng(index).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)


def write_affectnet_inputs(folder, train=AFFECTNET_TRAIN, val=AFFECTNET_VAL):
    images = folder / "Manually_Annotated_Images"
    for index, (name, _, _) in enumerate(train + val):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(affectnet_pixels(index)).save(images / name)

    def csv_lines(rows):
        return [f"{name},{x},{y},{w},{h},{LANDMARKS},{expression},0.1,-0.2" for name, (x, y, w, h), expression in rows]

    train_csv, val_csv = folder / "training.csv", folder / "validation.csv"
    train_csv.write_text("\n".join([AFFECTNET_HEADER] + csv_lines(train)) + "\n")
    val_csv.write_text("\n".join(csv_lines(val)) + "\n")  # the validation file comes without header
    return train_csv, val_csv, images


def affectnet_args(train_csv, val_csv, images, out, *extra):
    return ["--train-csv", str(train_csv), "--val-csv", str(val_csv), "--images", str(images),
            "--out", str(out), *extra]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_affectnet_lists_and_crops(tmp_path, capsys, workers):
    train_csv, val_csv, images = write_affectnet_inputs(tmp_path)
    source_bytes = {p: p.read_bytes() for p in images.rglob("*.png")}
    out = tmp_path / "AffectNet"
    assert prepare_affectnet.main(affectnet_args(train_csv, val_csv, images, out, "--crop", "--workers", workers)) == 0
    for list_name, expected in AFFECTNET_EXPECTED.items():
        assert read_lines(out / list_name) == expected, list_name
    crops = out / "Manually_trainval_croped"
    expected_crops = {  # numpy slices [top:bottom, left:right] worked out from the boxes
        "1/a.png": affectnet_pixels(0)[4:12, 5:15],
        "1/b.png": affectnet_pixels(1)[0:8, 0:7],
        "2/c.png": affectnet_pixels(2)[20:30, 30:40],
        "2/f.png": affectnet_pixels(5)[1:29, 1:39],
        "3/g.png": affectnet_pixels(6)[3:23, 2:22],
        "3/h.png": affectnet_pixels(7),
    }
    assert sorted(p.relative_to(crops).as_posix() for p in crops.rglob("*.png")) == sorted(expected_crops)
    for name, pixels in expected_crops.items():
        assert np.array_equal(np.asarray(Image.open(crops / name)), pixels), name
    printed = capsys.readouterr().out
    assert "AffectNet-8 train: 4 images" in printed and "7 Contempt: 1" in printed
    assert "AffectNet-7 test: 1 images" in printed
    assert {p: p.read_bytes() for p in images.rglob("*.png")} == source_bytes


def test_affectnet_without_crop_keeps_relative_paths(tmp_path):
    train_csv, val_csv, images = write_affectnet_inputs(tmp_path)
    out = tmp_path / "lists"
    prepare_affectnet.prepare(["--train-csv", str(train_csv), "--val-csv", str(val_csv), "--out", str(out)])
    for list_name, expected in AFFECTNET_EXPECTED.items():
        assert read_lines(out / list_name) == expected
    assert not (out / "Manually_trainval_croped").exists()
    with pytest.raises(OutputError, match="refusing to overwrite.*--overwrite"):
        prepare_affectnet.prepare(affectnet_args(train_csv, val_csv, images, out))
    prepare_affectnet.prepare(affectnet_args(train_csv, val_csv, images, out, "--overwrite"))


def test_affectnet_errors(tmp_path):
    train_csv, val_csv, images = write_affectnet_inputs(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="--crop needs --images"):
        prepare_affectnet.prepare(["--train-csv", str(train_csv), "--val-csv", str(val_csv),
                                   "--out", str(out), "--crop"])
    with pytest.raises(PrepareError, match="overlaps the input"):
        prepare_affectnet.prepare(affectnet_args(train_csv, val_csv, images, images, "--crop"))
    (images / "2/c.png").unlink()
    with pytest.raises(PrepareError, match=r"1 listed image\(s\) missing: 2/c.png \(training.csv:4\)"):
        prepare_affectnet.prepare(affectnet_args(train_csv, val_csv, images, out))


@pytest.mark.parametrize("row, message", [
    (("4/x.png", (0, 0, 10, 10), 11), "validation.csv:2: expression '11' is outside 0..10"),
    (("4/x.png", (0, 0, 0, 10), 1), "validation.csv:2: face_width and face_height must be > 0"),
    (("../x.png", (0, 0, 10, 10), 1), "validation.csv:2: subDirectory_filePath '../x.png'"),
])
def test_affectnet_bad_row_names_file_and_line(tmp_path, row, message):
    train_csv, val_csv, images = write_affectnet_inputs(tmp_path, val=[AFFECTNET_VAL[0], row])
    with pytest.raises(PrepareError) as error:
        prepare_affectnet.prepare(["--train-csv", str(train_csv), "--val-csv", str(val_csv),
                                   "--out", str(tmp_path / "out")])
    assert message in str(error.value)


def test_affectnet_box_outside_image_names_line(tmp_path):
    train_csv, val_csv, images = write_affectnet_inputs(tmp_path, train=[("1/a.png", (100, 0, 10, 10), 2)],
                                                      val=AFFECTNET_VAL[:1])
    with pytest.raises(PrepareError, match="training.csv:2: face box"):
        prepare_affectnet.prepare(affectnet_args(train_csv, val_csv, images, tmp_path / "out", "--crop"))


# ----------------------------------------------------------------------------- shared by the scripts

# The released split -> list file names (restated here, not read from the registry).
FERPLUS_SPLIT_FILES = {"train": "ferplus_training.txt", "val": "ferplus_valid.txt", "test": "ferplus_test.txt"}
AFFECTNET_SPLIT_FILES = {
    ("train", 7): "affectnet_training-cls7-v7.txt", ("test", 7): "affectnet_validation-cls7.txt",
    ("train", 8): "affectnet_training-cls8-v7.txt", ("test", 8): "affectnet_validation-cls8.txt",
}


def names_and_labels(lines):
    return [line.split()[0] for line in lines], [int(line.split()[1]) for line in lines]


def test_prepared_ferplus_loads_under_every_registry_split(tmp_path):
    fer_path, plus_path = write_ferplus_inputs(tmp_path)
    out = tmp_path / "FERPlus"
    entries = prepare_ferplus.prepare(["--fer2013", str(fer_path), "--ferplus", str(plus_path), "--out", str(out)])
    assert sorted(entries) == sorted(FERPLUS_SPLIT_FILES)  # "val", not "valid"
    for split, list_name in FERPLUS_SPLIT_FILES.items():
        dataset = build_dataset("FERPlus", split, out)
        names, labels = names_and_labels(FERPLUS_EXPECTED[list_name])
        assert dataset.image_names == names and dataset.labels.tolist() == labels, split
        assert dataset.load_image(0).size == (48, 48)


def test_prepared_affectnet_loads_under_every_registry_split(tmp_path):
    train_csv, val_csv, images = write_affectnet_inputs(tmp_path)
    out = tmp_path / "AffectNet"
    written = prepare_affectnet.prepare(affectnet_args(train_csv, val_csv, images, out, "--crop"))
    assert sorted(written) == sorted(AFFECTNET_SPLIT_FILES)  # validation.csv is the test split
    first_crop_size = {"train": (10, 8), "test": (20, 20)}  # the boxes of 1/a.png and 3/g.png
    for (split, num_classes), list_name in AFFECTNET_SPLIT_FILES.items():
        dataset = build_dataset(f"AffectNet-{num_classes}", split, out)
        assert (dataset.image_names, dataset.labels.tolist()) == names_and_labels(AFFECTNET_EXPECTED[list_name])
        assert dataset.load_image(0).size == first_crop_size[split]


def test_prepared_rafdb_loads_under_every_registry_split(tmp_path):
    raw = tmp_path / "list_patition_label.txt"
    raw.write_text(RAF_LIST)
    out = tmp_path / "RAF-DB"
    assert sorted(prepare_rafdb.prepare(["--list", str(raw), "--out", str(out)])) == ["test", "train"]
    (out / "basic").mkdir()  # the aligned images are placed there by hand
    train = build_dataset("RAF-DB", "train", out, check_images=False)
    assert train.image_names[0] == "train_00001_aligned.jpg" and train.labels.tolist() == [4, 0, 1]


def test_refused_output_is_one_stderr_line_naming_the_path(tmp_path, capsys):
    raw = tmp_path / "list.txt"
    raw.write_text(RAF_LIST)
    out = tmp_path / "out"
    prepare_rafdb.prepare(["--list", str(raw), "--out", str(out)])
    capsys.readouterr()
    with pytest.raises(OutputError):
        prepare_rafdb.prepare(["--list", str(raw), "--out", str(out)])
    assert prepare_rafdb.main(["--list", str(raw), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: --out ")
    assert "raf_db_basic_train.txt" in error and "refusing to overwrite" in error and "--overwrite" in error


def test_an_out_that_cannot_be_written_is_one_line_before_any_work(tmp_path, capsys):
    raw = tmp_path / "list.txt"
    raw.write_text(RAF_LIST)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    assert prepare_rafdb.main(["--list", str(raw), "--out", str(blocker / "RAF-DB")]) == 2
    assert capsys.readouterr().err == f"error: --out {blocker / 'RAF-DB'}: {blocker} is not a folder\n"
    lists = tmp_path / "lists"
    (lists / "raf_db_basic_train.txt").mkdir(parents=True)  # a folder where a list file goes
    assert prepare_rafdb.main(["--list", str(raw), "--out", str(lists), "--overwrite"]) == 2
    assert capsys.readouterr().err == f"error: --out {lists / 'raf_db_basic_train.txt'}: is a folder, not a file\n"

    fer_path, plus_path = write_ferplus_inputs(tmp_path)
    out = tmp_path / "FERPlus"
    out.mkdir()
    (out / "img").write_text("a file where the image folder goes")
    argv = ["--fer2013", str(fer_path), "--ferplus", str(plus_path), "--out", str(out), "--overwrite"]
    assert prepare_ferplus.main(argv) == 2
    assert capsys.readouterr().err == f"error: --out {out / 'img'}: is a file, not a folder\n"
    assert sorted(p.name for p in out.iterdir()) == ["img"]


def test_a_crop_that_cannot_be_written_stops_with_one_output_line(tmp_path, capsys, monkeypatch):
    train_csv, val_csv, images = write_affectnet_inputs(tmp_path)
    out = tmp_path / "AffectNet"

    def disk_full(image, target, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    assert prepare_affectnet.main(affectnet_args(train_csv, val_csv, images, out, "--crop")) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: --out {out / 'Manually_trainval_croped'}/")
    assert error.rstrip().endswith(": no space left on device (ENOSPC while saving the face)")
    assert not any(p.suffix == ".txt" for p in out.iterdir())  # no list written after the failure


def test_fer2013_csv_errors_read_the_same_in_the_loader_and_the_ferplus_script(tmp_path, capsys):
    fer_path, plus_path = write_ferplus_inputs(tmp_path, FERPLUS_ROWS[:2])
    lines = fer_path.read_text().splitlines()
    lines[2] = '1,"' + " ".join(["7"] * 2303) + ' 4294967301",Training'  # 2**32 + 5 must not wrap to 5
    fer_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as loader_error:
        build_dataset("FER2013", "train", fer_path)
    assert prepare_ferplus.main(["--fer2013", str(fer_path), "--ferplus", str(plus_path),
                                 "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {loader_error.value}\n"
    assert f"{fer_path}:3: pixels must be 2304 values 0..255" in str(loader_error.value)


def test_a_full_disk_leaves_no_output_folder(tmp_path, capsys):
    raw = tmp_path / "list.txt"
    raw.write_text(RAF_LIST)
    with tmpfs(tmp_path / "full", "size=64k") as full:
        fill(full)
        assert prepare_rafdb.main(["--list", str(raw), "--out", str(full / "out" / "RAF-DB")]) == 2
        assert "no space left on device" in capsys.readouterr().err
        assert sorted(path.name for path in full.iterdir()) == ["filler"]


def test_list_files_are_written_atomically(tmp_path):
    from data_preprocessing._prepare_common import write_list_file

    path = tmp_path / "lists" / "train.txt"
    write_list_file(path, [("a.png", 0), ("b.png", 1)])
    assert read_lines(path) == ["a.png 0", "b.png 1"]

    def entries_then_crash():
        yield "c.png", 2
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_list_file(path, entries_then_crash())
    assert read_lines(path) == ["a.png 0", "b.png 1"]
    assert [p.name for p in path.parent.iterdir()] == ["train.txt"]  # no temporary file left


# ----------------------------------------------------------------------------- every bad row, left-out rows

def truncated_jpeg(path):
    """A real JPEG cut after half its bytes: PIL opens it, decoding the pixels fails."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_rafdb_reports_every_bad_line_in_one_run(tmp_path):
    raw = tmp_path / "labels.txt"
    raw.write_text("train_00001.jpg 5\ntrain_00002.jpg 9\nval_1.jpg 3\ntest_0001.jpg x\ntrain_00001.jpg 2\n")
    with pytest.raises(DataError) as error:
        prepare_rafdb.prepare(["--list", str(raw), "--out", str(tmp_path / "out")])
    lines = str(error.value).splitlines()
    assert lines[0] == "4 bad rows; fix them all, then rerun:"
    assert [line.split(": ", 1)[0].strip() for line in lines[1:]] == [f"{raw}:{n}" for n in (2, 3, 4, 5)]
    assert "outside 1..7" in lines[1] and "already listed on line 1" in lines[4]
    assert not (tmp_path / "out").exists()


def test_bad_rows_are_named_up_to_a_bound_and_the_rest_counted(tmp_path, capsys):
    raw = tmp_path / "labels.txt"
    raw.write_text("".join(f"train_{i:05d}.jpg 0\n" for i in range(25)))  # label 0: all 25 lines bad
    assert prepare_rafdb.main(["--list", str(raw), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: 25 bad rows; fix them all, then rerun:"
    assert len(err) == 1 + 20 + 1 and err[-1] == "  ... and 5 more"
    assert err[20].startswith(f"  {raw}:20: label '0' is outside 1..7")


def test_rafdb_accepts_a_byte_order_mark(tmp_path):
    raw = tmp_path / "list_patition_label.txt"
    raw.write_bytes(b"\xef\xbb\xbf" + RAF_LIST.encode())  # as Windows' Notepad saves UTF-8
    prepare_rafdb.prepare(["--list", str(raw), "--out", str(tmp_path / "out")])
    assert read_lines(tmp_path / "out" / "raf_db_basic_train.txt")[0] == "train_00001_aligned.jpg 4"


def test_rafdb_refuses_images_that_do_not_decode(tmp_path):
    raw = tmp_path / "list.txt"
    raw.write_text(RAF_LIST)
    images = aligned_images(tmp_path / "aligned", "train_00001", "train_00002", "test_0001", "test_0002")
    truncated_jpeg(images / "train_00003_aligned.jpg")
    (images / "test_0002_aligned.jpg").write_text("not an image")
    out = tmp_path / "out"
    with pytest.raises(DataError) as error:
        prepare_rafdb.prepare(["--list", str(raw), "--images", str(images), "--out", str(out)])
    message = str(error.value)
    assert message.startswith("2 bad rows")
    assert f"--images {images / 'train_00003_aligned.jpg'}: not a readable image (image file is truncated" in message
    assert f"--images {images / 'test_0002_aligned.jpg'}: not an image file" in message
    assert not (out / "raf_db_basic_train.txt").exists()


def test_ferplus_counts_the_rows_it_leaves_out(tmp_path, capsys):
    fer_path, plus_path = write_ferplus_inputs(tmp_path)
    prepare_ferplus.prepare(["--fer2013", str(fer_path), "--ferplus", str(plus_path), "--out", str(tmp_path / "o")])
    # FERPLUS_ROWS: one row without a name, five whose vote gives no emotion (worked out beside them)
    assert ("FERPlus: 6 row(s) left out (1 without an image name, 5 with no majority among the 8 emotions)"
            in capsys.readouterr().out)


def test_ferplus_names_the_bad_pixel_value(tmp_path):
    fer_path, plus_path = write_ferplus_inputs(tmp_path, FERPLUS_ROWS[:3])
    lines = fer_path.read_text().splitlines()
    emotion, pixels, usage = lines[2].split(",")
    values = pixels.split()
    values[100] = "300"
    lines[2] = ",".join([emotion, " ".join(values), usage])
    fer_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"fer2013.csv:3: pixels must be 2304 values 0..255 \(48x48\), got 2304 "
                                        r"values; value 300 \(pixel 101\) is outside 0..255$"):
        prepare_ferplus.prepare(["--fer2013", str(fer_path), "--ferplus", str(plus_path), "--out", str(tmp_path / "o")])


def test_affectnet_counts_the_rows_it_leaves_out(tmp_path, capsys):
    train_csv, val_csv, _ = write_affectnet_inputs(tmp_path)
    prepare_affectnet.prepare(["--train-csv", str(train_csv), "--val-csv", str(val_csv), "--out", str(tmp_path / "o")])
    printed = capsys.readouterr().out  # codes 8..10: d, e, i; Contempt: b, h
    assert ("AffectNet-7: 5 row(s) left out (3 with expression 8..10 (None, Uncertain, Non-Face), "
            "2 with expression 7 (Contempt))") in printed
    assert "AffectNet-8: 3 row(s) left out (3 with expression 8..10 (None, Uncertain, Non-Face))" in printed


@pytest.mark.parametrize("repeat", [AFFECTNET_TRAIN[0], ("1/a.png", (5, 4, 10, 8), 3)], ids=["same", "disagreeing"])
def test_affectnet_refuses_an_image_listed_twice(tmp_path, repeat):
    train_csv, val_csv, images = write_affectnet_inputs(tmp_path, val=[*AFFECTNET_VAL, repeat])
    with pytest.raises(PrepareError, match=rf"validation.csv:4: image '1/a.png' already listed at {train_csv}:2$"):
        prepare_affectnet.prepare(affectnet_args(train_csv, val_csv, images, tmp_path / "o"))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("crop", [[], ["--workers", "2"], ["--crop"]])
def test_affectnet_refuses_an_image_that_does_not_decode(tmp_path, crop):
    train_csv, val_csv, images = write_affectnet_inputs(tmp_path)
    truncated_jpeg(images / "2" / "c.png")  # a JPEG under a .png name: PIL goes by the content
    with pytest.raises(PrepareError, match=r"training.csv:4.*image file is truncated"):
        prepare_affectnet.prepare(affectnet_args(train_csv, val_csv, images, tmp_path / "o", *crop))
    assert not (tmp_path / "o" / "affectnet_training-cls8-v7.txt").exists()


def test_the_prepare_scripts_import_no_torch():
    code = ("import sys, data_preprocessing.prepare_rafdb, data_preprocessing.prepare_ferplus, "
            "data_preprocessing.prepare_affectnet; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "[]"
