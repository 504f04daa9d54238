"""The two file boundaries with real faults: what the project reads (`data_preprocessing/files.py`)
and what it writes (`data_preprocessing/outputs.py`), and the resource limits checked at the start.

Named pipes, hard links, symbolic-link loops, names too long, a full standard output (/dev/full)
and two runs claiming one output are all made for real; a full and a read-only file system are
real tmpfs mounts where this process may mount (else skipped), and only errnos that cannot be made
here (EIO) are injected. Every read of a named pipe runs under a timeout: a hang fails the test.
"""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from data_preprocessing import DataError, build_dataset
from data_preprocessing.files import InputError, read_bytes, read_csv, read_json, read_text
from data_preprocessing.outputs import CreatedPaths, OutputError, atomic_write_text, open_for_append
from helpers import FOLDER_CLASSES, fill, folder_dataset, save_checkpoint, tiny_training_args, tmpfs
from models import build_model
from utils.checkpoint import CheckpointError
from utils.model_info import read_model_info
from utils.reporting import make_logger
from utils.run_folder import lock_run_dir, release_run_dirs
from utils.tools import cli
from utils.tools import compare as compare_tool
from utils.tools import predict as predict_tool
from utils.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
LONG_NAME = "n" * 300  # over the 255 bytes a name most file systems take


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`(checkpoint, folder of three 32 px face crops)`: a tiny QCS and images to classify."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder / "tiny.pth", build_model("qcs", 3, size="tiny").eval(), FOLDER_CLASSES,
                                 image_size=32, size="tiny")
    images = folder / "faces"
    images.mkdir()
    for index, colour in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        Image.new("RGB", (32, 32), colour).save(images / f"face{index}.png")
    return checkpoint, images


def predict(tiny, *options):
    checkpoint, images = tiny
    return cli.main(["predict", "--checkpoint", str(checkpoint), "--no-detect", "--device", "cpu",
                     *map(str, options), str(images)])


def one_error_line(stream):
    assert stream.count("\n") == 1 and stream.startswith("error: ") and "Traceback" not in stream, stream
    return stream[len("error: "):].rstrip("\n")


def fifo(path):
    os.mkfifo(path)
    return path


# ------------------------------------------------------------------------------ reading

@pytest.mark.timeout(20)
def test_a_named_pipe_device_socket_or_folder_is_refused_at_once(tmp_path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    cases = {fifo(tmp_path / "pipe.json"): "a named pipe (FIFO)", Path("/dev/null"): "a character device",
             tmp_path / "sock": "a socket", tmp_path: "a folder"}
    for path, kind in cases.items():
        for read in (read_bytes, read_text, read_json, read_csv):
            with pytest.raises(InputError) as raised:
                read(path, "--config")
            assert str(raised.value) == f"--config {path}: {kind}, not a regular file"
    server.close()


@pytest.mark.timeout(120)
def test_named_pipes_as_config_model_info_and_summary_csv_do_not_hang(tmp_path, tiny, capsys):
    config = fifo(tmp_path / "config.json")
    assert train_main("qcs", ["--config", str(config)]) == 2
    assert f"error: --config {config}: a named pipe (FIFO), not a regular file\n" in capsys.readouterr().out

    export = tmp_path / "export"
    export.mkdir()
    fifo(export / "model_info.json")
    with pytest.raises(CheckpointError, match="model_info.json: a named pipe \\(FIFO\\), not a regular file$"):
        read_model_info(export / "model.safetensors")

    folder = tmp_path / "compare"
    folder.mkdir()
    fifo(folder / "summary.csv")
    assert compare_tool.main(["--merge", str(folder), "--out", str(tmp_path / "merged")]) == 2
    message = one_error_line(capsys.readouterr().err)
    assert f"--merge {folder}: no readable summary.csv" in message and "named pipe (FIFO)" in message
    assert not (tmp_path / "merged").exists()


def test_json_is_bounded_in_nesting_and_size_and_utf8_is_located(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)  # json.loads alone raises RecursionError on this
    with pytest.raises(InputError, match=r"deep.json: not valid JSON here \(nested more than 64 deep\)"):
        read_json(deep)
    brackets_in_strings = tmp_path / "strings.json"
    brackets_in_strings.write_text(json.dumps({"a": "[" * 500, "b": "\\\"{" * 200, "c": [[1]]}))
    assert read_json(brackets_in_strings)["c"] == [[1]]
    with pytest.raises(InputError, match=r"strings.json: larger than 1024 bytes; not a file this reads"):
        read_json(brackets_in_strings, limit=1024)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf{\"a\": 1}")
    assert read_json(bom) == {"a": 1}
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"a":\n "\xff"}')
    with pytest.raises(InputError, match=r"bad.json: not UTF-8 text \(byte 0xff at line 2, byte offset 8\)"):
        read_json(bad)
    bad.write_text('{"a": }')
    with pytest.raises(InputError, match=r"bad.json: not valid JSON \(Expecting value at line 1\)"):
        read_json(bad)


