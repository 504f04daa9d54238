"""The output layer (`data_preprocessing/outputs.py`) and what every command does when it cannot write.

The layer's own tests inject each errno; the end-to-end ones make the failure real: a missing
folder, a file where a folder should be, a read-only folder (in a subprocess without
capabilities, since root writes through any mode bits) and a full disk (in a subprocess under a
file-size limit, as `ulimit -f` sets it: Python ignores SIGXFSZ, so a write past it fails EFBIG).
"""
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from data_preprocessing.outputs import (
    OutputError,
    atomic_write,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    make_output_dir,
    output_errors,
    remove_stale_temporaries,
)
from helpers import save_checkpoint, unprivileged_prefix
from models import build_model

ROOT = Path(__file__).resolve().parents[1]
RAF_LIST = "train_00001.jpg 5\ntest_0001.jpg 7\n"


def temporaries(folder):
    """Every `.*.tmp` left anywhere under `folder`."""
    return sorted(p.name for p in Path(folder).rglob(".*.tmp"))


def one_error_line(stderr):
    """The message of a command's stderr that must be exactly one `error: ...` line."""
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert "Traceback" not in stderr
    return stderr[len("error: "):].rstrip("\n")


# ------------------------------------------------------------------------------ the layer

CAUSES = [
    (errno.ENOSPC, "no space left on device"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.EFBIG, "file too large for the limit set on this process (ulimit -f)"),
    (errno.EACCES, "permission denied"),
    (errno.EPERM, "operation not permitted"),
    (errno.EROFS, "read-only file system"),
    (errno.ENOTDIR, "not a folder"),
    (errno.EISDIR, "is a folder"),
    (errno.ENOENT, "does not exist"),
]


@pytest.mark.parametrize("code, cause", CAUSES, ids=[errno.errorcode[c] for c, _ in CAUSES])
def test_each_errno_is_one_line_naming_flag_path_and_cause(tmp_path, code, cause):
    path = tmp_path / "out.csv"
    path.write_text("old\n")

    def fail(handle):
        handle.write("half a fi")
        raise OSError(code, os.strerror(code))

    with pytest.raises(OutputError) as raised:
        atomic_write(path, fail, mode="w", flag="--csv")
    message = str(raised.value)
    assert message.startswith(f"--csv {path}: ") and cause in message and "\n" not in message
    assert f"({errno.errorcode[code]} while writing)" in message
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["out.csv"]  # temporary file removed


