"""What the prepare_* scripts share: the command line, the checks of inputs and outputs, reading
CSV files, and writing the list files. Each script adds only its dataset's rules.

Positions in messages are written `file:line`, as everywhere in the data code.
"""

import argparse
import contextlib
import csv
import itertools
import sys
from collections import Counter
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from data_preprocessing.errors import DataError, RowErrors
from data_preprocessing.files import find_unreadable_images, invalid_utf8_position, non_regular_kind
from data_preprocessing.limits import LimitError
from data_preprocessing.outputs import (
    CreatedPaths,
    OutputError,
    atomic_write,
    check_output_dir,
    check_output_file,
    make_output_dir,
    refuse_existing,
    remove_stale_temporaries,
)

MAX_MISSING_SHOWN = 5  # missing images named in one message


class PrepareError(DataError):
    """Bad raw input or an output that would overlap an input; the message names the file (and line)."""


def parse_arguments(module: str, description: str, arguments: dict, argv=None) -> argparse.Namespace:
    """The options of ``python -m data_preprocessing.<module>``, ``{flag: add_argument options}``."""
    parser = argparse.ArgumentParser(prog=f"python -m data_preprocessing.{module}", description=description)
    for flag, options in arguments.items():
        parser.add_argument(flag, **options)
    return parser.parse_args(argv)


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


def require_dir(path, flag: str) -> Path:
    """``path`` as a Path, or PrepareError naming ``flag`` when it is not an existing folder."""
    path = Path(path)
    if not path.is_dir():
        raise PrepareError(f"{flag} {path}: no such folder")
    return path


@contextlib.contextmanager
def utf8_errors(path, flag: str):
    """Turn a UnicodeDecodeError reading ``path`` into a one-line PrepareError: flag, file, line and
    byte offset."""
    try:
        yield
    except UnicodeDecodeError:
        raise PrepareError(f"{flag} {invalid_utf8_position(path)}; save it as UTF-8 (or ASCII)") from None


def claim_prepared_outputs(args, layouts, inputs, folders=()) -> CreatedPaths:
    """Check before any work that the list files of ``layouts`` and the ``folders`` under ``args.out``
    may be written: none overlaps an input, none exists (a folder counts when non-empty) unless
    ``args.overwrite``, ``args.out`` is a writable folder or can be created, and no file output is a
    folder nor folder output a file (OutputError). Returns the record of the folders made for
    ``args.out``: used as a context manager, a failure inside removes them again when they are
    still empty."""
    files = [args.out / name for layout in layouts for name in layout.list_files.values()]
    folders = [args.out / folder for folder in folders]
    refuse_output_over_inputs([*files, *folders], inputs)
    refuse_existing([("--out", path) for path in [*files, *folders]], args.overwrite)
    check_output_dir(args.out, "--out", create=True)
    for path in files:
        check_output_file(path, "--out", create_parent=True)
    for path in folders:
        check_output_dir(path, "--out", create=True)
    created = CreatedPaths()
    created.make_dir(args.out, "--out")
    return created


def refuse_output_over_inputs(outputs, inputs) -> None:
    """Raise when an output path is, contains or lies inside an input path, so inputs are never touched."""
    resolved_inputs = [Path(p).resolve() for p in inputs if p is not None]
    for output in (Path(p).resolve() for p in outputs):
        for source in resolved_inputs:
            if output == source or source in output.parents or output in source.parents:
                raise PrepareError(f"output {output} overlaps the input {source}; choose another --out")


def write_list_file(path: Path, entries) -> None:
    """Write ``<name> <label>`` lines atomically, so a crash never leaves half a list."""
    folder = make_output_dir(Path(path).parent, "--out")
    remove_stale_temporaries(folder, Path(path).name)
    atomic_write(path, lambda handle: handle.writelines(f"{name} {label}\n" for name, label in entries),
                 mode="w", flag="--out")


