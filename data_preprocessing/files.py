"""Every file the project reads goes through here: regular files only (a named pipe, device or
socket is refused at once, never waited on), sizes and JSON nesting bounded, and every `OSError`
one line naming the path, the cause and, where there is one, the remedy (`describe_os_error`,
which the writing side, `outputs.py`, shares)."""
import csv
import errno
import io
import itertools
import json
import os
import re
import stat
from collections.abc import Sequence
from typing import BinaryIO

__all__ = ["NotRegularFileError", "open_regular_file", "non_regular_kind", "invalid_utf8_position", "FileError",
           "InputError", "describe_os_error", "read_bytes", "read_text", "read_json", "read_csv",
           "find_unreadable_images", "is_regular_entry"]

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
    broken symbolic link reads "a broken symbolic link", a missing path "missing", a path that
    cannot be looked at says why ("a symbolic link loop", "unreadable (permission denied)")."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    except OSError as error:
        return "a symbolic link loop" if error.errno == errno.ELOOP else f"unreadable ({os_error_cause(error)})"
    return None if stat.S_ISREG(mode) else kind_of_mode(mode)


def open_regular_file(path) -> BinaryIO:
    """`path` opened for binary reading; NotRegularFileError (an OSError) instead of blocking when it
    is a named pipe, or instead of reading a device or folder. The check is on the opened file, so
    nothing can swap the file between the check and the read."""
    try:
        descriptor = os.open(path, _OPEN_FLAGS)
    except OSError as error:  # a socket cannot be opened at all (ENXIO): say what it is
        kind = non_regular_kind(path) if error.errno == errno.ENXIO else None
        if kind:
            raise NotRegularFileError(path, kind) from None
        raise
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
                return (f"{os.fspath(path)}:{line_number}: not UTF-8 text "
                        f"(byte 0x{line[error.start]:02x} at byte offset {offset + error.start})")
            offset += len(line)
    return f"{os.fspath(path)}: not UTF-8 text"


# ------------------------------------------------------------------------------ errors, in one line

class FileError(Exception):
    """A file that cannot be read or written; the message is one line naming it (and its option)."""


class InputError(FileError):
    """An input file that cannot be read: missing, not a regular file, too large, damaged."""


MAX_TEXT_BYTES = 64 * 2 ** 20  # a configuration, list or CSV file larger than this is not one
MAX_JSON_DEPTH = 64            # nesting beyond this is refused before parsing (no RecursionError)

_CAUSES = {
    errno.ENOENT: "no such file or folder",
    errno.ENOSPC: "no space left on device",
    errno.EFBIG: "file too large for the limit set on this process (ulimit -f)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENAMETOOLONG: "a name in the path is too long (file systems take up to 255 bytes a name): "
                        "choose a shorter one",
    errno.ELOOP: "too many levels of symbolic links (a link that leads back to itself?): "
                 "fix or remove the link",
    errno.EMFILE: "too many open files in this process: raise the limit (ulimit -n) or use fewer workers",
    errno.ENFILE: "too many open files on this system: close other programs or raise the system's limit",
}
if hasattr(errno, "EDQUOT"):  # not on every platform
    _CAUSES[errno.EDQUOT] = "disk quota exceeded"


def label(flag, path):
    """`--flag path`, or the path alone without a flag."""
    return f"{flag} {os.fspath(path)}" if flag else os.fspath(path)


def os_error_cause(error):
    """The plain cause of an OSError: a known errno in words (with its remedy), else the system's text."""
    if isinstance(error, NotRegularFileError):
        return f"{error.kind}, not a regular file"
    return _CAUSES.get(error.errno) or (os.strerror(error.errno) if error.errno else str(error)).lower()


def describe_os_error(error, path, flag=None, doing=None, cause=None):
    """`<flag> <path>: <cause> (<ERRNO>[ while <doing>])`: any OSError met with `path`, in one line
    (`cause` in place of the error's own, where the caller knows better)."""
    if isinstance(error, NotRegularFileError):
        return f"{label(flag, path)}: {os_error_cause(error)}"
    code = errno.errorcode.get(error.errno, str(error.errno))
    return f"{label(flag, path)}: {cause or os_error_cause(error)} ({code}{f' while {doing}' if doing else ''})"