def test_every_os_error_is_one_line_naming_path_cause_and_remedy(tmp_path, monkeypatch):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop.name)  # a link to itself
    cases = [
        (tmp_path / "missing.json", "no such file or folder (ENOENT while reading it)"),
        (a_file / "x.json", "a part of the path is not a folder (ENOTDIR while reading it)"),
        (tmp_path / LONG_NAME, "a name in the path is too long (file systems take up to 255 bytes a name): "
                               "choose a shorter one (ENAMETOOLONG while reading it)"),
        (loop, "too many levels of symbolic links (a link that leads back to itself?): fix or remove the link "
               "(ELOOP while reading it)"),
    ]
    for path, expected in cases:
        with pytest.raises(InputError) as raised:
            read_json(path, "--flag")
        assert str(raised.value) == f"--flag {path}: {expected}"

    good = tmp_path / "good.json"
    good.write_text("{}")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # the next open is one too many: EMFILE
    try:
        with pytest.raises(InputError) as raised:
            read_json(good)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert str(raised.value) == (f"{good}: too many open files in this process: raise the limit (ulimit -n) or use "
                                 "fewer workers (EMFILE while reading it)")

    def failing_open(*args, **kwargs):  # an errno that cannot be made here: the system's own words
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(InputError, match=r"^--flag .*good.json: input/output error \(EIO while reading it\)$"):
        read_json(good, "--flag")


def test_a_symbolic_link_loop_in_a_dataset_folder_is_one_line(tmp_path):
    data = folder_dataset(tmp_path / "data")
    calm = data / "test" / "calm"
    (calm / "a.png").symlink_to("b.png")
    (calm / "b.png").symlink_to("a.png")
    with pytest.raises(DataError) as raised:
        build_dataset("folder", "test", data_root=data)
    assert str(raised.value) == (f"{calm / 'a.png'} is a symbolic link loop, not a regular image file; "
                                 f"move it out of {calm}")


# ------------------------------------------------------------------------------ writing

@pytest.mark.timeout(60)
def test_hard_links_are_refused_as_log_lock_and_appended_files(tmp_path):
    user_file = tmp_path / "thesis.txt"
    user_file.write_text("my thesis\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name, open_it in (("log.txt", lambda: make_logger(run_dir)), (".lock", lambda: lock_run_dir(run_dir)),
                          ("metrics.csv", lambda: open_for_append(run_dir / "metrics.csv"))):
        os.link(user_file, run_dir / name)
        with pytest.raises(OutputError) as raised:
            open_it()
        assert str(raised.value) == (f"{run_dir / name}: is a hard link (2 names for one file); refusing to write "
                                     "through it: remove this name")
        os.remove(run_dir / name)
    release_run_dirs()
    assert user_file.read_text() == "my thesis\n"
    fifo(run_dir / "log.txt")  # nor into a named pipe (and without waiting for a reader)
    with pytest.raises(OutputError, match="log.txt: not a regular file; refusing to write to it: remove it$"):
        make_logger(run_dir)
    os.link(user_file, run_dir / "config.json")  # an atomic rewrite replaces the name, never the linked file
    atomic_write_text("{}", run_dir / "config.json")
    assert user_file.read_text() == "my thesis\n" and (run_dir / "config.json").read_text() == "{}"