def write_layout_lists(out_dir: Path, layout, entries_by_split: dict, left_out: dict | None = None) -> None:
    """Write each split's list file under ``out_dir`` (named by ``layout``), print how many images
    each kept, in total and per class (``3 images (0 Surprise: 1, 1 Fear: 2, ...)``), and how many
    rows the documented rules left out (``left_out``: ``{reason: count}``)."""
    for split, entries in entries_by_split.items():
        write_list_file(out_dir / layout.list_files[split], entries)
        counts = Counter(label for _, label in entries)
        per_class = ", ".join(f"{index} {name}: {counts[index]}" for index, name in enumerate(layout.classes))
        print(f"{layout.name} {split}: {len(entries)} images ({per_class})")
    if left_out is not None:
        reasons = ", ".join(f"{count} {reason}" for reason, count in left_out.items())
        print(f"{layout.name}: {sum(left_out.values())} row(s) left out ({reasons})")
    print(f"wrote {', '.join(layout.list_files[split] for split in entries_by_split)} in {out_dir}")


def read_csv_rows(path: Path, expected_header, flag: str, bad_rows: RowErrors, header_optional: bool = False):
    """Yield ``(line_number, row)`` for the data rows of a CSV file, checking its header.

    The header must start with ``expected_header`` (case-insensitive). With
    ``header_optional`` a first row that does not look like the header is taken
    as data. A row with fewer than ``len(expected_header)`` fields is recorded in
    ``bad_rows`` and skipped.
    """
    expected = [name.lower() for name in expected_header]
    with utf8_errors(path, flag), open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        rows = ((reader.line_num, row) for row in reader if any(cell.strip() for cell in row))
        first_line, first = next(rows, (None, None))
        if first is None:
            raise PrepareError(f"{flag} {path}: file is empty")
        header = [cell.strip().lower() for cell in first[:len(expected)]]
        if header != expected:
            if not header_optional or header[:1] == expected[:1]:
                raise PrepareError(f"{flag} {path}:{first_line}: expected header starting with "
                                   f"{','.join(expected_header)}, got {','.join(first[:len(expected)])}")
            rows = itertools.chain([(first_line, first)], rows)
        for line_number, row in rows:
            if len(row) < len(expected):
                bad_rows.add(PrepareError(f"{path}:{line_number}: expected {len(expected)} comma-separated "
                                          f"fields, got {len(row)}"))
            else:
                yield line_number, row


def parse_int(text: str, path, line_number: int, what: str) -> int:
    """``text`` as an integer (``3`` or ``3.0``), or PrepareError naming file, line and field."""
    with contextlib.suppress(ValueError):
        value = float(text)
        if value.is_integer():  # not for inf or nan
            return int(value)
    raise PrepareError(f"{path}:{line_number}: {what} must be an integer, got {text!r}")


def check_images_exist(images_dir: Path, listed, what: str) -> None:
    """PrepareError naming the first few of the ``(image name, how to show it)`` pairs ``listed``
    whose image is not a file under ``images_dir`` (one listing per folder, not a stat per image);
    ``what`` says what they are."""
    absent, not_regular = find_unreadable_images(str(images_dir), [name for name, _ in listed])
    missing = [listed[index][1] for index in sorted(absent + not_regular)]
    if missing:
        more = " ..." if len(missing) > MAX_MISSING_SHOWN else ""
        raise PrepareError(f"--images {images_dir}: {len(missing)} {what}: "
                           f"{', '.join(missing[:MAX_MISSING_SHOWN])}{more}")


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


def refuse_problems(problems) -> None:
    """PrepareError naming each problem (a message; None: no problem) up to MAX_BAD_ROWS, once all are
    known, so a broken image is refused here rather than when training reaches it."""
    bad_rows = RowErrors()
    for problem in filter(None, problems):
        bad_rows.add(PrepareError(problem))
    bad_rows.raise_any()


def run_main(prepare, argv=None) -> int:
    """Run a prepare script's body; bad input (DataError, PrepareError among them), a refused output
    (OutputError) or a resource limit too low (LimitError) becomes a one-line message on stderr and
    exit status 2."""
    try:
        prepare(argv)
    except (DataError, OutputError, LimitError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
