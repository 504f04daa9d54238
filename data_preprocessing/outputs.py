"""Every file the project writes goes through here: existing outputs are refused, writes are atomic.

It is the lowest layer that writes files, so the data scripts, the training system and the
tools share it (nothing here knows about models or options beyond the flag names it is given).
"""
import os
import tempfile
from pathlib import Path


class OutputError(Exception):
    """An output that must not or cannot be written; the message names the flag and the path."""


def occupied(path):
    """Whether `path` holds something a write would replace: a file, or a non-empty folder."""
    path = Path(path)
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


def refuse_existing(named_paths, overwrite=False, overwrite_flag="--overwrite"):
    """Raise `OutputError` for the first `(flag, path)` whose path is occupied, unless `overwrite`.

    `flag` is the option that named the path (e.g. `--csv`), so the message says what to change;
    paths that are None are skipped. `overwrite_flag` is the command's option that allows
    replacing outputs (None where it has none).
    """
    if overwrite:
        return
    hint = f" (use {overwrite_flag} or another path)" if overwrite_flag else ""
    for flag, path in named_paths:
        if path is not None and occupied(path):
            raise OutputError(f"{flag} {path} already exists; refusing to overwrite it{hint}")


def atomic_write(path, write, mode="wb"):
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash or an error leaves either the old file or the new one, never half of one, and no
    temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs follow the umask
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(text, path):
    """Write `text` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text), mode="w")


def current_umask():
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