# ------------------------------------------------------------------------------ reading

def read_bytes(path, flag=None, limit=MAX_TEXT_BYTES):
    """The bytes of the regular file `path`, at most `limit` of them; InputError (one line naming
    `flag` and `path`) for a missing, unreadable, non-regular or larger file. Never blocks."""
    try:
        with open_regular_file(path) as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise InputError(describe_os_error(error, path, flag, "reading it")) from None
    if len(data) > limit:
        size = f"{limit // 2 ** 20} MiB" if limit >= 2 ** 20 else f"{limit} bytes"
        raise InputError(f"{label(flag, path)}: larger than {size}; not a file this reads")
    return data


def read_text(path, flag=None, limit=MAX_TEXT_BYTES):
    """The UTF-8 text of `path` (a leading byte-order mark dropped), read as `read_bytes` does;
    InputError saying where it stops being UTF-8."""
    data = read_bytes(path, flag, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InputError(f"{label(flag, path)}: not UTF-8 text (byte 0x{data[error.start]:02x} at line {line}, "
                         f"byte offset {error.start})") from None


def read_json(path, flag=None, limit=MAX_TEXT_BYTES, max_depth=MAX_JSON_DEPTH):
    """The JSON document in `path`, read as `read_text` does, nested at most `max_depth` deep;
    InputError `<path>: not valid JSON (...)` otherwise."""
    text = read_text(path, flag, limit)
    if json_depth(text) > max_depth:
        raise InputError(f"{label(flag, path)}: not valid JSON here (nested more than {max_depth} deep)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{label(flag, path)}: not valid JSON ({error.msg} at line {error.lineno})") from None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth(text):
    """The deepest nesting of arrays and objects in JSON `text` (brackets inside strings ignored)."""
    steps = (1 if bracket in "[{" else -1 for bracket in _BRACKETS.findall(_JSON_STRING.sub("", text)))
    return max(itertools.accumulate(steps, initial=0))


def read_csv(path, flag=None, limit=MAX_TEXT_BYTES):
    """`(columns, rows)` of the CSV file `path` with a header line (rows as dicts), read as
    `read_text` does; InputError naming the file and the line for a malformed one."""
    reader = csv.DictReader(io.StringIO(read_text(path, flag, limit), newline=""))
    try:
        return reader.fieldnames, list(reader)
    except csv.Error as error:
        raise InputError(f"{label(flag, path)}: not CSV ({error} at line {reader.line_num})") from None


def find_unreadable_images(image_dir: str, names: Sequence[str]) -> tuple[list[int], list[int]]:
    """(indices of `names` with no file under `image_dir`, indices naming something that is not a
    regular file: a named pipe, a folder, a broken link, ...), from one directory listing per sub-folder."""
    listings: dict[str, dict[str, bool]] = {}  # folder -> {entry name: is a regular file}
    missing, not_regular = [], []
    for index, name in enumerate(names):
        folder = os.path.dirname(name)
        if folder not in listings:
            listings[folder] = _folder_entries(os.path.join(image_dir, folder))
        regular = listings[folder].get(os.path.basename(name))
        if regular is False:
            not_regular.append(index)
        # The isfile() fallback keeps case-insensitive file systems and odd names correct.
        elif regular is None and not os.path.isfile(os.path.join(image_dir, name)):
            missing.append(index)
    return missing, not_regular


def _folder_entries(folder: str) -> dict[str, bool]:
    """{name: whether it is a regular file} of everything in `folder`; empty if unlistable. The file
    type comes with the listing, so this costs no stat per file."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name: is_regular_entry(entry) for entry in entries}
    except OSError:
        return {}


def is_regular_entry(entry: os.DirEntry) -> bool:
    """Whether a directory entry is a regular file (links followed; False when it cannot be told)."""
    try:
        return entry.is_file()
    except OSError:
        return False
