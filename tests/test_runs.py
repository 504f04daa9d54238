"""Runs never lose work: resume rules, one writer per run folder, failed starts, data errors,
untrusted checkpoint contents and the small edges of the training and evaluation commands."""
import hashlib
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

import utils.data
import utils.evaluation
import utils.train
from helpers import ROOT, folder_dataset, tiny_training_args
from utils.checkpoint import read_checkpoint
from utils.train import main


def snapshot(folder):
    """Every file of a folder (the lock file aside) with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def eval_options(data, *extra):
    return ["--dataset", "folder", "--data-root", str(data), "--size", "tiny", "--image-size", "32",
            "--workers", "0", "-b", "4", *extra]


# ------------------------------------------------------------------ resume never rewrites history

def test_resume_from_best_is_refused_and_names_the_newer_last(trained_run_copy, capsys):
    run = trained_run_copy
    before = snapshot(run)
    assert main("qcs", ["--resume", str(run / "best.pth"), "--epochs", "2"]) == 2
    out = capsys.readouterr().out
    assert "not the newest state of its run" in out and f"--resume {run / 'last.pth'}" in out
    assert snapshot(run) == before


def test_resume_from_outside_a_run_folder_writes_nothing_there(trained_run, tmp_path, capsys):
    elsewhere = tmp_path / "kept"
    elsewhere.mkdir()
    shutil.copy(trained_run / "last.pth", elsewhere / "mine.pth")
    assert main("qcs", ["--resume", str(elsewhere / "mine.pth"), "--epochs", "2"]) == 2
    assert "is not a run folder" in capsys.readouterr().out
    assert sorted(p.name for p in elsewhere.iterdir()) == ["mine.pth"]


def test_resume_with_output_dir_branches_into_a_new_folder(trained_run_copy, tmp_path):
    run, branch = trained_run_copy, tmp_path / "branch"
    before = snapshot(run)
    assert main("qcs", ["--resume", str(run / "best.pth"), "--epochs", "2", "--output-dir", str(branch)]) == 0
    assert snapshot(run) == before
    assert read_checkpoint(branch / "last.pth")["epoch"] == 2
    config = (branch / "config.json").read_text()
    assert f'"branched_from": "{(run / "best.pth").resolve()}"' in config
    assert "into the new run folder" in (branch / "log.txt").read_text()


def test_another_runs_checkpoint_copied_into_a_run_folder_is_refused(trained_run, folder_data, tmp_path,
                                                                      capsys):
    other = tmp_path / "other"
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(other))) == 0
    shutil.copy(trained_run / "last.pth", other / "last.pth")  # the user's mistake
    config_before = (other / "config.json").read_bytes()
    assert main("qcs", ["--resume", str(other / "last.pth"), "--epochs", "2"]) == 2
    assert "belongs to another run" in capsys.readouterr().out
    assert (other / "config.json").read_bytes() == config_before
    assert len((other / "metrics.csv").read_text().splitlines()) == 2  # header + its own epoch


def test_resume_to_fewer_epochs_than_trained_is_refused(trained_run_copy, capsys):
    run = trained_run_copy
    before = snapshot(run)
    assert main("qcs", ["--resume", str(run / "last.pth"), "--epochs", "1"]) == 2
    assert "already trained 1 epochs; give --epochs above 1" in capsys.readouterr().out
    assert snapshot(run) == before


def test_a_moved_run_folder_still_resumes_in_place(trained_run_copy, tmp_path):
    moved = tmp_path / "moved"
    trained_run_copy.rename(moved)
    assert main("qcs", ["--resume", str(moved / "last.pth"), "--epochs", "2"]) == 0
    assert read_checkpoint(moved / "last.pth")["epoch"] == 2
    assert len((moved / "metrics.csv").read_text().splitlines()) == 3


# ------------------------------------------------------------------ one writer per run folder

HOLD_LOCK = """
import fcntl, os, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.seek(0); handle.truncate(); handle.write(f"{os.getpid()}\\n"); handle.flush()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def lock_holder():
    """Start a process holding a folder's lock, as a second run would; yields a starter."""
    processes = []

    def hold(folder):
        process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder / ".lock")],
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "locked"
        processes.append(process)
        return process.pid

    yield hold
    for process in processes:
        process.kill()
        process.wait()


