"""Edge cases of the data code on real bad input: named pipes, case-clashing class folders, bytes that
are not UTF-8, labels too large for int64, names without an image extension, --workers bounds, and the
datasets/demo modules kept free of an import cycle."""
import ast
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_preprocessing import DataError, build_dataset, demo, prepare_affectnet, prepare_ferplus, prepare_rafdb
from data_preprocessing.datasets import parse_list_file, read_dataset

PACKAGE = Path(__file__).resolve().parents[1] / "data_preprocessing"
DEADLINE_S = 5.0

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")


def save_image(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def make_fifo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def call_within_deadline(function, fifo):
    """`function()`'s result or exception; fails the test when it is still blocked after DEADLINE_S
    (then opens `fifo` for writing, which lets a reader stuck in open() go on)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a reader is waiting: this succeeds
        os.close(descriptor)
        thread.join(DEADLINE_S)
        pytest.fail(f"blocked for more than {DEADLINE_S} s on the named pipe {fifo}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def one_error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


# ----------------------------------------------------------------------------------- named pipes

@needs_fifo
def test_a_named_pipe_in_a_class_folder_is_refused_naming_it(tmp_path):
    for split in ("train", "test"):
        save_image(tmp_path / split / "cat" / "a.png")
        save_image(tmp_path / split / "dog" / "b.png")
    pipe = make_fifo(tmp_path / "train" / "dog" / "sub" / "pipe.png")
    with pytest.raises(DataError, match="named pipe") as error:
        call_within_deadline(lambda: build_dataset("folder", "train", tmp_path), pipe)
    assert str(pipe) in str(error.value)
    assert pipe.exists()  # nothing the user made is touched


@needs_fifo
def test_a_named_pipe_in_a_fer2013_class_folder_is_refused(tmp_path):
    for name in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"):
        save_image(tmp_path / "train" / name / "0.png")
    pipe = make_fifo(tmp_path / "train" / "happy" / "1.jpg")
    with pytest.raises(DataError, match=f"{pipe}.*named pipe"):
        call_within_deadline(lambda: build_dataset("FER2013", "train", tmp_path), pipe)


def write_rafdb(root, lines):
    (root / "basic").mkdir(parents=True, exist_ok=True)
    (root / "raf_db_basic_train.txt").write_text("".join(f"{line}\n" for line in lines))


@needs_fifo
def test_a_listed_named_pipe_is_refused_with_list_file_and_line(tmp_path):
    save_image(tmp_path / "basic" / "a.jpg")
    pipe = make_fifo(tmp_path / "basic" / "b.jpg")
    write_rafdb(tmp_path, ["a.jpg 0", "b.jpg 1"])
    with pytest.raises(DataError) as error:
        call_within_deadline(lambda: build_dataset("RAF-DB", "train", tmp_path), pipe)
    assert f"{tmp_path / 'raf_db_basic_train.txt'}:2: b.jpg" in str(error.value)
    assert "named pipe" in str(error.value)


@needs_fifo
def test_loading_a_named_pipe_unchecked_is_a_data_error_not_a_hang(tmp_path):
    save_image(tmp_path / "basic" / "a.jpg")
    pipe = make_fifo(tmp_path / "basic" / "b.jpg")
    write_rafdb(tmp_path, ["a.jpg 0", "b.jpg 1"])
    dataset = build_dataset("RAF-DB", "train", tmp_path, check_images=False)
    assert dataset.load_image(0).size == (8, 8)
    with pytest.raises(DataError, match=f"cannot read image {pipe} .*named pipe"):
        call_within_deadline(lambda: dataset.load_image(1), pipe)


@needs_fifo
def test_a_list_file_that_is_a_named_pipe_is_named_as_such(tmp_path):
    pipe = make_fifo(tmp_path / "list.txt")
    with pytest.raises(DataError, match=f"list file {pipe} is a named pipe"):
        call_within_deadline(lambda: parse_list_file(pipe, 7), pipe)


@needs_fifo
def test_a_demo_metadata_named_pipe_is_refused(tmp_path):
    pipe = make_fifo(tmp_path / "demo" / "demo_meta.json")
    with pytest.raises(DataError, match="demo_meta.json is a named pipe"):
        call_within_deadline(lambda: demo.ensure_demo_dataset(tmp_path / "demo"), pipe)


# ------------------------------------------------------------------------ case-clashing folders

def case_sensitive(folder):
    (folder / "probe").mkdir()
    (folder / "PROBE").mkdir(exist_ok=True)
    clash = len(os.listdir(folder)) == 2
    for name in set(os.listdir(folder)):
        os.rmdir(folder / name)
    return clash


@pytest.mark.parametrize("dataset, classes", [
    ("folder", ["Happy", "happy", "sad"]),
    ("FER2013", ["angry", "disgust", "fear", "Happy", "happy", "sad", "surprise", "neutral"]),
])
def test_class_folders_differing_only_in_case_are_refused_naming_both(tmp_path, dataset, classes):
    if not case_sensitive(tmp_path):
        pytest.skip("case-insensitive file system")
    for index, name in enumerate(classes):
        save_image(tmp_path / "train" / name / f"{index}.png")
    with pytest.raises(DataError) as error:
        build_dataset(dataset, "train", tmp_path)
    message = str(error.value)
    assert "'Happy' and 'happy' differ only in case" in message and str(tmp_path / "train") in message


# ------------------------------------------------------------------------------ not UTF-8 input

# Line 2 starts at byte 18 ("train_00001.jpg 5\n" is 18 bytes); its 8th byte, offset 25, is 0xff.
RAF_NOT_UTF8 = b"train_00001.jpg 5\ntrain_0\xff002.jpg 1\n"


def test_prepare_rafdb_on_bytes_that_are_not_utf8_is_one_line_with_line_and_offset(tmp_path, capsys):
    raw = tmp_path / "list.txt"
    raw.write_bytes(RAF_NOT_UTF8)
    assert prepare_rafdb.main(["--list", str(raw), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert f"--list {raw}:2: not UTF-8 text (byte 0xff at byte offset 25)" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert raw.read_bytes() == RAF_NOT_UTF8


FERPLUS_HEADER = b"Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
FACE = " ".join(["7"] * 48 * 48).encode()


def write_fer2013(path, rows):
    path.write_bytes(b"emotion,pixels,Usage\n" + b"".join(b"3,%s,%s\n" % (FACE, usage) for usage in rows))


def test_prepare_ferplus_on_a_ferplus_csv_that_is_not_utf8(tmp_path, capsys):
    fer, plus = tmp_path / "fer2013.csv", tmp_path / "fer2013new.csv"
    write_fer2013(fer, [b"Training"])
    plus.write_bytes(FERPLUS_HEADER + b"Training,fer\xe9.png,0,10,0,0,0,0,0,0,0,0\n")
    assert prepare_ferplus.main(["--fer2013", str(fer), "--ferplus", str(plus), "--out", str(tmp_path / "o")]) == 2
    offset = len(FERPLUS_HEADER) + len(b"Training,fer")
    assert f"--ferplus {plus}:2: not UTF-8 text (byte 0xe9 at byte offset {offset})" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_prepare_ferplus_on_a_fer2013_csv_that_is_not_utf8(tmp_path, capsys):
    fer, plus = tmp_path / "fer2013.csv", tmp_path / "fer2013new.csv"
    write_fer2013(fer, [b"Training", b"Train\x80ing"])
    plus.write_bytes(FERPLUS_HEADER + b"Training,a.png,0,10,0,0,0,0,0,0,0,0\n"
                     + b"Training,b.png,0,10,0,0,0,0,0,0,0,0\n")
    assert prepare_ferplus.main(["--fer2013", str(fer), "--ferplus", str(plus), "--out", str(tmp_path / "o")]) == 2
    row = len(b"3,%s," % FACE)
    offset = len(b"emotion,pixels,Usage\n") + len(b"3,%s,Training\n" % FACE) + row + len(b"Train")
    assert f"{fer}:3: not UTF-8 text (byte 0x80 at byte offset {offset})" in one_error_line(capsys)


def test_prepare_affectnet_on_a_csv_that_is_not_utf8(tmp_path, capsys):
    train, val = tmp_path / "training.csv", tmp_path / "validation.csv"
    train.write_bytes(b"1/a.png,0,0,5,5,,0,0,0\n1/\xc3(.png,0,0,5,5,,0,0,0\n")
    val.write_bytes(b"1/c.png,0,0,5,5,,1,0,0\n")
    args = ["--train-csv", str(train), "--val-csv", str(val), "--out", str(tmp_path / "o")]
    assert prepare_affectnet.main(args) == 2
    expected = f"--train-csv {train}:2: not UTF-8 text (byte 0xc3 at byte offset 25)"  # line 1 is 23 bytes, then "1/"
    assert expected in one_error_line(capsys)


def test_a_list_file_that_is_not_utf8_names_line_and_offset(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"a.jpg 0\nb\xff.jpg 1\n")
    with pytest.raises(DataError, match=r"list.txt:2: not UTF-8 text \(byte 0xff at byte offset 9\)"):
        parse_list_file(path, 7)


# ------------------------------------------------------------------------------------ big labels

@pytest.mark.parametrize("label", ["100000000000000000000000", "-100000000000000000000000", "+-5", "\u00b2"])
def test_a_label_that_is_no_int64_names_file_and_line(tmp_path, label):
    path = tmp_path / "list.txt"
    path.write_text(f"a.jpg 0\nimg.jpg {label}\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}:2: "):
        parse_list_file(path, 7)


# ------------------------------------------------------------------------- FERPlus name checks

def test_prepare_ferplus_name_without_extension_refused_before_creating_anything(tmp_path, capsys):
    fer, plus = tmp_path / "fer2013.csv", tmp_path / "fer2013new.csv"
    write_fer2013(fer, [b"Training", b"Training"])
    plus.write_bytes(FERPLUS_HEADER + b"Training,a.png,0,10,0,0,0,0,0,0,0,0\n"
                     + b"Training,fer0000001,0,10,0,0,0,0,0,0,0,0\n")
    out = tmp_path / "out"
    assert prepare_ferplus.main(["--fer2013", str(fer), "--ferplus", str(plus), "--out", str(out)]) == 2
    assert f"{plus}:3: image name 'fer0000001' has no image extension" in one_error_line(capsys)
    assert not out.exists()


def test_prepare_ferplus_bad_pixels_late_in_the_file_leave_no_image_folder(tmp_path, capsys):
    fer, plus = tmp_path / "fer2013.csv", tmp_path / "fer2013new.csv"
    write_fer2013(fer, [b"Training", b"Training"])
    fer.write_bytes(fer.read_bytes().replace(b"Training\n3,", b"Training\n3,300 ", 1))  # row 2: 2305 values
    plus.write_bytes(FERPLUS_HEADER + b"Training,a.png,0,10,0,0,0,0,0,0,0,0\n"
                     + b"Training,b.png,0,10,0,0,0,0,0,0,0,0\n")
    out = tmp_path / "out"
    out.mkdir()
    assert prepare_ferplus.main(["--fer2013", str(fer), "--ferplus", str(plus), "--out", str(out)]) == 2
    assert f"{fer}:3: pixels must be" in one_error_line(capsys)
    assert list(out.iterdir()) == []


# -------------------------------------------------------------------------------------- workers

@pytest.mark.parametrize("workers", ["100000", "0", "-3"])
def test_prepare_affectnet_workers_out_of_bounds_refused_before_any_process(tmp_path, capsys, monkeypatch,
                                                                              workers):
    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool was started")

    monkeypatch.setattr(prepare_affectnet, "Pool", no_pool)
    train, val = tmp_path / "training.csv", tmp_path / "validation.csv"
    train.write_text("1/a.png,0,0,5,5,,0,0,0\n")
    val.write_text("1/c.png,0,0,5,5,,1,0,0\n")
    out = tmp_path / "o"
    assert prepare_affectnet.main(["--train-csv", str(train), "--val-csv", str(val), "--out", str(out),
                                   "--workers", workers]) == 2
    limit = min(64, 4 * (os.cpu_count() or 1))
    assert f"--workers {workers}: must be 1..{limit}" in one_error_line(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------- module structure

def imported_modules(path):
    """Every module an `import` / `from ... import` anywhere in `path` names (function bodies included),
    with `from . import x` read as `.x`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            names.update(f"{base}.{alias.name}" if not node.module else base for alias in node.names)
    return names


def test_datasets_and_demo_do_not_import_each_other():
    def last_part(module):
        return module.rstrip(".").rsplit(".", 1)[-1]

    assert "demo" not in {last_part(m) for m in imported_modules(PACKAGE / "datasets.py")}
    assert "datasets" not in {last_part(m) for m in imported_modules(PACKAGE / "demo.py")}


def test_reading_an_ungenerated_demo_folder_is_a_data_error_and_writes_nothing(tmp_path):
    root = tmp_path / "demo"
    with pytest.raises(DataError, match=f"no generated demo dataset in {root}"):
        read_dataset("demo", "train", root)
    assert not root.exists()


def test_renamed_names():
    from data_preprocessing import _prepare_common

    assert demo.LEVELS_PER_ATTRIBUTE == len(demo.BACKGROUND_HUES) == len(demo.DEMO_CLASSES) == 7
    assert not hasattr(demo, "NUM_LEVELS")
    assert callable(_prepare_common.claim_prepared_outputs) and not hasattr(_prepare_common, "claim_outputs")
