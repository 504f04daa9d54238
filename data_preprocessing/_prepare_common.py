"""Helpers shared by the prepare_* scripts that turn raw dataset releases into list files.

Positions in messages are written `file:line`, as everywhere in the data code.
"""

from __future__ import annotations

import csv
import math
import sys
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from data_preprocessing.errors import DataError, RowErrors
from data_preprocessing.files import invalid_utf8_position, non_regular_kind
from data_preprocessing.layouts import ListLayout
from data_preprocessing.outputs import (
    CreatedPaths,
    OutputError,
    atomic_write,
    check_output_dir,
    make_output_dir,
    refuse_existing,
    remove_stale_temporaries,
)


class PrepareError(DataError):
    """Bad raw input or an output that would overlap an input; the message names the file (and line)."""


def require_file(path, flag: str) -> Path:
    """``path`` as a Path, or PrepareError naming ``flag`` when it is not an existing regular file
    (a named pipe would block the read for ever)."""
    path = Path(path)
    kind = non_regular_kind(path)
    if kind == "missing":
        raise PrepareError(f"{flag} {path}: no such file")
    if kind is not None:
        raise PrepareError(f"{flag} {path}: is {kind}, not a regular file")
    return path


def utf8_error(path, flag: str) -> PrepareError:
    """The one-line error for an input that is not UTF-8: flag, file, line and byte offset."""
    return PrepareError(f"{flag} {invalid_utf8_position(path)}; save it as UTF-8 (or ASCII)")


def require_dir(path, flag: str) -> Path:
    """``path`` as a Path, or PrepareError naming ``flag`` when it is not an existing folder."""
    path = Path(path)
    if not path.is_dir():
        raise PrepareError(f"{flag} {path}: no such folder")
    return path


def claim_prepared_outputs(out_dir, files, inputs, overwrite: bool, folders=()) -> CreatedPaths:
    """Check before any work that the ``--out`` paths may be written: none overlaps an input, none
    exists (a folder counts when non-empty) unless ``overwrite``, ``out_dir`` is a writable folder
    or can be created, and no file output is a folder nor folder output a file (OutputError).
    Returns the record of the folders made for ``out_dir``: used as a context manager, a failure
    inside removes them again when they are still empty."""
    refuse_output_over_inputs([*files, *folders], inputs)
    refuse_existing([("--out", path) for path in [*files, *folders]], overwrite)
    check_output_dir(out_dir, "--out", create=True)
    for path in map(Path, files):
        if path.is_dir():
            raise OutputError(f"--out {path}: is a folder, not a file")
    for path in map(Path, folders):
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out {path}: is a file, not a folder")
    created = CreatedPaths()
    created.make_dir(out_dir, "--out")
    return created


def refuse_output_over_inputs(outputs, inputs) -> None:
    """Raise when an output path is, contains or lies inside an input path, so inputs are never touched."""
    resolved_inputs = [Path(p).resolve() for p in inputs if p is not None]
    for output in (Path(p).resolve() for p in outputs):
        for source in resolved_inputs:
            if output == source or source in output.parents or output in source.parents:
                raise PrepareError(f"output {output} overlaps the input {source}; choose another --out")


def layout_list_paths(out_dir: Path, layout: ListLayout) -> list[Path]:
    """The list files of ``layout`` under ``out_dir``, named as the dataset registry names them."""
    return [out_dir / name for name in layout.list_files.values()]


def write_list_file(path: Path, entries) -> None:
    """Write ``<name> <label>`` lines atomically, so a crash never leaves half a list."""
    folder = make_output_dir(Path(path).parent, "--out")
    remove_stale_temporaries(folder, Path(path).name)
    atomic_write(path, lambda handle: handle.writelines(f"{name} {label}\n" for name, label in entries),
                 mode="w", flag="--out")


