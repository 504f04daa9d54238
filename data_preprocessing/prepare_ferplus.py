"""Build FERPlus images and list files from Kaggle's ``fer2013.csv`` and Microsoft's ``fer2013new.csv``.

Row i of ``fer2013new.csv`` (Usage, Image name, 10 vote counts) labels row i of
``fer2013.csv`` (emotion, pixels, Usage). Every row with an image name is
written as a 48x48 grayscale PNG ``OUT/img/<Image name>``; its label is the
FERPlus majority vote (see :func:`majority_vote`) and rows whose vote is not one
of the 8 emotions are left out of the lists. Splits: Training -> train
(``ferplus_training.txt``), PublicTest -> val (``ferplus_valid.txt``),
PrivateTest -> test (``ferplus_test.txt``). Label order (0..7): Neutral,
Happiness, Surprise, Sadness, Anger, Disgust, Fear, Contempt.

    python -m data_preprocessing.prepare_ferplus --fer2013 fer2013.csv \\
        --ferplus fer2013new.csv --out datas/FERPlus [--overwrite]
"""

from pathlib import Path

import numpy as np
from PIL import Image

from data_preprocessing._prepare_common import (
    PrepareError,
    claim_prepared_outputs,
    parse_arguments,
    parse_int,
    read_csv_rows,
    require_file,
    run_main,
    write_layout_lists,
)
from data_preprocessing.errors import RowErrors
from data_preprocessing.fer2013 import FER2013_USAGE_TO_SPLIT, parse_fer2013_pixels, read_fer2013_rows
from data_preprocessing.images import IMAGE_EXTENSIONS, is_image_file
from data_preprocessing.layouts import LIST_LAYOUTS
from data_preprocessing.outputs import make_output_dir, output_errors

LAYOUT = LIST_LAYOUTS["FERPlus"]
VOTE_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF"]
FERPLUS_HEADER = ["Usage", "Image name", *VOTE_COLUMNS]
DESCRIPTION = "Write FERPlus images and majority-vote list files."
ARGUMENTS = {
    "--fer2013": {"required": True, "help": "Kaggle fer2013.csv (emotion, pixels, Usage)"},
    "--ferplus": {"required": True, "help": "FERPlus fer2013new.csv (Usage, Image name, 10 votes)"},
    "--out": {"required": True, "type": Path, "help": "output folder (gets img/ and ferplus_*.txt)"},
    "--overwrite": {"action": "store_true", "help": "replace existing outputs"},
}


def majority_vote(votes) -> int | None:
    """FERPlus majority label of 10 vote counts, or None when the image is dropped.

    Counts of 1 or less are zeroed (outlier removal); the largest remaining
    count wins only if it is more than half of the remaining total, and only
    the 8 emotion columns (not unknown, not NF) give a label.
    """
    kept = [count if count > 1 else 0 for count in votes]
    best = max(kept)
    if not best > sum(kept) / 2:  # also when no count is left
        return None  # "unknown"
    winner = kept.index(best)  # a strict majority is unique
    return winner if winner < len(LAYOUT.classes) else None


def _check_image_name(name: str, path, line_number, seen: dict) -> None:
    if "/" in name or "\\" in name or name in (".", "..") or any(c.isspace() for c in name):
        raise PrepareError(f"{path}:{line_number}: image name {name!r} must be a plain file name "
                           f"without spaces")
    if not is_image_file(name):  # PIL picks the format from the extension
        raise PrepareError(f"{path}:{line_number}: image name {name!r} has no image extension "
                           f"({', '.join(IMAGE_EXTENSIONS)})")
    if name in seen:
        raise PrepareError(f"{path}:{line_number}: image name {name!r} already used on line {seen[name]}")
    seen[name] = line_number


