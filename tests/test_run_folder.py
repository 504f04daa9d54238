"""Run folders never lose work: resume rules, one writer per run folder, failed starts, data errors
and the small edges of the training and evaluation commands. (Checkpoint contents: test_checkpoint.py.)"""
import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

import utils.data
import utils.engine
import utils.evaluation
import utils.runtime
import utils.train
from helpers import ROOT, folder_dataset, tiny_training_args
from helpers import tiny_eval_args as eval_options
from utils.checkpoint import read_checkpoint
from utils.train import main


def snapshot(folder):
    """Every file of a folder (the lock file aside) with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


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


# ------------------------------------------------------------------ no writes through links, no user folder lost

@pytest.mark.parametrize("name", [".lock", "log.txt"])
def test_a_link_inside_a_run_folder_is_never_written_through(trained_run_copy, tmp_path, name, capsys):
    run, users_file = trained_run_copy, tmp_path / "notes.txt"
    users_file.write_text("mine\n")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(users_file)
    assert main("qcs", ["--resume", str(run / "last.pth"), "--epochs", "2"]) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"{run / name}: is a symbolic link (to {users_file})" in lines[0], lines
    assert users_file.read_text() == "mine\n"
    assert read_checkpoint(run / "last.pth")["epoch"] == 1


def failing_start(monkeypatch):
    def broken(*args, **kwargs):
        raise utils.train.DataError("img/x.png: cannot identify image file")

    monkeypatch.setattr(utils.train, "train_one_epoch", broken)


def test_a_failed_start_keeps_a_users_empty_output_dir(folder_data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "mine"
    run.mkdir()
    failing_start(monkeypatch)
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(run))) == 2
    assert f"emptied the run folder {run}" in capsys.readouterr().out
    assert run.is_dir() and list(run.iterdir()) == []
    monkeypatch.undo()
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(run))) == 0


def test_a_failed_start_in_a_linked_output_dir_leaves_nothing_that_blocks_a_rerun(folder_data, tmp_path,
                                                                                 monkeypatch, capsys):
    target, link = tmp_path / "disk" / "run", tmp_path / "run"
    target.mkdir(parents=True)
    link.symlink_to(target)
    failing_start(monkeypatch)
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(link))) == 2
    assert "emptied the run folder" in capsys.readouterr().out
    assert link.is_symlink() and target.is_dir() and list(target.iterdir()) == []
    monkeypatch.undo()
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(link))) == 0


# ------------------------------------------------------------------ stop signals and stuck loaders

def wait_for_step(process, run, step, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if (run / "log.txt").is_file() and f"step {step}/" in (run / "log.txt").read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} never logged")


@pytest.mark.slow
def test_sighup_stops_like_sigterm(tmp_path):
    data = folder_dataset(tmp_path / "data", train_per_class=12)
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(ROOT / "main_DCS.py"),
                                *tiny_training_args(data, "--epochs", "50", "--print-freq", "1",
                                                    "--output-dir", str(run))],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(process, run, 2)
    process.send_signal(signal.SIGHUP)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130 and "SIGHUP: finishing this step" in output, output[-2000:]
    assert read_checkpoint(run / "last.pth")["step"] >= 2


@pytest.mark.slow
def test_a_stuck_data_loader_worker_cannot_keep_sigterm_from_stopping_the_run(tmp_path):
    data = folder_dataset(tmp_path / "data", train_per_class=12)
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(ROOT / "main_DCS.py"),
                                *tiny_training_args(data, "--epochs", "50", "--print-freq", "1",
                                                    "--output-dir", str(run)), "--workers", "1"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(process, run, 2)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no DataLoader worker found"
    for pid in workers:
        os.kill(int(pid), signal.SIGSTOP)  # a worker that never delivers its batch
    try:
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    assert process.returncode == 130, output[-2000:]
    assert "interrupted: SIGTERM again: stopped at once" in output and "Traceback" not in output


@pytest.mark.slow
def test_the_grace_time_after_a_stop_signal_ends_a_step_that_hangs(monkeypatch):
    monkeypatch.setattr(utils.runtime, "MIN_STOP_GRACE_S", 1)
    control = utils.runtime.RunControl(0, torch.device("cpu"))
    with pytest.raises(utils.runtime.StopTimeout, match="did not end within 1 s"):
        with utils.runtime.signals_handled_by(control):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # a step that never ends
    assert signal.getsignal(signal.SIGTERM) is not control  # handlers restored


@pytest.mark.slow
def test_a_step_that_ends_in_time_after_a_stop_signal_is_saved_not_cut(monkeypatch):
    monkeypatch.setattr(utils.runtime, "MIN_STOP_GRACE_S", 1)
    control = utils.runtime.RunControl(0, torch.device("cpu"))
    with utils.runtime.signals_handled_by(control):
        os.kill(os.getpid(), signal.SIGTERM)
        assert control.decide() == (True, False)  # the step ended: the alarm is off
        time.sleep(1.5)  # the save that follows is not cut short


@pytest.mark.slow
def test_too_few_open_files_for_the_workers_is_one_line_within_seconds(folder_data, tmp_path):
    command = " ".join([sys.executable, str(ROOT / "main_QCS.py"),
                        *tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(tmp_path / "r")),
                        "--workers", "2"])
    started = time.time()
    result = subprocess.run(["bash", "-c", f"ulimit -n 20; exec {command}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in out, out[-2000:]
    assert "--workers 2: this process may open only 20 files (ulimit -n)" in out
    assert time.time() - started < 60 and not (tmp_path / "r").exists()


def test_workers_beyond_the_bound_are_refused(folder_data, tmp_path, capsys):
    assert main("qcs", tiny_training_args(folder_data, "--workers", "10000", "--output-dir", str(tmp_path / "r"))) == 2
    assert "--workers must be at least 0 and at most 64, got 10000" in capsys.readouterr().out


@pytest.mark.slow
def test_a_closed_stdout_ends_quietly(folder_data, tmp_path):
    command = " ".join([sys.executable, str(ROOT / "main_DCS.py"),
                        *tiny_training_args(folder_data, "--epochs", "2", "--print-freq", "1",
                                            "--output-dir", str(tmp_path / "r"))])
    result = subprocess.run(["bash", "-c", f"{command} | head -1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.stderr == "" and len(result.stdout.splitlines()) == 1
    assert "done: best test accuracy" in (tmp_path / "r" / "log.txt").read_text()


def test_the_log_takes_file_names_that_are_not_utf8(tmp_path):
    from utils.reporting import make_logger

    name = os.fsdecode(b"caf\xe9.jpg")
    make_logger(tmp_path).info(f"cannot read {name}")
    assert (tmp_path / "log.txt").read_text(encoding="utf-8").endswith("cannot read caf\\xe9.jpg\n")


# ------------------------------------------------------------------ the last small edges

def test_out_of_memory_at_the_first_step_says_what_to_lower(folder_data, tmp_path, monkeypatch, capsys):
    def allocating_too_much(model, images):
        return torch.empty(2 ** 44)  # 64 TiB: the allocator refuses it at once

    monkeypatch.setattr(utils.engine, "model_outputs", allocating_too_much)
    assert main("qcs", tiny_training_args(folder_data, "--output-dir", str(tmp_path / "r"))) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if "error:" in line]
    assert len(lines) == 1 and "out of memory on cpu training with -b 4 at 32 px" in lines[0], lines
    assert "(an allocation of 65536.0 GiB failed); lower -b/--batch-size" in lines[0]
    assert not (tmp_path / "r").exists()


def test_an_unknown_compile_backend_is_one_line(folder_data, tmp_path, capsys):
    argv = tiny_training_args(folder_data, "--compile", "--compile-backend", "nope", "--output-dir", str(tmp_path))
    assert main("qcs", argv) == 2
    out = capsys.readouterr().out
    assert "--compile-backend 'nope' is not a torch.compile backend here; choose one of" in out and "inductor" in out


@pytest.mark.slow
def test_resuming_a_replayed_run_does_not_claim_the_replays_options(trained_run, folder_data, tmp_path, capsys):
    run = tmp_path / "replayed"
    assert main("qcs", ["--config", str(trained_run / "config.json"), "--seed", "3", "--output-dir", str(run)]) == 0
    assert "except those given on the command line: --seed" in capsys.readouterr().out
    assert main("qcs", ["--resume", str(run / "last.pth"), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "settings replayed from" not in out and "resumed" in out


def test_tensorboard_says_where_its_event_files_go(folder_data, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    assert main("dcs", tiny_training_args(folder_data, "--epochs", "1", "--tensorboard", "--output-dir", str(run))) == 0
    assert f"TensorBoard event files go into {run / 'tensorboard'} (view them with: tensorboard --logdir {run})" \
        in capsys.readouterr().out
    assert list((run / "tensorboard").iterdir())


@pytest.mark.slow  # evaluation in a capability-dropped subprocess
def test_evaluate_in_a_read_only_run_folder_prints_the_result_and_succeeds(trained_run_copy, folder_data):
    from helpers import unprivileged_prefix

    prefix, run = unprivileged_prefix(), trained_run_copy
    run.chmod(0o555)
    try:
        result = subprocess.run([*prefix, sys.executable, str(ROOT / "main_QCS.py"),
                                 *eval_options(folder_data, "--evaluate", str(run / "best.pth"))],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        run.chmod(0o755)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in out, out[-2000:]
    assert "test accuracy" in out and "confusion matrix figure not written" in out and "permission denied" in out


def test_predictions_name_images_whose_names_are_not_utf8(trained_run, tmp_path, capsys):
    import csv
    import json

    data = folder_dataset(tmp_path / "data")
    image = next((data / "test" / "joy").iterdir())
    os.rename(image, os.fsencode(image.parent) + b"/caf\xe9.png")
    predictions = tmp_path / "pred.csv"
    assert main("qcs", eval_options(data, "--evaluate", str(trained_run / "best.pth"),
                                    "--predictions", str(predictions))) == 0
    names = [row[0] for row in csv.reader(open(predictions, encoding="utf-8"))][1:]
    assert "joy/caf\\xe9.png" in names and len(names) == 6
    assert json.loads(predictions.with_suffix(".json").read_text())["images"] == 6
