"""A run folder survives a stop at any moment: whatever ends a run (a kill, a full disk, a failing
figure, an unreadable test image), rerunning it, with `--resume` when it saved an epoch or else
the same command, ends with the metrics.csv of a run that was never stopped."""
import csv
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import utils.reporting
import utils.train
from helpers import ROOT, folder_dataset, tiny_training_args, tmpfs
from utils.checkpoint import read_checkpoint
from utils.train import main


class Stop(BaseException):
    """What a kill does to the run, in process: nothing after it runs (not even the failed-start cleanup)."""


@pytest.fixture
def one_thread():
    """One torch thread: fast on a loaded machine, and the same sums in every run of the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return folder_dataset(tmp_path_factory.mktemp("stops") / "data", train_per_class=2, test_per_class=1,
                          side=16)


def command(data, run, *extra):
    """Two epochs of the smallest model: a baseline at 16 px, each epoch a new best."""
    return tiny_training_args(data, "--baseline", "--image-size", "16", "--epochs", "2", "--save-every", "0",
                              "--output-dir", str(run), *extra)


def metrics(run):
    """metrics.csv without its only column that may differ between runs, the measured epoch time."""
    with open(run / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in csv.DictReader(handle)]


def rerun(data, run):
    """What the user does after a stop: continue from last.pth if there is one, else the same command."""
    last = run / "last.pth"
    return main("qcs", ["--resume", str(last)] if last.exists() else command(data, run))


class WriteCounter:
    """Counts the files the run writes into `run` (every write ends with the rename of `atomic_write`)
    and, from write number `stop_at`, fails the rename: with `Stop` (a kill) or `error`."""

    def __init__(self, run, stop_at=None, error=None):
        self.run, self.stop_at, self.error, self.names = run, stop_at, error, []
        self.real_replace = os.replace

    def __call__(self, source, destination, **kwargs):
        if Path(destination).parent == self.run:
            if len(self.names) + 1 == self.stop_at:
                raise self.error if self.error else Stop(Path(destination).name)
            self.names.append(Path(destination).name)
        self.real_replace(source, destination, **kwargs)


def run_counting(monkeypatch, data, run, stop_at=None, error=None):
    counter = WriteCounter(run, stop_at, error)
    monkeypatch.setattr(os, "replace", counter)
    if error is None:  # a kill runs no cleanup
        monkeypatch.setattr(utils.train, "discard_failed_start", lambda *args: None)
    try:
        return main("qcs", command(data, run)), counter.names
    finally:
        monkeypatch.undo()


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run: its metrics, the names of its writes in order, and its figures."""
    run = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, names = run_counting(monkeypatch, data, run)
    torch.set_num_threads(threads)
    assert code == 0
    return metrics(run), names, figures(run)


def figures(run):
    return {name: (run / name).read_bytes() for name in ("losses.png", "confusion_best.png")}


def test_the_epoch_end_commits_with_last_pth_then_writes_what_derives_from_it(reference):
    rows, names, _ = reference
    epoch_end = ["last.pth", "best.pth", "metrics.csv", "confusion_best.png", "losses.png"]
    assert names == ["config.json", *epoch_end, *epoch_end]
    assert [row["epoch"] for row in rows] == ["1", "2"] and rows[0]["best_acc"] < rows[1]["best_acc"]


# One case for each write of the run: stopped just before it (so just after the one before).
@pytest.mark.parametrize("stop_at", range(1, 12))
def test_a_stop_before_any_write_is_rerun_to_the_same_metrics(stop_at, reference, data, tmp_path,
                                                              monkeypatch, one_thread):
    rows, names, drawn = reference
    run = tmp_path / "run"
    with pytest.raises(Stop, match=names[stop_at - 1]):
        run_counting(monkeypatch, data, run, stop_at)
    assert run.is_dir()
    assert rerun(data, run) == 0
    assert metrics(run) == rows and figures(run) == drawn
    assert read_checkpoint(run / "best.pth")["best_epoch"] == 2


def test_a_write_error_after_last_pth_keeps_the_folder_and_says_how_to_go_on(reference, data, tmp_path,
                                                                             monkeypatch, one_thread, capsys):
    rows, names, _ = reference
    run = tmp_path / "run"
    full = OSError(errno.ENOSPC, "No space left on device", str(run / "best.pth"))
    assert run_counting(monkeypatch, data, run, names.index("best.pth") + 1, full)[0] == 2
    error = [line for line in capsys.readouterr().out.splitlines() if "error:" in line]
    assert error == [error[0]] and f"{run / 'best.pth'}: no space left on device" in error[0]
    assert f"epoch 1 is saved in {run / 'last.pth'}; resume with --resume {run / 'last.pth'}" in error[0]
    assert main("qcs", command(data, run)) == 2  # the same command names the resume
    assert f"continue that run with --resume {run / 'last.pth'}" in capsys.readouterr().out
    assert rerun(data, run) == 0
    assert metrics(run) == rows


def test_a_write_error_at_the_first_last_pth_removes_the_folder_it_made(reference, data, tmp_path, monkeypatch,
                                                                        one_thread, capsys):
    run = tmp_path / "run"
    full = OSError(errno.ENOSPC, "No space left on device", str(run / "last.pth"))
    assert run_counting(monkeypatch, data, run, 2, full)[0] == 2
    out = capsys.readouterr().out
    assert "(no checkpoint had been saved yet)" in out and "nothing had been saved in it" in out
    assert not run.exists()