def write_layout_lists(out_dir: Path, layout: ListLayout, entries_by_split: dict, class_names=None,
                       left_out: dict | None = None) -> list[Path]:
    """Write each split's list file under ``out_dir`` (named by ``layout``), print how many images
    each kept, in total and per class, and how many rows the documented rules left out
    (``left_out``: ``{reason: count}``), and return the paths written."""
    class_names = layout.classes if class_names is None else class_names
    written = []
    for split, entries in entries_by_split.items():
        path = out_dir / layout.list_files[split]
        write_list_file(path, entries)
        written.append(path)
        print(f"{layout.name} {split}: {count_summary(entries, class_names)}")
    if left_out is not None:
        reasons = ", ".join(f"{count} {reason}" for reason, count in left_out.items())
        print(f"{layout.name}: {sum(left_out.values())} row(s) left out ({reasons})")
    print(f"wrote {', '.join(path.name for path in written)} in {out_dir}")
    return written


def count_summary(entries, class_names) -> str:
    """``3 images (0 Surprise: 1, 1 Fear: 2, ...)`` for ``(name, label)`` entries."""
    counts = Counter(label for _, label in entries)
    per_class = ", ".join(f"{index} {name}: {counts.get(index, 0)}" for index, name in enumerate(class_names))
    return f"{len(entries)} images ({per_class})"


def read_csv_rows(path: Path, expected_header, flag: str, bad_rows: RowErrors, header_optional: bool = False):
    """Yield ``(line_number, row)`` for the data rows of a CSV file, checking its header.

    The header must start with ``expected_header`` (case-insensitive). With
    ``header_optional`` a first row that does not look like the header is taken
    as data. A row with fewer than ``len(expected_header)`` fields is recorded in
    ``bad_rows`` and skipped.
    """
    try:
        for line_number, row in _csv_rows(path, expected_header, flag, header_optional):
            if len(row) < len(expected_header):
                bad_rows.add(PrepareError(f"{path}:{line_number}: expected {len(expected_header)} comma-separated "
                                          f"fields, got {len(row)}"))
            else:
                yield line_number, row
    except UnicodeDecodeError:
        raise utf8_error(path, flag) from None


def _csv_rows(path: Path, expected_header, flag: str, header_optional: bool):
    expected = [name.strip().lower() for name in expected_header]
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        first = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if first is None:
            raise PrepareError(f"{flag} {path}: file is empty")
        header = [cell.strip().lower() for cell in first[:len(expected)]]
        pending = []
        if header != expected:
            if not header_optional or header[:1] == expected[:1]:
                raise PrepareError(f"{flag} {path}:{reader.line_num}: expected header starting with "
                                   f"{','.join(expected_header)}, got {','.join(first[:len(expected)])}")
            pending = [(reader.line_num, first)]
        yield from pending
        for row in reader:
            if any(cell.strip() for cell in row):
                yield reader.line_num, row


def parse_int(text: str, path, line_number: int, what: str) -> int:
    """``text`` as an integer (``3`` or ``3.0``), or PrepareError naming file, line and field."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value != int(value):
        raise PrepareError(f"{path}:{line_number}: {what} must be an integer, got {text!r}")
    return int(value)


def decode_problem(task) -> str | None:
    """Why the image ``path`` of ``task = (path, where)`` cannot be decoded, or None (runs in workers)."""
    path, where = task
    try:
        with Image.open(path) as image:
            image.draft(image.mode, (1, 1))  # a JPEG is decoded at 1/8 scale: all its data is still read
            image.load()  # a truncated or damaged file fails here
    except UnidentifiedImageError:
        return f"{where} {path}: not an image file (no format recognised)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"{where} {path}: not a readable image ({error})"
    return None


def check_images_decode(tasks, workers: int = 1) -> None:
    """Decode every ``(image path, where it is listed)``; PrepareError naming each one that does not
    (up to MAX_BAD_ROWS), so a broken image is refused here rather than when training reaches it."""
    bad_rows = RowErrors()
    if workers > 1:
        with Pool(workers) as pool:
            problems = list(pool.imap(decode_problem, tasks, chunksize=64))
    else:
        problems = map(decode_problem, tasks)
    for problem in filter(None, problems):
        bad_rows.add(PrepareError(problem))
    bad_rows.raise_any()


def run_main(prepare, argv=None) -> int:
    """Run a prepare script's body; bad input (DataError, PrepareError among them) or a refused
    output (OutputError) becomes a one-line message on stderr and exit status 2."""
    try:
        prepare(argv)
    except (DataError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
