"""Every file the project writes goes through here: destinations are checked before the work,
existing outputs are refused, writes are atomic and a failed write is one plain sentence.

It is the lowest layer that writes files, so the data scripts, the training system and the
tools share it (nothing here knows about models or options beyond the flag names it is given).

- `check_output_file` / `check_output_dir`: before any work, the folder exists (or can be
  created where the command creates it), is a folder and is writable (checked with a real
  temporary file, since root passes `os.access` everywhere), and the path is of the right kind.
- `atomic_write` (and `atomic_write_text`, `make_output_dir`, `output_errors`): an `OSError`
  saying the disk is full, the file too large, the folder read-only or not writable, or a path
  part missing or of the wrong kind becomes `OutputError("<path>: <cause> (<ERRNO> while ...)")`.
- `CreatedPaths`: outputs claimed when a command starts (created exclusively), and everything the
  command made removed again when it fails.
- `open_for_append` / `refuse_link`: never written through a symbolic or hard link.
- `remove_stale_temporaries`: the temporary files of writers that were killed.
"""
import contextlib
import errno
import io
import os
import re
import secrets
import stat
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: claims are exclusive, but a killed run's placeholder is not taken over
    fcntl = None

from .files import FileError, describe_os_error, os_error_cause
from .files import label as _label


class OutputError(FileError):
    """An output that must not or cannot be written; the message names the flag and the path."""


TEMPORARY_SUFFIX = ".tmp"
PROBE_NAME = "write-check"  # the writability probe's temporary file: `.write-check.XXXXXXXX.tmp`
# `.NAME.` + 8 random characters (hex here, [a-z0-9_] from the tempfile-based writer before) + `.tmp`
_RANDOM_PART = r"\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


# ------------------------------------------------------------------------------ refusing to overwrite

def occupied(path):
    """Whether `path` holds something a write would replace: a file, or a non-empty folder."""
    path = Path(path)
    return any(path.iterdir()) if path.is_dir() else path.exists()


def refuse_existing(named_paths, overwrite=False, overwrite_flag="--overwrite"):
    """Raise `OutputError` for the first `(flag, path)` whose path is occupied, unless `overwrite`.

    `flag` is the option that named the path (e.g. `--csv`), so the message says what to change;
    paths that are None are skipped. `overwrite_flag` is the command's option that allows
    replacing outputs (None where it has none).
    """
    hint = f" (use {overwrite_flag} or another path)" if overwrite_flag else ""
    for flag, path in named_paths:
        if path is not None and not overwrite:
            with output_errors(path, flag, "checking it"):  # a name too long, a link loop
                if occupied(path):
                    raise OutputError(f"{flag} {path} already exists; refusing to overwrite it{hint}")


# ------------------------------------------------------------------------------ destination checks

def check_output_file(path, flag, create_parent=False):
    """Check, before any work, that a file can be written at `path`; returns it as a Path.

    Its folder must exist (with `create_parent`: it or its nearest existing ancestor), be a
    folder and be writable; `path` must not be a folder. `OutputError` otherwise, one line
    naming `flag`, the path and the cause.
    """
    path = Path(path)
    with output_errors(path, flag, "checking it"):  # a name too long, a link loop
        if path.is_dir():
            raise OutputError(f"{_label(flag, path)}: is a folder, not a file")
        _check_folder(path.parent, _label(flag, path), create_parent)
    return path


def check_output_dir(path, flag, create=False):
    """Check, before any work, that files can be written into the folder `path`; returns it as a Path.

    `path` must be a writable folder, or with `create` not exist yet and have a writable folder as
    its nearest existing ancestor (nothing is created here). `OutputError` otherwise.
    """
    path = Path(path)
    with output_errors(path, flag, "checking it"):  # a name too long, a link loop
        if os.path.lexists(path) and not path.is_dir():
            raise OutputError(f"{_label(flag, path)}: is a file, not a folder")
        _check_folder(path, _label(flag, path), create)
    return path


def _check_folder(folder, label, create):
    """`folder` is a writable folder, or (with `create`) its nearest existing ancestor is one.

    Writable: a temporary file can be created and deleted there (the real test, as root passes
    `os.access` whatever the mode), and `os.access` agrees."""
    existing = next((path for path in (folder, *folder.parents) if os.path.lexists(path)), Path("."))
    if existing != folder and not create:
        raise OutputError(f"{label}: folder {folder} does not exist")
    if not existing.is_dir():
        raise OutputError(f"{label}: {existing} is not a folder")
    what = f"cannot write in folder {folder}" if existing == folder else f"cannot create folder {folder} in {existing}"
    try:
        probe, fd = _create_temporary(existing, PROBE_NAME)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise OutputError(f"{label}: {what} ({os_error_cause(error)})") from None
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{label}: {what} (permission denied)")