def test_a_second_resume_of_a_running_folder_is_refused_with_the_holders_pid(trained_run_copy, lock_holder,
                                                                              capsys):
    run = trained_run_copy
    before = snapshot(run)
    pid = lock_holder(run)
    assert main("qcs", ["--resume", str(run / "last.pth"), "--epochs", "2"]) == 2
    assert f"in use by another process (pid {pid})" in capsys.readouterr().out
    assert snapshot(run) == before


def test_an_output_dir_another_process_holds_is_refused(folder_data, tmp_path, lock_holder, capsys):
    target = tmp_path / "target"
    target.mkdir()
    pid = lock_holder(target)
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(target))) == 2
    assert f"pid {pid}" in capsys.readouterr().out
    assert sorted(p.name for p in target.iterdir()) == [".lock"]


def test_the_lock_is_released_when_the_run_ends(trained_run_copy):
    import fcntl

    run = trained_run_copy
    assert main("qcs", ["--resume", str(run / "last.pth"), "--epochs", "2"]) == 0
    with open(run / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held


def test_stale_temporaries_of_a_killed_writer_are_removed_on_resume(trained_run_copy):
    run = trained_run_copy
    stale = run / ".last.pth.k1ll3d00.tmp"  # the random part of a temporary name has 8 characters
    stale.write_bytes(b"\0" * 1000)
    assert main("qcs", ["--resume", str(run / "last.pth"), "--epochs", "2"]) == 0
    assert not stale.exists() and (run / "last.pth").is_file()


# ------------------------------------------------------------------ failed starts and stops

def test_a_failed_start_leaves_no_folder_and_the_rerun_is_not_blocked(folder_data, tmp_path, monkeypatch,
                                                                     capsys):
    run = tmp_path / "run"

    def broken(*args, **kwargs):
        raise utils.train.DataError("img/x.png: cannot identify image file")

    monkeypatch.setattr(utils.train, "train_one_epoch", broken)
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(run))) == 2
    out = capsys.readouterr().out
    assert "no checkpoint had been saved yet" in out and "--resume" not in out
    assert not run.exists()
    monkeypatch.undo()
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(run))) == 0


def test_a_corrupt_image_mid_epoch_saves_the_progress_and_names_the_resume(tmp_path, monkeypatch, capsys):
    data = folder_dataset(tmp_path / "data", train_per_class=8)  # 24 anchors: 6 steps of 4
    run = tmp_path / "run"
    real_transforms, calls = utils.data.transforms_for, [0]

    def transforms_failing_in_step_3(config):
        train_tf, test_tf = real_transforms(config)

        def train_then_fail(image):
            calls[0] += 1
            if calls[0] > 2 * 4 * 4:  # QCS: 4 images per anchor, 4 anchors a step
                raise utils.train.DataError("train/joy/joy_3.png: image file is truncated")
            return train_tf(image)

        return train_then_fail, test_tf

    monkeypatch.setattr(utils.data, "transforms_for", transforms_failing_in_step_3)
    assert main("qcs", tiny_training_args(data, "--epochs", "1", "--save-every", "0",
                                          "--output-dir", str(run))) == 2
    out = capsys.readouterr().out
    assert f"progress saved; resume with --resume {run / 'last.pth'}" in out
    saved = read_checkpoint(run / "last.pth")
    assert (saved["epoch"], saved["step"]) == (0, 2)
    monkeypatch.undo()
    assert main("qcs", ["--resume", str(run / "last.pth")]) == 0
    assert read_checkpoint(run / "last.pth")["epoch"] == 1