def read_ferplus_labels(ferplus_path: Path, bad_rows: RowErrors) -> list[tuple[int, str, str, int | None] | None]:
    """Validated ``(line, usage, image name, majority label or None)`` for every data row of
    fer2013new.csv (None for a bad row, which is recorded in ``bad_rows``)."""
    rows = []
    seen: dict[str, int] = {}
    for line_number, row in read_csv_rows(ferplus_path, FERPLUS_HEADER, "--ferplus", bad_rows):
        checked = None
        with bad_rows.row():
            usage, name = row[0].strip(), row[1].strip()
            if usage not in FER2013_USAGE_TO_SPLIT:
                raise PrepareError(f"{ferplus_path}:{line_number}: Usage {usage!r} is not one of "
                                   f"{', '.join(FER2013_USAGE_TO_SPLIT)}")
            votes = [parse_int(text, ferplus_path, line_number, f"vote count '{column}'")
                     for column, text in zip(VOTE_COLUMNS, row[2:2 + len(VOTE_COLUMNS)])]
            if any(count < 0 for count in votes):
                raise PrepareError(f"{ferplus_path}:{line_number}: vote counts must be >= 0, got {votes}")
            if name:
                _check_image_name(name, ferplus_path, line_number, seen)
            checked = (line_number, usage, name, majority_vote(votes))
        rows.append(checked)
    return rows


def read_faces(fer2013_path: Path, ferplus_path: Path) -> tuple[list[tuple[str, np.ndarray, str, int | None]], int]:
    """``(image name, 48x48 pixels, usage, majority label or None)`` of every FERPlus row with an image name, and the
    number of rows without one, with both files read and checked in full, so bad rows (all of them,
    up to a bound) are refused before anything is written. fer2013.csv is streamed: only the decoded
    faces are kept (48*48 bytes each)."""
    bad_rows, mismatches = RowErrors(), RowErrors()
    plus_rows = read_ferplus_labels(ferplus_path, bad_rows)  # its bad rows are named before fer2013.csv's
    faces, fer_count = [], 0
    for fer_row in read_fer2013_rows(fer2013_path, bad_rows):
        fer_count += 1
        if fer_row.index >= len(plus_rows) or plus_rows[fer_row.index] is None:
            continue  # only counting: the count mismatch is the error to report
        plus_line, usage, name, label = plus_rows[fer_row.index]
        if fer_row.usage != usage:
            mismatches.add(PrepareError(f"--ferplus {ferplus_path}:{plus_line} has Usage {usage!r} but --fer2013 "
                                        f"{fer_row.where} has {fer_row.usage!r}; the files do not correspond"))
        elif name:  # rows without a name have no FERPlus image
            with bad_rows.row():
                faces.append((name, parse_fer2013_pixels(fer_row.pixels, fer_row.where), usage, label))
    bad_rows.raise_any()
    if fer_count != len(plus_rows):  # every row is good here
        raise PrepareError(f"--fer2013 {fer2013_path} has {fer_count} data rows but --ferplus {ferplus_path} "
                           f"has {len(plus_rows)}; the rows must correspond one to one")
    mismatches.raise_any()
    return faces, sum(not name for _, _, name, _ in plus_rows)  # every row is good and matched here


def convert(fer2013_path: Path, ferplus_path: Path, out_dir: Path) -> tuple[dict[str, list[tuple[str, int]]], dict]:
    """Write the images; return the kept ``(image name, label)`` entries per split and the rows left
    out by the documented rules, ``{reason: count}``."""
    faces, unnamed = read_faces(fer2013_path, ferplus_path)
    image_dir = make_output_dir(out_dir / LAYOUT.image_dir, "--out")
    entries: dict[str, list[tuple[str, int]]] = {split: [] for split in LAYOUT.list_files}
    for name, pixels, usage, label in faces:
        with output_errors(image_dir / name, "--out", "saving the image"):
            Image.fromarray(pixels, "L").save(image_dir / name)
        if label is not None:
            entries[FER2013_USAGE_TO_SPLIT[usage]].append((name, label))
    print(f"wrote images to {image_dir}")
    no_majority = sum(label is None for _, _, _, label in faces)
    return entries, {"without an image name": unnamed, "with no majority among the 8 emotions": no_majority}


def prepare(argv=None) -> dict[str, list[tuple[str, int]]]:
    """Run the script with ``argv``; returns the written entries per split."""
    args = parse_arguments("prepare_ferplus", DESCRIPTION, ARGUMENTS, argv)
    fer2013_path = require_file(args.fer2013, "--fer2013")
    ferplus_path = require_file(args.ferplus, "--ferplus")
    with claim_prepared_outputs(args, [LAYOUT], [fer2013_path, ferplus_path], folders=[LAYOUT.image_dir]):
        entries, left_out = convert(fer2013_path, ferplus_path, args.out)
        write_layout_lists(args.out, LAYOUT, entries, left_out=left_out)
    return entries


def main(argv=None) -> int:
    """The command line; exit status 0, or 2 with a one-line error."""
    return run_main(prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())