def test_a_figure_that_fails_is_a_warning_and_the_rerun_draws_it(reference, data, tmp_path, monkeypatch,
                                                                  one_thread, capsys):
    rows, *_ = reference
    run = tmp_path / "run"

    def broken(*args):
        raise TypeError("can't draw this")

    monkeypatch.setattr(utils.reporting, "plot_losses", broken)
    assert main("qcs", command(data, run, "--epochs", "1")) == 0
    assert "warning: losses.png not written (TypeError: can't draw this); the numbers it shows are in " \
           "metrics.csv" in capsys.readouterr().out
    assert not (run / "losses.png").exists() and metrics(run) == rows[:1]
    monkeypatch.undo()
    assert main("qcs", ["--resume", str(run / "last.pth"), "--epochs", "1"]) == 0  # only the figure is left
    assert "end of epoch 1 had left unwritten: losses.png" in capsys.readouterr().out
    assert (run / "losses.png").stat().st_size and metrics(run) == rows[:1]


def test_a_class_folder_whose_name_is_not_utf8_is_drawn(data, tmp_path, one_thread, capsys):
    odd = tmp_path / "data"
    shutil.copytree(data, odd)
    for split in ("train", "test"):
        os.rename(odd / split / "rage", odd / split / os.fsdecode(b"r\xe4ge"))
    run = tmp_path / "run"
    assert main("qcs", command(odd, run, "--epochs", "1")) == 0
    assert "warning" not in capsys.readouterr().out
    assert (run / "confusion_best.png").stat().st_size


def test_a_text_file_named_jpg_in_the_test_split_keeps_the_trained_epoch(reference, data, tmp_path, one_thread,
                                                                          capsys):
    rows, *_ = reference
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    text = broken / "test" / "joy" / "notes.jpg"
    text.write_text("not an image\n")
    run = tmp_path / "run"
    assert main("qcs", command(broken, run)) == 2
    out = capsys.readouterr().out
    assert f"cannot read image {text} (listed in {broken / 'test'}): not an image file" in out
    assert f"(progress saved; resume with --resume {run / 'last.pth'} once the data is fixed)" in out
    saved = read_checkpoint(run / "last.pth")
    assert (saved["epoch"], saved["step"]) == (0, 2)  # both steps of the first epoch
    text.unlink()
    assert main("qcs", ["--resume", str(run / "last.pth")]) == 0
    assert [row["epoch"] for row in metrics(run)] == ["1", "2"]


def test_a_folder_with_a_file_of_the_users_is_not_restarted(data, tmp_path, monkeypatch, one_thread, capsys):
    run = tmp_path / "run"
    with pytest.raises(Stop):
        run_counting(monkeypatch, data, run, stop_at=2)  # killed before its first last.pth
    (run / "notes.txt").write_text("mine\n")
    assert main("qcs", command(data, run)) == 2
    assert "already holds files of another run; choose a new folder" in capsys.readouterr().out
    assert (run / "notes.txt").read_text() == "mine\n"


# ------------------------------------------------------------------ real kills, a real full disk

KILLED = """
import os, signal, sys
import torch
import utils.training_state
torch.set_num_threads(1)
real_save = utils.training_state.atomic_save
def save_then_die(obj, path):
    if path.name == {before!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, path)
utils.training_state.atomic_save = save_then_die
from utils.train import main
sys.exit(main("qcs", sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("before", ["last.pth", "best.pth"])
def test_a_sigkill_at_the_first_epoch_end_is_rerun_to_the_same_metrics(before, reference, data, tmp_path,
                                                                       one_thread, capsys):
    rows, *_ = reference
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED.format(before=before), *command(data, run)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert (run / "last.pth").exists() == (before == "best.pth")
    assert rerun(data, run) == 0
    out = capsys.readouterr().out
    if before == "last.pth":
        assert f"took the run folder {run} again" in out
    else:
        assert "end of epoch 1 had left unwritten: best.pth, metrics.csv, confusion_best.png, losses.png" in out
    assert metrics(run) == rows


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 1 MiB, remountable to another size (root only; skipped where mounting is not allowed)."""
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        yield disk


def test_a_disk_full_after_last_pth_keeps_the_folder_and_resumes_to_the_same_metrics(reference, data, tmp_path,
                                                                                      small_disk, one_thread,
                                                                                      capsys):
    rows, *_ = reference
    run = small_disk / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        with pytest.raises(Stop):  # to learn the size of last.pth
            run_counting(monkeypatch, data, tmp_path / "probe", stop_at=3)
    room = (tmp_path / "probe" / "last.pth").stat().st_size + 64 * 1024  # for last.pth, not best.pth
    subprocess.run(["mount", "-o", f"remount,size={room}", str(small_disk)], check=True)
    assert main("qcs", command(data, run)) == 2
    error = [line for line in capsys.readouterr().out.splitlines() if "error:" in line][0]
    assert f"{run / 'best.pth'}: no space left on device (ENOSPC" in error
    assert f"epoch 1 is saved in {run / 'last.pth'}; resume with --resume {run / 'last.pth'}" in error
    assert read_checkpoint(run / "last.pth")["epoch"] == 1
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert rerun(data, run) == 0
    assert metrics(run) == rows