def test_best_is_written_when_the_test_accuracy_stays_at_zero(folder_data, tmp_path, monkeypatch):
    def zero_accuracy(model, loader, device, num_classes, **kwargs):
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        confusion[0, 1] = 6
        return dict(confusion=confusion, acc=0.0, mean_class_acc=0.0, macro_f1=0.0)

    monkeypatch.setattr(utils.train, "evaluate", zero_accuracy)
    run = tmp_path / "run"
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(run))) == 0
    assert read_checkpoint(run / "best.pth")["best_epoch"] == 1


def test_ctrl_c_during_evaluate_is_one_line(trained_run, folder_data, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.evaluation, "evaluate", interrupted)
    assert main("qcs", eval_options(folder_data, "--evaluate", str(trained_run / "best.pth"))) == 130
    captured = capsys.readouterr()
    assert "interrupted" in captured.out and "Traceback" not in captured.out + captured.err


def test_checkpoints_follow_the_umask(trained_run):
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("last.pth", "best.pth", "config.json", "metrics.csv"):
        assert stat.S_IMODE((trained_run / name).stat().st_mode) == 0o666 & ~mask, name


# ------------------------------------------------------------------ options and data edges

def test_negative_seed_is_refused(folder_data, tmp_path, capsys):
    assert main("qcs", tiny_training_args(folder_data, "--seed", "-1", "--output-dir", str(tmp_path / "r"))) == 2
    assert "--seed must be at least 0" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("arch,extra", [("dcs", []), ("qcs", ["--baseline"])])
def test_a_one_class_folder_is_refused(arch, extra, tmp_path, capsys):
    data = tmp_path / "one"
    for split in ("train", "test"):
        shutil.copytree(folder_dataset(tmp_path / f"src-{split}") / split / "joy", data / split / "joy")
    assert main(arch, tiny_training_args(data, *extra, "--output-dir", str(tmp_path / "r"))) == 2
    assert "training a classifier needs at least 2" in capsys.readouterr().out


# ------------------------------------------------------------------ checkpoints are untrusted input

def rewritten(source, target, change):
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, target)
    return target


def test_a_resumed_config_with_batch_size_zero_is_refused(trained_run_copy, capsys):
    run = trained_run_copy
    rewritten(run / "last.pth", run / "last.pth", lambda c: c["run_config"].update(batch_size=0))
    assert main("qcs", ["--resume", str(run / "last.pth"), "--epochs", "2"]) == 2
    assert "saved settings are invalid: --batch-size must be at least 1" in capsys.readouterr().out


@pytest.mark.parametrize("change,expected", [
    (lambda c: c["run_config"].update(image_size=100000), "--image-size must be at least 16 and at most 1024"),
    (lambda c: c["run_config"].update(augmentation="B"), "augmentation must be a mapping"),
    (lambda c: c["run_config"].update(augmentation=dict(kind="B", resize=100000, rotation=10)),
     "augmentation {'kind': 'B', 'resize': 100000"),
    (lambda c: c["config"].update(size="huge"), "--size 'huge' is not one of"),
    (lambda c: c.update(classes=[1, 2, 3]), "saved class names are malformed"),
])
def test_malformed_saved_settings_are_one_line_errors(trained_run, folder_data, tmp_path, change, expected,
                                                      capsys):
    from utils.tools.cli import main as tools_main

    checkpoint = rewritten(trained_run / "best.pth", tmp_path / "bad.pth", change)
    assert main("qcs", eval_options(folder_data, "--evaluate", str(checkpoint))) == 2
    assert expected in capsys.readouterr().out
    assert tools_main(["inspect", str(checkpoint)]) == 2
    assert expected in capsys.readouterr().err


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_a_blocked_module_is_one_line_everywhere(trained_run, folder_data, tmp_path,
                                                                 capsys):
    from utils.tools.cli import main as tools_main

    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "evil.pth"
    torch.save({**torch.load(trained_run / "last.pth", weights_only=True),
                "extra": RunsAShellCommand(marker)}, checkpoint)
    commands = [("qcs", eval_options(folder_data, "--evaluate", str(checkpoint))),
                ("qcs", ["--resume", str(checkpoint), "--output-dir", str(tmp_path / "r")]),
                ("dcs", tiny_training_args(folder_data, "--pretrained", str(checkpoint),
                                           "--output-dir", str(tmp_path / "p")))]
    for arch, argv in commands:
        assert main(arch, argv) == 2
        lines = [line for line in capsys.readouterr().out.splitlines() if "error:" in line]
        assert len(lines) == 1 and "holds code references (posix.system)" in lines[0], lines
        assert "was not loaded" in lines[0] and "weights_only" not in lines[0]
    assert tools_main(["inspect", str(checkpoint)]) == 2
    assert "holds code references (posix.system)" in capsys.readouterr().err
    assert not marker.exists()


