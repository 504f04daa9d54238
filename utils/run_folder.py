"""Run folders: created atomically, written by one process at a time, continued only from their
newest state, removed again when a start fails before anything was trained.

A stop at any moment leaves a folder that resumes: each epoch end writes `last.pth` first (it
commits the epoch), then the files derived from it (`AFTER_LAST`), which a resume writes again
when a stop kept them from being written. A folder whose run was killed before its first
`last.pth` holds nothing trained, and the same command takes it again."""
import contextlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

from data_preprocessing.outputs import (
    CreatedPaths,
    OutputError,
    atomic_write_text,
    open_for_append,
    output_errors,
    remove_stale_temporaries,
)

from . import distributed as ddp
from .config import UsageError
from .resume import read_resume_checkpoint

RUN_MARKER = "config.json"  # every run folder holds its resolved configuration
LAST = "last.pth"
LOCK_NAME = ".lock"
# written after last.pth at each epoch end, in this order (best.pth and the confusion figure on a new best)
AFTER_LAST = ("best.pth", "metrics.csv", "confusion_best.png", "losses.png")
BEST_ONLY = ("best.pth", "confusion_best.png")
# all a run leaves before its first last.pth (besides temporaries): a killed one of them is taken again
BEFORE_FIRST_EPOCH = frozenset({RUN_MARKER, "log.txt", LOCK_NAME, "tensorboard"})


class Taken(str, Enum):
    """How a new run took its folder: MADE it, EMPTIED it (a folder the user had made empty), or
    RESTARTED it (the folder of a run killed before it saved an epoch; see `restartable`)."""
    MADE = "made"
    EMPTIED = "emptied"
    RESTARTED = "restarted"


@dataclass(frozen=True)
class NewFolder:
    """The folder a new run took: how (`Taken`), and the folders above it made for it (outermost
    first). A failed start removes what it made, or empties that folder again."""
    taken: Taken
    parents: tuple = ()


try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock (documented in the README)
    fcntl = None


class RunFolderLocks:
    """The run-folder locks this process holds (folder → its open lock file), each from `take` until
    `release` or the end of the process (the OS drops it when the process dies). The run's `main`
    owns them and releases them when it ends."""

    def __init__(self):
        self.held = {}

    def take(self, run_dir):
        """Lock `run_dir` (once; see `lock_run_dir`), then remove the temporaries only a killed
        writer of this folder can have left."""
        if fcntl is None or run_dir in self.held:
            return
        self.held[run_dir] = lock_run_dir(run_dir)
        remove_stale_temporaries(run_dir)

    def release(self):
        release_run_dirs(*self.held.values())
        self.held.clear()


