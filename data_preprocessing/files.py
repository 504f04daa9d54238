"""Reading input files safely: never block on a non-regular file, and say where a text file stops being UTF-8."""
from __future__ import annotations

import os
import stat
from typing import BinaryIO

__all__ = ["NotRegularFileError", "open_regular_file", "non_regular_kind", "invalid_utf8_position"]

# O_NONBLOCK makes opening a named pipe return at once instead of waiting for a writer.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotRegularFileError(OSError):
    """`path` is not a regular file (a named pipe, a device, a folder, ...); `kind` says what it is."""

    def __init__(self, path, kind: str):
        super().__init__(f"{kind}, not a regular file")
        self.filename, self.kind = os.fspath(path), kind


def kind_of_mode(mode: int) -> str:
    """What a non-regular `st_mode` is, in words ("a named pipe (FIFO)", "a folder", ...)."""
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def non_regular_kind(path) -> str | None:
    """None when `path` is a regular file (symbolic links followed), else what it is in words; a
    broken symbolic link reads "a broken symbolic link", a missing path "missing"."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    return None if stat.S_ISREG(mode) else kind_of_mode(mode)


def open_regular_file(path) -> BinaryIO:
    """`path` opened for binary reading; NotRegularFileError (an OSError) instead of blocking when it
    is a named pipe, or instead of reading a device or folder. The check is on the opened file, so
    nothing can swap the file between the check and the read."""
    descriptor = os.open(path, _OPEN_FLAGS)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, kind_of_mode(mode))
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def invalid_utf8_position(path) -> str:
    """Where `path` first stops being UTF-8: "path:LINE: not UTF-8 text (byte 0xff at byte offset N)",
    with LINE counted from 1 and N from 0 in the whole file. For the message after a UnicodeDecodeError,
    whose offsets count from the start of a read buffer, not of the file."""
    offset = 0
    with open_regular_file(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                bad = line[error.start]
                return (f"{os.fspath(path)}:{line_number}: not UTF-8 text "
                        f"(byte 0x{bad:02x} at byte offset {offset + error.start})")
            offset += len(line)
    return f"{os.fspath(path)}: not UTF-8 text"