def test_inspect_lists_foreign_objects_in_our_format_too(trained_run, tmp_path, capsys):
    from utils.tools.cli import main as tools_main

    path = tmp_path / "annotated.pth"
    torch.save({**torch.load(trained_run / "last.pth", weights_only=True), "notes": [{"by": Note()}]}, path)
    assert tools_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "foreign pickled objects: " in out and "Note" in out.split("foreign pickled objects: ")[1]


class Note:
    """A class from outside the project, pickled into a checkpoint."""


# ------------------------------------------------------------------ full disk

@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_write_is_one_line(folder_data, tmp_path):
    run = tmp_path / "run"
    command = " ".join([sys.executable, str(ROOT / "main_QCS.py"),
                        *tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(run))])
    result = subprocess.run(["bash", "-c", f"ulimit -f 64; exec {command}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "file too large" in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert not run.exists()  # nothing was saved: the failed start is removed, temporaries with it


@pytest.mark.slow  # training in a capability-dropped subprocess
def test_an_unwritable_output_dir_is_one_line_before_training(folder_data, tmp_path):
    from helpers import unprivileged_prefix

    prefix = unprivileged_prefix()
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        command = [sys.executable, str(ROOT / "main_QCS.py"),
                   *tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(read_only / "run"))]
        result = subprocess.run([*prefix, *command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        read_only.chmod(0o755)
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in out, out
    assert f"--output-dir {read_only / 'run'}: permission denied" in out
    assert list(read_only.iterdir()) == []


def test_predictions_named_json_is_refused_before_the_work(trained_run, folder_data, tmp_path, capsys):
    target = tmp_path / "preds.json"
    assert main("qcs", eval_options(folder_data, "--evaluate", str(trained_run / "best.pth"),
                                    "--predictions", str(target))) == 2
    assert "give the CSV's name (e.g. " in capsys.readouterr().out and not target.exists()


def test_predictions_into_a_missing_folder_is_refused_before_the_work(trained_run, folder_data, tmp_path,
                                                                      monkeypatch, capsys):
    monkeypatch.setattr(utils.evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated anyway"))
    target = tmp_path / "missing" / "preds.csv"
    assert main("qcs", eval_options(folder_data, "--evaluate", str(trained_run / "best.pth"),
                                    "--predictions", str(target))) == 2
    assert f"--predictions {target}: folder {target.parent} does not exist" in capsys.readouterr().out


def test_an_output_dir_that_is_a_file_is_one_line(folder_data, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("a user's file")
    assert main("qcs", tiny_training_args(folder_data, "--output-dir", str(target))) == 2
    assert f"--output-dir {target} is a file, not a folder" in capsys.readouterr().out
    assert target.read_text() == "a user's file"


def test_a_refused_output_dir_is_left_exactly_as_it_was(folder_data, tmp_path, capsys):
    target = tmp_path / "papers"
    target.mkdir()
    (target / "draft.tex").write_text("a user's file")
    assert main("qcs", tiny_training_args(folder_data, "--output-dir", str(target))) == 2
    assert "already holds files of another run; choose a new folder" in capsys.readouterr().out
    assert sorted(p.name for p in target.iterdir()) == ["draft.tex"]  # no lock file left behind