def test_two_predict_runs_naming_one_csv_one_refused_at_once(tiny, tmp_path, capsys, monkeypatch):
    csv_path = tmp_path / "same.csv"
    real = predict_tool.predict_files
    second = {}

    def first_run_meanwhile(*args, **kwargs):  # the second run starts while the first one classifies
        second["code"] = predict(tiny, "--csv", csv_path)
        second["err"] = capsys.readouterr().err
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_tool, "predict_files", first_run_meanwhile)
    assert predict(tiny, "--csv", csv_path) == 0
    assert second["code"] == 2
    assert one_error_line(second["err"]) == f"--csv {csv_path} already exists; refusing to overwrite it"
    assert len(csv_path.read_text().splitlines()) == 4 and f"wrote {csv_path}" in capsys.readouterr().out


def test_a_killed_runs_claim_is_taken_over_a_live_ones_is_not(tiny, tmp_path, capsys):
    csv_path = tmp_path / "out.csv"
    child = os.fork()
    if child == 0:  # claims the output like a starting predict, then is killed before it writes
        CreatedPaths().claim(csv_path, "--csv")
        os.kill(os.getpid(), signal.SIGKILL)
    assert os.waitpid(child, 0)[1] == signal.SIGKILL and csv_path.stat().st_size == 0
    assert predict(tiny, "--csv", csv_path) == 0  # the placeholder nobody holds is taken over
    assert len(csv_path.read_text().splitlines()) == 4
    held = tmp_path / "held.csv"
    (from_child, to_parent), (from_parent, to_child) = os.pipe(), os.pipe()
    child = os.fork()
    if child == 0:  # claims and stays alive until told to go
        CreatedPaths().claim(held, "--csv")
        os.write(to_parent, b"claimed")
        os.read(from_parent, 1)
        os._exit(0)
    assert os.read(from_child, 7) == b"claimed"
    try:
        capsys.readouterr()
        assert predict(tiny, "--csv", held) == 2
        assert one_error_line(capsys.readouterr().err) == f"--csv {held} already exists; refusing to overwrite it"
    finally:
        os.write(to_child, b"x")
        os.waitpid(child, 0)


def test_predict_writes_its_csv_before_printing_to_a_full_standard_output(tiny, tmp_path, capsys, monkeypatch):
    csv_path = tmp_path / "out.csv"
    full = open("/dev/full", "w")
    monkeypatch.setattr(sys, "stdout", full)
    assert predict(tiny, "--csv", csv_path) == 1
    assert one_error_line(capsys.readouterr().err) == ("standard output: no space left on device (ENOSPC while "
                                                       "printing); every output file was written before it")
    assert len(csv_path.read_text().splitlines()) == 4
    full.close()