# ------------------------------------------------------------------------------ writing

def atomic_write(path, write, mode="wb", flag=None, buffered=False):
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash or an error leaves either the old file or the new one, never half of one, and no
    temporary file. The file's mode follows the umask. A disk-full, too-large, permission,
    read-only or missing-folder `OSError` becomes `OutputError` naming `flag` and `path`.
    `buffered` (binary modes) runs `write` on an in-memory buffer first, for serialisers that
    turn a failed write into an opaque RuntimeError or an abort (torch.save, torch.export.save).
    """
    path = Path(path)
    if buffered:
        buffer = io.BytesIO()
        write(buffer)
        write = _writer_of(buffer)
    with output_errors(path, flag, "creating a temporary file"):
        tmp, fd = _create_temporary(path.parent, path.name)
    try:
        with output_errors(path, flag, "writing"):
            with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
        with output_errors(path, flag, f"renaming {tmp.name} to {path.name}"):
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _writer_of(buffer):
    return lambda handle: handle.write(buffer.getbuffer())  # no second copy of the bytes


def atomic_write_text(text, path, flag=None):
    """Write `text` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text), mode="w", flag=flag)


def open_for_append(path, flag=None):
    """`path` opened for reading and appending as UTF-8 text (created if missing), never through a
    link: a symbolic link or a second name of another file (a hard link) would send the writes into
    that file, so either is an `OutputError`, as is a named pipe or device (checked once opened)."""
    path = Path(path)
    with output_errors(path, flag, "opening it"):
        refuse_link(path, flag)  # a link is named for what it is; one made after this check fails the open
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW, 0o666)
    try:
        _refuse_shared(os.fstat(fd), path, flag)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "a+", encoding="utf-8", errors="backslashreplace")


def refuse_link(path, flag=None):
    """`OutputError` when `path` is a symbolic link or a file with other names (hard links): writing
    it in place would change another file."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{_label(flag, path)}: is a symbolic link (to {os.readlink(path)}); "
                          "refusing to write through it: remove the link") from None
    with contextlib.suppress(OSError):
        _refuse_shared(os.lstat(path), path, flag)


def _refuse_shared(status, path, flag):
    """A regular file with more than one name, or something that is not a regular file, is not ours to write."""
    if stat.S_ISREG(status.st_mode):
        if status.st_nlink > 1:
            raise OutputError(f"{_label(flag, path)}: is a hard link ({status.st_nlink} names for one file); "
                              "refusing to write through it: remove this name")
    elif not stat.S_ISDIR(status.st_mode):
        raise OutputError(f"{_label(flag, path)}: not a regular file; refusing to write to it: remove it")


def printable(text):
    """`text` (a path, or a message naming one) as text that can be written as UTF-8: the bytes of a
    file name that are not UTF-8, which Python keeps as surrogate escapes, become escapes like \\xff."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def make_output_dir(path, flag=None):
    """`mkdir -p path`; an `OSError` of the kinds `atomic_write` maps becomes `OutputError`. Returns the Path."""
    return CreatedPaths().make_dir(path, flag)  # the record of the folders made is not kept


@contextlib.contextmanager
def output_errors(path, flag=None, doing=None):
    """Turn an `OSError` about writing `path` (disk full, no permission, ...) into one-line `OutputError`.

    Other exceptions, FileExistsError (its callers decide what an existing path means) and errors
    naming a file that is not `path`, a folder above it or a file beside it (an input read while
    writing), pass through unchanged. Also for writers that cannot go
    through `atomic_write` (images saved into a checked folder).
    """
    path = Path(path)
    try:
        yield
    except OSError as error:
        if error.errno in (None, errno.EEXIST) or not _about(error, path):  # callers handle EEXIST
            raise
        cause = None  # the error's own, unless a plainer one is known
        if error.errno == errno.ENOENT:
            cause = f"folder {path.parent} does not exist"
        elif error.errno == errno.ENOTDIR:
            # none found, or the path itself is the problem (too long, a loop): the error's own words
            with contextlib.suppress(OSError, StopIteration):
                blocking = next(p for p in reversed(path.parents) if os.path.lexists(p) and not p.is_dir())
                cause = f"{blocking} is not a folder"
        raise OutputError(describe_os_error(error, path, flag, doing, cause)) from None


def _about(error, path):
    """Whether `error` concerns `path`: it names no file, or `path`, a folder above it, a file beside
    it (its temporary file) or, when `path` is a folder being filled, a file in it."""
    if error.filename is None:
        return True
    named = Path(os.fsdecode(error.filename))
    return named == path or named in path.parents or named.parent == path.parent or path in named.parents