def lock_run_dir(run_dir):
    """The folder's open lock file, holding its exclusive lock; refuse, naming the holder's pid,
    when another process holds it."""
    handle = open_for_append(Path(run_dir) / LOCK_NAME)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise UsageError(f"{run_dir} is in use by another process (pid {holder}); wait for it to "
                         "end, or choose another folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def release_run_dirs(*locks):
    """Drop the given run-folder locks (`lock_run_dir`'s files)."""
    for handle in locks:
        handle.close()


def create_run_dir(output_dir, run_name, locks):
    """Create and lock (into `locks`) a new run folder: `output_dir` (new, or empty) or
    `log/<run_name>-<time>`. Returns `(folder, NewFolder)`.

    Creation and locking leave no window in which two runs could both take the same folder.
    """
    if output_dir is None:
        return _create_timestamped(Path("log"), run_name, locks), NewFolder(Taken.MADE)
    output_dir = Path(output_dir)
    with output_errors(output_dir, "--output-dir", "checking it"):
        if output_dir.exists() and not output_dir.is_dir():
            raise OutputError(f"--output-dir {output_dir} is a file, not a folder")
    taken = Taken.MADE
    with CreatedPaths() as parents:  # a folder that cannot be made leaves no parents behind
        parents.make_dir(output_dir.parent, "--output-dir")
        try:
            with output_errors(output_dir, "--output-dir", "creating the folder"):
                output_dir.mkdir()
        except FileExistsError:  # an empty folder may be reused; it is checked once locked
            taken = Taken.EMPTIED
        made_parents = tuple(parents.folders)
        parents.keep()
    had_lock_file = (output_dir / LOCK_NAME).exists()
    locks.take(output_dir)
    held = [p for p in output_dir.iterdir() if p.name != LOCK_NAME]
    if held and restartable(output_dir, held):
        shutil.rmtree(output_dir / "tensorboard", ignore_errors=True)  # its events start again
        return output_dir, NewFolder(Taken.RESTARTED)
    if held:
        locks.release()
        if not had_lock_file:  # leave another run's folder as it was
            (output_dir / LOCK_NAME).unlink(missing_ok=True)
        last = output_dir / LAST
        hint = f", or continue that run with --resume {last}" if last.is_file() else ""
        raise FileExistsError(f"--output-dir {output_dir} already holds files of another run; "
                              f"choose a new folder{hint}")
    return output_dir, NewFolder(taken, made_parents)


def restartable(folder, entries):
    """Whether `entries` (of the locked `folder`) are what a run killed before its first epoch
    ended leaves: its `config.json`, its log, TensorBoard's folder, nothing else and no `last.pth`."""
    names = {entry.name for entry in entries}
    return RUN_MARKER in names and names <= BEFORE_FIRST_EPOCH and (folder / RUN_MARKER).is_file() \
        and not (folder / "tensorboard").is_symlink()


def _create_timestamped(parent, run_name, locks):
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    with output_errors(parent, None, "creating the folder"):
        parent.mkdir(parents=True, exist_ok=True)
    for suffix in range(1000):
        folder = parent / (f"{run_name}-{stamp}" + (f"-{suffix}" if suffix else ""))
        try:
            with output_errors(folder, None, "creating the folder"):
                folder.mkdir()
        except FileExistsError:
            continue
        locks.take(folder)
        return folder
    raise OutputError(f"{parent}: no free run folder name for {run_name}-{stamp}")


def read_resume_source(settings, given):
    """`--resume`: the checkpoint's settings merged into `settings`, the checkpoint, and
    `(plan, folder, source stat)` for `prepare_run_dir` (see `resume_plan`)."""
    source = Path(settings.resume)
    if not source.is_file():
        raise FileNotFoundError(f"--resume {source}: no such file")
    source_stat = source.stat()  # taken before reading: a change while starting is noticed
    if source.name == LAST and "output_dir" not in given:  # a stopped epoch end is finished there
        settings, resumed = read_resume_checkpoint(settings, given, ended=lambda checkpoint: not unfinished_epoch_end(
            source.parent, checkpoint["best_epoch"] == checkpoint["epoch"]))
    else:
        settings, resumed = read_resume_checkpoint(settings, given)
    plan, folder = resume_plan(settings, resumed, given)
    if plan == "branch":
        settings.branched_from = str(source.resolve())
    return settings, resumed, (plan, folder, source_stat)


def resume_plan(settings, checkpoint, given):
    """Where a `--resume` continues: `("continue", folder)` in the folder whose newest state the
    checkpoint is, or `("branch", None)` into a new run folder (`--output-dir`). Anything else
    would rewrite a run's history and is refused, naming the newer state."""
    source = Path(settings.resume).resolve()
    folder = source.parent
    last = folder / LAST
    own_run = source == last and (folder / RUN_MARKER).is_file() and same_run(folder, checkpoint)
    if own_run and ("output_dir" not in given or Path(settings.output_dir).resolve() == folder):
        return "continue", folder
    if "output_dir" in given:
        return "branch", None
    if last.is_file() and source != last:
        problem = f"it is not the newest state of its run ({last} is); continue with --resume {last}, or"
    elif source == last and (folder / RUN_MARKER).is_file():
        problem = f"it belongs to another run than the one in {folder};"
    else:
        problem = f"{folder} is not a run folder (it has no {LAST} beside a {RUN_MARKER});"
    raise UsageError(f"--resume {settings.resume}: {problem} give --output-dir NEW to start a new run "
                     "folder from it")


def same_run(folder, checkpoint):
    """Whether the checkpoint was written by the run of `folder` (checkpoints without a run id,
    from before ids were recorded, are taken to be)."""
    saved_id = (checkpoint.get("run_config") or {}).get("run_id")
    try:
        folder_id = json.loads((folder / RUN_MARKER).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return False
    return saved_id is None or saved_id == folder_id


def prepare_run_dir(settings, locks, resume=None):
    """Rank 0 creates (or, to continue a run, locks) the run folder (into `locks`) and writes `config.json`;
    every rank learns its path. Returns `(folder, new_folder)`: a `NewFolder` for a folder this
    process took, None when it continues a run's own folder.

    `resume` is `(plan, folder, source_stat)` from `resume_plan` and the source's `os.stat`
    taken before it was read: a folder whose `last.pth` changed since then is refused.
    """
    run_dir, new_folder = None, None
    if ddp.is_main_process():
        if resume is not None and resume[0] == "continue":
            run_dir = resume[1]
            locks.take(run_dir)
            if _stat_key(os.stat(run_dir / LAST)) != _stat_key(resume[2]):
                locks.release()
                raise UsageError(f"{run_dir / LAST} changed while this run started (another process "
                                 "wrote it); resume again from its new state")
        else:
            run_dir, new_folder = create_run_dir(settings.output_dir, f"{settings.dataset}-{settings.arch}", locks)
            settings.run_id = uuid.uuid4().hex
        settings.output_dir = str(run_dir)
        atomic_write_text(json.dumps(settings.as_dict(), indent=2, default=str), run_dir / RUN_MARKER)
    return Path(ddp.broadcast_object(str(run_dir) if run_dir else None)), new_folder


def _stat_key(stat):
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def discard_failed_start(run_dir, new_folder, locks):
    """Undo a failed start when nothing was saved, so that it leaves nothing that blocks a rerun:
    remove a folder this process made (`Taken.MADE`) and the parents made for it, or empty again
    one it took (`Taken.EMPTIED` or `RESTARTED`; the folder, or the link to it, stays). Returns what
    was done, as words for the log ("removed", "emptied"), or None."""
    if not new_folder or not ddp.is_main_process() or (run_dir / LAST).exists():
        return None
    locks.release()
    with contextlib.suppress(OSError):
        for entry in run_dir.iterdir():  # all of it is this run's: the folder was new or empty
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if new_folder.taken == Taken.MADE and not run_dir.is_symlink():
            run_dir.rmdir()
            for parent in reversed(new_folder.parents):
                parent.rmdir()
            return "removed"
    return "emptied" if not any(run_dir.iterdir()) else None


def unfinished_epoch_end(folder, best_now):
    """The files of the epoch end `folder/last.pth` committed that a stop kept from being written:
    missing, or older than it (each is written after it). `best_now`: that epoch was a new best."""
    committed = os.stat(folder / LAST).st_mtime_ns
    names = [name for name in AFTER_LAST if best_now or name not in BEST_ONLY]
    return [name for name in names if not (folder / name).is_file()
            or os.stat(folder / name).st_mtime_ns < committed]