def test_a_name_too_long_is_one_line_before_any_work(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("utils.tools.classify.load_trained_model", lambda *a, **k: pytest.fail("model loaded"))
    for flag in ("--csv", "--json"):
        assert predict(tiny, flag, tmp_path / LONG_NAME) == 2
        assert one_error_line(capsys.readouterr().err) == (
            f"{flag} {tmp_path / LONG_NAME}: a name in the path is too long (file systems take up to 255 bytes a "
            "name): choose a shorter one (ENAMETOOLONG while checking it)")
    assert list(tmp_path.iterdir()) == []


def test_training_output_dir_too_long_is_one_line_and_leaves_no_parents(tmp_path, capsys):
    data = folder_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    output_dir = tmp_path / "new" / LONG_NAME
    (tmp_path / "new").mkdir()
    assert train_main("qcs", tiny_training_args(data, "--epochs", "1", "--output-dir", str(output_dir))) == 2
    assert f"error: --output-dir {output_dir}: a name in the path is too long" in capsys.readouterr().out
    (tmp_path / "new").rmdir()
    output_dir = tmp_path / "parent" / "child" / LONG_NAME
    assert train_main("qcs", tiny_training_args(data, "--epochs", "1", "--output-dir", str(output_dir))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the parents it made are gone again


def test_a_start_that_fails_later_removes_the_parents_it_made_for_the_run_folder(tmp_path, capsys):
    data = folder_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    run = tmp_path / "made" / "for" / "run"
    assert train_main("qcs", tiny_training_args(data, "--epochs", "1", "--lr", "1e30", "--output-dir", str(run))) == 1
    assert "stopped: loss is nan at step 1" in capsys.readouterr().out  # before anything was saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_failed_run_removes_exactly_what_it_created(tiny, tmp_path, capsys):
    kept = tmp_path / "kept"
    (kept / "old").mkdir(parents=True)
    (kept / "old" / "mine.txt").write_text("mine")
    with pytest.raises(RuntimeError), CreatedPaths() as created:
        created.claim(kept / "old" / "new" / "deeper" / "out.csv", "--csv", create_parent=True)
        created.make_dir(kept / "annotated" / "a", "--annotate")
        (kept / "annotated" / "a" / "x.png").write_bytes(b"drawn")
        created.add(kept / "annotated" / "a" / "x.png")
        (kept / "annotated" / "user-made-meanwhile.txt").write_text("not ours")
        raise RuntimeError("fails after creating")
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*")) == [
        "annotated", "annotated/user-made-meanwhile.txt", "old", "old/mine.txt"]

    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"not a checkpoint")
    out = tmp_path / "out.csv"
    assert cli.main(["predict", "--checkpoint", str(damaged), "--no-detect", "--csv", str(out), str(tiny[1])]) == 2
    assert "damaged.pth" in one_error_line(capsys.readouterr().err)
    assert not out.exists()  # the claimed placeholder is gone again


def test_a_full_and_a_read_only_file_system_are_one_line_and_leave_nothing(tiny, tmp_path, capsys):
    with tmpfs(tmp_path / "full", "size=64k") as full:
        fill(full)
        assert predict(tiny, "--csv", full / "out.csv") == 2
        assert one_error_line(capsys.readouterr().err) == (
            f"--csv {full / 'out.csv'}: no space left on device (ENOSPC while writing)")
        assert sorted(p.name for p in full.iterdir()) == ["filler"]
    with tmpfs(tmp_path / "ro", "ro,size=64k") as read_only:
        assert predict(tiny, "--csv", read_only / "out.csv") == 2
        message = one_error_line(capsys.readouterr().err)
        assert message.startswith(f"--csv {read_only / 'out.csv'}: cannot write in folder") and "read-only" in message


# ------------------------------------------------------------------------------ resource limits

def limited(ulimit, code):
    """Exit status and stderr of `python -c code` under `ulimit` (no PyTorch is imported before the check)."""
    return subprocess.run(["bash", "-c", f"{ulimit}; exec {sys.executable} -c '{code}'"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_limits_are_one_line_naming_ulimit_before_pytorch_loads():
    result = limited("ulimit -v 3000000", "import utils.train")  # `import torch` itself aborts under it
    assert result.returncode == 2
    assert one_error_line(result.stderr) == ("this process may map only 2.9 GiB of memory (ulimit -v), and PyTorch "
                                             "needs about 3.5 GiB: raise the limit (ulimit -v 3670016, or unlimited)")
    result = limited("ulimit -n 24", "from data_preprocessing.limits import check_open_files; check_open_files(8)")
    assert "LimitError: --workers 8: this process may open only 24 files (ulimit -n)" in result.stderr
    assert "raise the limit (ulimit -n 160) or give fewer --workers" in result.stderr
    result = limited("ulimit -n 24", "import sys; from data_preprocessing.prepare_affectnet import main; "
                     "sys.exit(main([\"--train-csv\", \"t.csv\", \"--val-csv\", \"v.csv\", \"--out\", \"o\", "
                     "\"--workers\", \"2\"]))")
    assert result.returncode == 2
    assert one_error_line(result.stderr) == ("--workers 2: this process may open only 24 files (ulimit -n), and 2 "
                                             "workers need about 64 to hand their results over; raise the limit "
                                             "(ulimit -n 64) or give fewer --workers")