def test_real_path_failures_are_named(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    (tmp_path / "folder").mkdir()
    cases = [(tmp_path / "missing" / "out.txt", f"folder {tmp_path / 'missing'} does not exist (ENOENT"),
             (a_file / "out.txt", f"{a_file} is not a folder (ENOTDIR"),
             (tmp_path / "folder", "it is a folder, not a file (EISDIR")]
    for path, expected in cases:
        with pytest.raises(OutputError) as raised:
            atomic_write_text("new\n", path)
        assert str(raised.value).startswith(f"{path}: {expected}")
    assert sorted(os.listdir(tmp_path)) == ["folder", "notes.txt"] and not os.listdir(tmp_path / "folder")


def test_errors_about_other_files_and_other_exceptions_pass_through(tmp_path):
    path = tmp_path / "out.png"
    with pytest.raises(FileNotFoundError):  # an input read while writing is not an output problem
        with output_errors(path, "--out"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/elsewhere/input.csv")
    with pytest.raises(OutputError, match=r"--out .*out.png: input/output error \(EIO\)$"):  # any errno: its own text
        with output_errors(path, "--out"):
            raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(OutputError, match="--out .*out.png: no space left on device"):
        with output_errors(path, "--out"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
    with pytest.raises(RuntimeError, match="serialiser bug"):
        atomic_write(path, lambda handle: (_ for _ in ()).throw(RuntimeError("serialiser bug")), buffered=True)
    assert os.listdir(tmp_path) == []


def test_buffered_write_round_trips_and_serialises_before_touching_the_disk(tmp_path):
    path = tmp_path / "state.pth"
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    atomic_write(path, lambda handle: torch.save(state, handle), buffered=True)
    torch.testing.assert_close(torch.load(path, weights_only=True)["weight"], state["weight"])
    touched = []

    def serialise(handle):
        touched.append(sorted(os.listdir(tmp_path)))
        raise ValueError("cannot pickle")

    with pytest.raises(ValueError):
        atomic_write(path, serialise, buffered=True)
    assert touched == [["state.pth"]]  # no temporary file existed while serialising
    assert os.listdir(tmp_path) == ["state.pth"]


@pytest.mark.parametrize("check, path, expected", [
    (check_output_file, "missing/x.csv", "--flag {p}: folder {t}/missing does not exist"),
    (check_output_file, "notes.txt/x.csv", "--flag {p}: {t}/notes.txt is not a folder"),
    (check_output_file, "folder", "--flag {p}: is a folder, not a file"),
    (check_output_dir, "notes.txt", "--flag {p}: is a file, not a folder"),
    (check_output_dir, "missing", "--flag {p}: folder {p} does not exist"),
])
def test_destination_checks_name_flag_path_and_cause(tmp_path, check, path, expected):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError) as raised:
        check(tmp_path / path, "--flag")
    assert str(raised.value) == expected.format(p=tmp_path / path, t=tmp_path)


def test_destination_checks_that_pass_create_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert check_output_file(tmp_path / "new.csv", "--csv") == tmp_path / "new.csv"
    check_output_file(tmp_path / "a" / "b" / "x.png", "--out", create_parent=True)
    check_output_dir(tmp_path / "c" / "d", "--out", create=True)
    check_output_dir(tmp_path, "--out")
    with pytest.raises(OutputError, match=f"--out {tmp_path / 'notes.txt' / 'e'}: {tmp_path / 'notes.txt'} is not"):
        check_output_dir(tmp_path / "notes.txt" / "e", "--out", create=True)
    assert os.listdir(tmp_path) == ["notes.txt"]  # no folder made, no probe file left


@pytest.mark.parametrize("mask", [0o027, 0o002])
def test_files_and_folders_follow_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        folder = make_output_dir(tmp_path / "a" / "b")
        atomic_write_text("x", folder / "f.txt")
    finally:
        os.umask(previous)
    assert (folder / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert folder.stat().st_mode & 0o777 == 0o777 & ~mask


def test_make_output_dir_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match=r"--out .*notes.txt: is a file, not a folder"):
        make_output_dir(tmp_path / "notes.txt", "--out")
    with pytest.raises(OutputError, match=r"notes.txt is not a folder \(ENOTDIR while creating the folder\)"):
        make_output_dir(tmp_path / "notes.txt" / "sub", "--out")


KILLED_WRITER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from data_preprocessing import outputs
def write_then_die(handle):
    handle.write(b"x" * 100000)
    handle.flush()
    os._exit(9)
outputs.atomic_write(sys.argv[2], write_then_die)
"""


@pytest.mark.slow  # a writer killed in a subprocess
def test_stale_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "last.pth"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(ROOT), str(target)], timeout=60)
    assert killed.returncode == 9
    (leftover,) = [p for p in tmp_path.iterdir()]
    kept = ["last.pth", ".last.pth.tmp", "last.pth.abcdef12.tmp", ".last.pth.ABCDEF12.tmp",
            ".last.pth.abcdef12.tmp.keep", ".last.pth.abcdef1.tmp", "notes.txt"]
    for name in kept:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".other.pth.0123abcd.tmp").mkdir()  # a folder is never ours
    other = tmp_path / ".best.pth.0123abcd.tmp"
    other.write_text("stale")
    assert remove_stale_temporaries(tmp_path, "last.pth") == [leftover]
    assert other.exists()
    assert remove_stale_temporaries(tmp_path) == [other]
    assert sorted(os.listdir(tmp_path)) == sorted(kept + [".other.pth.0123abcd.tmp"])
    assert remove_stale_temporaries(tmp_path / "missing") == []


# ------------------------------------------------------------------------------ every command, for real

# Runs each case in one interpreter (imports cost seconds): `[label, code]` pairs; `code` may set
# `rc`; stderr is captured; an exception is recorded by type and message.
RUNNER = textwrap.dedent("""
    import contextlib, io, json, resource, sys, traceback
    sys.path.insert(0, {root!r})
    results = {{}}
    for label, limit, code in json.loads(sys.argv[1]):
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        stderr, scope = io.StringIO(), {{}}
        try:
            if limit:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
            with contextlib.redirect_stderr(stderr):
                exec(code, scope)
            error = None
        except BaseException as exc:
            error = type(exc).__name__ + ": " + str(exc) + "\\n" + traceback.format_exc()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        results[label] = {{"rc": scope.get("rc"), "stderr": stderr.getvalue(), "error": error}}
    print(json.dumps(results))
""").format(root=str(ROOT))


def run_cases(cases, prefix=()):
    """Run `[(label, file-size limit in bytes or None, code)]` in one subprocess; `{label: result}`."""
    payload = json.dumps([list(case) for case in cases])
    done = subprocess.run([*prefix, sys.executable, "-c", RUNNER, payload], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, f"runner died with {done.returncode}:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main_call(module, *argv):
    return f"import {module} as m\nrc = m.main({[str(a) for a in argv]!r})"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny untrained QCS checkpoint in this project's format, 32 px, 7 classes."""
    torch.manual_seed(0)
    model = build_model("qcs", 7, size="tiny").eval()
    path = tmp_path_factory.mktemp("checkpoint") / "qcs.pth"
    return save_checkpoint(path, model, [f"c{i}" for i in range(7)], dataset="demo", image_size=32, size="tiny",
                           augmentation={"kind": "A"})


@pytest.fixture
def read_only(tmp_path):
    """An empty folder with mode 0555 (made writable again for the clean-up)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.slow  # every command in a capability-dropped subprocess
def test_every_command_refuses_a_read_only_destination_before_working(tmp_path, read_only, tiny_checkpoint):
    prefix = unprivileged_prefix()
    image = tmp_path / "face.png"
    Image.new("RGB", (32, 32), (90, 60, 30)).save(image)
    raw = tmp_path / "list.txt"
    raw.write_text(RAF_LIST)
    ro = read_only
    tools = "utils.tools.cli"
    cases = {
        "check_output_file": f"from data_preprocessing.outputs import check_output_file\n"
                             f"check_output_file({str(ro / 'x.csv')!r}, '--csv')",
        "atomic_write": f"from data_preprocessing.outputs import atomic_write_text\n"
                        f"atomic_write_text('x', {str(ro / 'x.csv')!r}, flag='--csv')",
        "predict": main_call(tools, "predict", "--checkpoint", tiny_checkpoint, "--csv", ro / "p.csv", image),
        "heatmaps": main_call(tools, "heatmaps", "--checkpoint", tiny_checkpoint, "--dataset", "demo",
                              "--data-root", tmp_path / "no-demo", "--out", ro / "h.png"),
        "export": main_call(tools, "export", "--checkpoint", tiny_checkpoint, "--out", ro / "exported"),
        "prepare": main_call("data_preprocessing.prepare_rafdb", "--list", raw, "--out", ro / "raf"),
        "demo": main_call("data_preprocessing.demo", "--out", ro / "demo", "--train-per-class", 1),
        "compare": main_call("utils.tools.compare", "--out", ro / "compare"),
    }
    results = run_cases([(label, None, code) for label, code in cases.items()], prefix)
    expected_path = {"check_output_file": ro / "x.csv", "atomic_write": ro / "x.csv", "predict": ro / "p.csv",
                     "heatmaps": ro / "h.png", "export": ro / "exported", "prepare": ro / "raf",
                     "demo": ro / "demo", "compare": ro / "compare"}
    for label, result in results.items():
        if label in ("check_output_file", "atomic_write"):
            assert result["error"].startswith(f"OutputError: --csv {ro / 'x.csv'}: "), result
            assert "permission denied" in result["error"].splitlines()[0]
            continue
        assert result["error"] is None and result["rc"] == 2, (label, result)
        message = one_error_line(result["stderr"])
        assert str(expected_path[label]) in message and "permission denied" in message, (label, message)
    assert os.listdir(ro) == [] and not (tmp_path / "no-demo").exists()


@pytest.mark.slow  # commands in a file-size-limited subprocess
def test_a_full_disk_is_one_line_and_leaves_the_old_files(tmp_path):
    checkpoint = tmp_path / "last.pth"
    torch.save({"epoch": 1}, checkpoint)
    save = (f"import torch\nfrom utils.training_state import atomic_save\n"
            f"atomic_save({{'model': torch.zeros(2 ** 20)}}, {str(checkpoint)!r})")  # 4 MB, over a 1 MB limit
    demo_out = tmp_path / "demo"
    raw = tmp_path / "list.txt"
    raw.write_text(RAF_LIST)
    results = run_cases([
        ("checkpoint", 2 ** 20, save),
        ("demo", 8192, main_call("data_preprocessing.demo", "--out", demo_out, "--train-per-class", 1,
                                 "--test-per-class", 1)),
        ("prepare", 10, main_call("data_preprocessing.prepare_rafdb", "--list", raw, "--out", tmp_path / "raf")),
    ])
    cause = "file too large for the limit set on this process (ulimit -f) (EFBIG while"
    first_line = results["checkpoint"]["error"].splitlines()[0]
    assert first_line.startswith(f"OutputError: {checkpoint}: {cause} writing)"), results["checkpoint"]
    assert torch.load(checkpoint) == {"epoch": 1}
    for label in ("demo", "prepare"):
        assert results[label]["rc"] == 2, results[label]
        assert cause in one_error_line(results[label]["stderr"])
    assert sorted(os.listdir(demo_out)) == [".demo.lock"]  # the partial folder was removed
    assert temporaries(tmp_path) == []


@pytest.mark.slow  # torch.export of the tiny model, in a subprocess
def test_export_on_a_full_disk_exits_with_one_line_instead_of_aborting(tmp_path, tiny_checkpoint):
    out = tmp_path / "exported"
    results = run_cases([("export", 256 * 1024, main_call("utils.tools.cli", "export", "--checkpoint",
                                                          tiny_checkpoint, "--out", out, "--format", "export"))])
    assert results["export"]["rc"] == 2, results["export"]
    message = one_error_line(results["export"]["stderr"])
    assert message.startswith(f"--out {out / 'model_exported.pt2'}: file too large")
    assert not out.exists()  # the folder it created is removed again
