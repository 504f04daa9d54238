"""Helpers shared by the prepare_* scripts that turn raw dataset releases into list files."""

from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from pathlib import Path

from data_preprocessing.errors import DataError


class PrepareError(DataError):
    """Bad raw input or a refused output; the message names the file (and line)."""


def require_file(path, flag: str) -> Path:
    """``path`` as a Path, or PrepareError naming ``flag`` when it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{flag} {path}: no such file")
    return path


def require_dir(path, flag: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise PrepareError(f"{flag} {path}: no such folder")
    return path


def refuse_existing_outputs(paths, overwrite: bool) -> None:
    """Raise unless none of ``paths`` exists (a folder counts only when non-empty) or ``overwrite``."""
    if overwrite:
        return
    existing = [str(p) for p in map(Path, paths)
                if (p.exists() and not p.is_dir()) or (p.is_dir() and any(p.iterdir()))]
    if existing:
        raise PrepareError("refusing to overwrite existing output(s): " + ", ".join(existing)
                           + " (pass --overwrite to replace them)")


def refuse_output_over_inputs(outputs, inputs) -> None:
    """Raise when an output path is, contains or lies inside an input path, so inputs are never touched."""
    resolved_inputs = [Path(p).resolve() for p in inputs if p is not None]
    for output in (Path(p).resolve() for p in outputs):
        for source in resolved_inputs:
            if output == source or source in output.parents or output in source.parents:
                raise PrepareError(f"output {output} overlaps the input {source}; choose another --out")


def write_list_file(path: Path, entries) -> None:
    """Write ``<name> <label>`` lines via a temporary file, so a crash never leaves half a list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="\n") as handle:
        for name, label in entries:
            handle.write(f"{name} {label}\n")
    os.replace(tmp, path)


def read_csv_rows(path: Path, expected_header, flag: str, header_optional: bool = False):
    """Yield ``(line_number, row)`` for the data rows of a CSV file, checking its header.

    The header must start with ``expected_header`` (case-insensitive). With
    ``header_optional`` a first row that does not look like the header is taken
    as data. Every row must have at least ``len(expected_header)`` fields.
    """
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
                raise PrepareError(f"{flag} {path} line 1: expected header starting with "
                                   f"{','.join(expected_header)}, got {','.join(first[:len(expected)])}")
            pending = [(reader.line_num, first)]
        for line_number, row in pending:
            yield _checked_row(path, line_number, row, len(expected))
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            yield _checked_row(path, reader.line_num, row, len(expected))


def _checked_row(path, line_number: int, row, width: int):
    if len(row) < width:
        raise PrepareError(f"{path} line {line_number}: expected {width} comma-separated fields, got {len(row)}")
    return line_number, row


def parse_int(text: str, path, line_number: int, what: str) -> int:
    """``text`` as an integer (``3`` or ``3.0``), or PrepareError naming file, line and field."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value != int(value):
        raise PrepareError(f"{path} line {line_number}: {what} must be an integer, got {text!r}")
    return int(value)


def write_split_list(path: Path, entries, title: str, class_names) -> None:
    """Write a split's list file and print how many images it kept, in total and per class."""
    write_list_file(path, entries)
    labels = [label for _, label in entries]
    counts = Counter(labels)
    per_class = ", ".join(f"{index} {name}: {counts.get(index, 0)}" for index, name in enumerate(class_names))
    print(f"{title}: {len(labels)} images ({per_class})")


def run_main(main_function, argv=None) -> int:
    """Run a prepare script's body, turning PrepareError into a one-line message and exit status 2."""
    try:
        main_function(argv)
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