# ------------------------------------------------------------------------------ claiming outputs

class CreatedPaths(contextlib.AbstractContextManager):
    """What a command created, so that a failure removes exactly that and nothing else.

    `claim` takes a new output file when the command starts (created exclusively, so of two
    commands naming the same file one is refused at once), `make_dir` records every folder it
    makes, `add` a file written later. Used as a context manager, an exception (Ctrl-C included)
    undoes it all: the recorded files, then the recorded folders that are empty, deepest first.
    """

    def __init__(self):
        self.files, self.folders, self.held = [], [], []

    def __exit__(self, kind, error, trace):
        if kind is not None:
            self.undo()

    def claim(self, path, flag=None, create_parent=False):
        """Create `path` as an empty placeholder, exclusively and never through a link (with
        `create_parent` its missing folders too, recorded), and lock it for as long as this
        process runs; `OutputError` when it exists or cannot be written (checked as
        `check_output_file` does). An empty placeholder no running process holds (a killed run's)
        is taken over. Returns the Path."""
        path = check_output_file(path, flag, create_parent)
        self.make_dir(path.parent, flag)  # without create_parent, the check has refused a missing folder
        with output_errors(path, flag, "creating it"):
            try:
                fd, made = _locked(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)), True
            except FileExistsError:
                fd, made = _unheld_placeholder(path), False
        if fd is None:  # held by a live run (which may have taken it between our create and our lock)
            raise OutputError(f"{_label(flag, path)} already exists; refusing to overwrite it")
        self.held.append(fd)
        if made:
            self.files.append(path)
        return path

    def make_dir(self, path, flag=None):
        """`mkdir -p path`, recording each folder made; `OutputError` when a file is in the way or for an
        `OSError` of the kinds `atomic_write` maps. Returns the Path."""
        path = Path(path)
        if os.path.lexists(path) and not path.is_dir():
            raise OutputError(f"{_label(flag, path)}: is a file, not a folder")
        with output_errors(path, flag, "creating the folder"):
            for folder in (*reversed(path.parents), path):  # from the top down, each missing one
                if not os.path.lexists(folder):
                    with contextlib.suppress(FileExistsError):  # made meanwhile by someone else: not ours
                        folder.mkdir()
                        self.folders.append(folder)
        return path

    def add(self, path):
        """Record a file this command wrote (to be removed if it fails)."""
        self.files.append(Path(path))

    def keep(self):
        """The results are written: what is recorded stays, whatever fails after (printing, say)."""
        for fd in self.held:
            os.close(fd)
        self.files, self.folders, self.held = [], [], []

    def undo(self):
        """Remove the recorded files, then the recorded folders left empty (deepest first)."""
        for path in reversed(self.files):
            with contextlib.suppress(OSError):
                os.remove(path)
        for folder in reversed(self.folders):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self.keep()  # nothing recorded is left: forget the record and release the claims


def _locked(fd):
    """`fd` once this process holds its exclusive lock (taken without waiting), or None, with `fd`
    closed, when another process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
    return fd


def _unheld_placeholder(path):
    """An open descriptor of `path`, locked, when it is an empty regular file with one name that no
    process holds locked (a killed run's claim), else None."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except OSError:
        return None
    status = os.fstat(fd)
    if stat.S_ISREG(status.st_mode) and status.st_size == 0 and status.st_nlink == 1:
        return _locked(fd)
    os.close(fd)
    return None


# ------------------------------------------------------------------------------ temporary files

def _create_temporary(folder, name):
    """`(path, fd)` of a new `.NAME.XXXXXXXX.tmp` in `folder`, created exclusively, mode 0666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = Path(folder) / f".{name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
        with contextlib.suppress(FileExistsError):  # 1 in 4 billion: draw another name
            return tmp, os.open(tmp, flags, 0o666)


def temporary_pattern(name=None):
    """The compiled pattern of the temporary files `atomic_write` makes (for `name`, or any name)."""
    stem = re.escape(name) if name is not None else ".+"
    return re.compile(rf"\.{stem}{_RANDOM_PART}")


def remove_stale_temporaries(folder, name=None):
    """Delete the temporary files a killed `atomic_write` left in `folder` (those for `name`, or all).

    Only files matching this layer's own pattern (`.NAME.XXXXXXXX.tmp`) are touched; call it
    only where no other process is writing the same outputs. Returns the paths removed.
    """
    pattern = temporary_pattern(name)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder, nothing to clean
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)
                removed.append(Path(entry.path))
    return removed
